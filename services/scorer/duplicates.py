"""When two ideas are the same method: the key the scorer answers duplicates by.

Two ideas are the same when they run the same code with the same parameters: a
built-in method by name with its parameters, the built-in's and the head's defaults
filled in (``{}`` and ``{"lr": 0.01}`` are one idea when 0.01 is the default), or a
stored code artifact by its SHA-256 with its parameters as given (what code reads of
them is its own business). Numbers compare by value (``5`` and ``5.0`` are one).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any


def _norm(value: Any) -> Any:
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dict):
        return {str(k): _norm(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_norm(v) for v in value]
    return str(value)


def method_key(builtin_method: str | None, method_artifact: str | None, params: dict[str, Any]) -> str:
    """SHA-256 of the method and its full parameters."""
    full = dict(params)
    if builtin_method is not None:
        from dataclasses import asdict

        from trainer.methods import METHODS
        from trainer.methods.base import HeadConfig

        method = METHODS.get(builtin_method)
        full = {**asdict(HeadConfig()), **(method.defaults if method is not None else {}), **params}
    body = json.dumps({"builtin": builtin_method, "code": method_artifact, "params": _norm(full)}, sort_keys=True)
    return hashlib.sha256(body.encode()).hexdigest()
