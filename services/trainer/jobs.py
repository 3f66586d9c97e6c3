"""One experiment, run synchronously: inputs -> per-seed predictions on the eval split.

What a job sees: B's texts and strong features, the weak teacher's soft labels on B
(an artifact made by the scorer), and the eval split's texts and strong features.
Gold labels never reach a method: the dataset is loaded for its texts only, and
untrusted code runs in the sandbox with nothing but those inputs.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from core.paths import AarHome
from schemas.experiment import ExperimentRequested, dataset_split
from trainer.data import DEFAULT_SPLIT_SEED, SplitSizes, get_dataset
from trainer.features import split_features
from trainer.methods import MethodContext, run_method
from trainer.methods.seeds import run_seeds
from trainer.sandbox import SandboxLimits, SandboxUnavailableError, run_untrusted


class JobFailed(Exception):
    """The method (not the platform) failed: reported as ``experiment.failed``, not retried.

    ``error_class``: ``SandboxViolation`` (a blocking violation: a denied syscall, or a
    network/filesystem/secret attempt), ``ResourceLimit`` (memory, processes, CPU or disk of
    the whole sandbox), ``Timeout`` (the wall clock), ``MethodError`` (an exception, bad
    predictions), ... ``violations``: one dict per violation, ``{"kind", "detail", "source",
    "blocking"}``; ``source`` is ``kernel``/``monitor`` (seen from outside the sandbox) or
    ``inside``/``stderr`` (advisory); ``blocking`` is True only for what disqualifies.
    """

    def __init__(
        self, error_class: str, message: str, *, log: str = "", violations: list[dict[str, Any]] | None = None
    ):
        super().__init__(message)
        self.error_class = error_class
        self.message = message
        self.log = log
        self.violations = violations or []


@dataclass(slots=True)
class JobOutcome:
    predictions: dict[int, np.ndarray]
    runtime_s: float
    peak_rss_mb: float
    sandboxed: bool
    log: str = ""
    observations: list[dict[str, Any]] = field(default_factory=list)


@dataclass(slots=True)
class Inputs:
    train_features: np.ndarray
    eval_features: np.ndarray
    train_texts: list[str]
    eval_texts: list[str]


def load_inputs(req: ExperimentRequested, home: AarHome | None = None) -> Inputs:
    sizes = SplitSizes(**req.split_sizes) if req.split_sizes else None
    ds = get_dataset(req.dataset, sizes, DEFAULT_SPLIT_SEED if req.split_seed is None else req.split_seed)
    train, evaluate = ds.B, ds.split(dataset_split(req.split))
    return Inputs(
        train_features=split_features(req.strong_model, train, home=home, progress=False),
        eval_features=split_features(req.strong_model, evaluate, home=home, progress=False),
        train_texts=list(train.texts),
        eval_texts=list(evaluate.texts),
    )


def _own_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_job(
    req: ExperimentRequested,
    inputs: Inputs,
    weak_labels: dict[int, np.ndarray],
    *,
    method_source: str | None = None,
    unsafe_no_sandbox: bool = False,
    limits: SandboxLimits | None = None,
    on_seed: Callable[[int, int], None] | None = None,
    stored: dict[str, str] | None = None,
    teacher: Callable[[int, list[str]], Any] | None = None,
) -> JobOutcome:
    """Run the method for every seed of ``req``. Raises :class:`JobFailed` for method failures
    (exceptions, bad predictions, sandbox violations, limits)."""
    missing = [s for s in req.seeds if s not in weak_labels]
    if missing:
        raise JobFailed("MissingInputs", f"the weak-labels artifact has no labels for seeds {missing}")
    started = time.monotonic()
    predictions: dict[int, np.ndarray] = {}
    peak_mb = 0.0
    logs: list[str] = []
    observations: list[dict[str, Any]] = []
    sandboxed = method_source is not None and not unsafe_no_sandbox
    ctxs = [
        MethodContext(
            train_features=inputs.train_features,
            weak_soft_labels=weak_labels[seed],
            eval_features=inputs.eval_features,
            train_texts=inputs.train_texts,
            eval_texts=inputs.eval_texts,
            seed=seed,
            params=dict(req.params),
            teacher_fn=teacher,
        )
        for seed in req.seeds
    ]
    if method_source is None:
        assert req.builtin_method is not None
        name = req.builtin_method

        def one(ctx: MethodContext) -> np.ndarray:
            try:
                return run_method(name, ctx)
            except Exception as exc:
                raise JobFailed(type(exc).__name__, f"seed {ctx.seed}: {exc}") from exc

        # Every seed at once: their heads train as one batched model (trainer.methods.seeds).
        predictions = dict(zip(req.seeds, run_seeds(one, ctxs), strict=True))
        peak_mb = max(peak_mb, _own_peak_mb())
        if on_seed is not None:
            on_seed(len(ctxs), len(ctxs))
    else:
        # One sandbox for every seed: one interpreter start and one import of torch and
        # the method per job, not per seed. The limits are given per seed: the job gets
        # as many seeds' worth of wall clock and CPU time.
        per_seed = limits or SandboxLimits()
        job_limits = replace(per_seed, wall_s=per_seed.wall_s * len(ctxs), cpu_s=per_seed.cpu_s * len(ctxs))
        try:
            result = run_untrusted(method_source, ctxs, limits=job_limits, unsafe_no_sandbox=unsafe_no_sandbox,
                                   stored=stored, teacher=teacher)
        except SandboxUnavailableError as exc:
            raise JobFailed("SandboxUnavailable", str(exc)) from exc
        seeds_text = f"seeds {', '.join(str(s) for s in req.seeds)}"
        logs.append(f"--- {seeds_text} ---\n{result.stdout}\n{result.stderr}".strip())
        observations += [v.as_dict() for v in result.observations]
        peak_mb = max(peak_mb, result.peak_rss_bytes / 2**20)
        found = [v.as_dict() for v in result.violations]
        if blocking := result.blocking_violations:
            raise JobFailed(
                "SandboxViolation",
                f"{seeds_text}: the method tried something the sandbox forbids: "
                + "; ".join(f"{v.kind.value} ({v.source}): {v.detail}" for v in blocking[:5]),
                log="\n".join(logs),
                violations=found,
            )
        if result.limit_violations:
            kind = "Timeout" if result.timed_out else "ResourceLimit"
            raise JobFailed(
                kind,
                f"{seeds_text}: the sandbox's limits stopped the method ({result.limits_mode} limits): "
                + "; ".join(f"{v.kind.value}: {v.detail}" for v in result.limit_violations[:5]),
                log="\n".join(logs),
                violations=found,
            )
        if not result.ok or len(result.seed_predictions) != len(ctxs):
            raise JobFailed("MethodError", f"{seeds_text}: {result.error}", log="\n".join(logs))
        predictions = {ctx.seed: p for ctx, p in zip(ctxs, result.seed_predictions, strict=True)}
        if on_seed is not None:
            on_seed(len(ctxs), len(ctxs))
    return JobOutcome(
        predictions=predictions,
        runtime_s=time.monotonic() - started,
        peak_rss_mb=peak_mb,
        sandboxed=sandboxed,
        log="\n".join(logs),
        observations=observations,
    )


def describe(req: ExperimentRequested) -> dict[str, Any]:
    return {
        "experiment_id": req.experiment_id,
        "dataset": req.dataset,
        "split": req.split.value,
        "method": req.builtin_method or (req.method_artifact or "")[:12],
        "seeds": len(req.seeds),
    }
