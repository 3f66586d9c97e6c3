"""The built-in, trusted method library and its registry.

A method is ``run(ctx: MethodContext) -> predictions`` (P(class 1) per eval row, shape
``(n,)`` or ``(n, 2)``). Untrusted (agent) methods have the same interface and may call
these: ``from trainer.methods import METHODS; METHODS["aux_conf"](ctx)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer.errors import UnknownNameError
from trainer.methods import builtin, losses
from trainer.methods.base import Head, HeadConfig, MethodContext, train_head, validate_predictions

MethodFn = Callable[[MethodContext], Any]
HEAD_PARAMS = frozenset(HeadConfig.__dataclass_fields__)


@dataclass(frozen=True, slots=True)
class Method:
    name: str
    fn: MethodFn
    defaults: dict[str, Any] = field(default_factory=dict)  # method-specific parameters
    summary: str = ""

    @property
    def params(self) -> frozenset[str]:
        """Every parameter the method reads: its own and the head's."""
        return HEAD_PARAMS | frozenset(self.defaults)

    def __call__(self, ctx: MethodContext) -> np.ndarray:
        return validate_predictions(self.fn(ctx), ctx.n_eval)


def _method(name: str, fn: MethodFn, defaults: dict[str, Any]) -> Method:
    summary = (fn.__doc__ or "").strip().splitlines()[0]
    return Method(name, fn, dict(defaults), summary)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        _method("naive_soft", builtin.naive_soft, builtin.NAIVE_SOFT),
        _method("naive_hard", builtin.naive_hard, builtin.NAIVE_HARD),
        _method("aux_conf", builtin.aux_conf, builtin.AUX_CONF),
        _method("aux_conf_fixed", builtin.aux_conf_fixed, {**builtin.AUX_CONF, "warmup": "fixed"}),
        _method("product", builtin.product, builtin.PRODUCT),
        _method("conf_filter", builtin.conf_filter, builtin.CONF_FILTER),
        _method("early_stop", builtin.early_stop, builtin.EARLY_STOP),
        _method("s2s_relabel", builtin.s2s_relabel, builtin.S2S_RELABEL),
    )
}


def get_method(name: str) -> Method:
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownNameError("method", name, list(METHODS)) from None


def run_method(name: str, ctx: MethodContext, *, strict: bool = True) -> np.ndarray:
    """Run a built-in method; P(class 1) per eval row, validated.

    ``strict``: reject ``ctx.params`` keys the method does not read (catches typos).
    """
    method = get_method(name)
    if strict:
        unknown = set(ctx.params) - method.params
        if unknown:
            raise ValueError(f"method {name!r} has no parameter(s) {sorted(unknown)}; it reads {sorted(method.params)}")
    return method(ctx)


__all__ = [
    "METHODS",
    "Head",
    "HeadConfig",
    "Method",
    "MethodContext",
    "get_method",
    "losses",
    "run_method",
    "train_head",
    "validate_predictions",
]
