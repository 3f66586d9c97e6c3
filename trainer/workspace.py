"""An agent's workspace, trusted side: its inputs, its job folder, its sandbox.

:func:`workspace_inputs` cuts B into a train part and a held-back part (both with weak
labels only) and adds dev without labels; :class:`WorkspaceSandbox` writes them into a
job folder and starts the sandbox, whose runner loads them and waits for the code on
its stdin (:mod:`trainer.sandbox_runner`); ``run(code)`` hands the code over and
returns the :class:`~trainer.sandbox.SandboxResult` (``value_json``: the result value).
A sandbox can be started ahead of a request (warm): the run then pays neither the
interpreter's start nor the imports. Each sandbox runs one piece of code and ends.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainer.sandbox import (
    Launched,
    SandboxLimits,
    SandboxResult,
    SandboxUnavailableError,
    _use_cgroups,
    sandbox_problem,
)

RESULT_CAP = 1 << 20  # bytes of result JSON read from the sandbox (what an event carries is less)
DEFAULT_LIMITS = SandboxLimits(wall_s=60.0, cpu_s=600, memory_bytes=4 << 30, threads=1, disk_bytes=512 << 20,
                               tmp_bytes=256 << 20)


@dataclass(frozen=True, slots=True)
class WorkspaceInputs:
    train_features: np.ndarray
    weak_soft_labels: np.ndarray
    train_texts: list[str]
    heldback_features: np.ndarray
    heldback_weak_labels: np.ndarray
    heldback_texts: list[str]
    dev_features: np.ndarray
    dev_texts: list[str]
    seed: int = 0

    @property
    def rows(self) -> dict[str, int]:
        return {"train": len(self.train_texts), "heldback": len(self.heldback_texts), "dev": len(self.dev_texts)}


def workspace_inputs(b_features: np.ndarray, b_texts: list[str], weak_labels: np.ndarray, dev_features: np.ndarray,
                     dev_texts: list[str], *, heldback: float = 0.25, seed: int = 0) -> WorkspaceInputs:
    """B split (seeded) into a train part and a held-back part of ``heldback`` of its rows."""
    n = len(b_texts)
    if not (len(b_features) == len(weak_labels) == n):
        raise ValueError(f"B has {n} texts, {len(b_features)} feature rows and {len(weak_labels)} weak labels")
    order = np.random.default_rng([int(seed), 0x5E7A51DE]).permutation(n)
    cut = n - max(1, int(round(n * heldback)))
    train, held = np.sort(order[:cut]), np.sort(order[cut:])
    return WorkspaceInputs(
        train_features=np.asarray(b_features[train], dtype=np.float32),
        weak_soft_labels=np.asarray(weak_labels[train], dtype=np.float64),
        train_texts=[b_texts[i] for i in train],
        heldback_features=np.asarray(b_features[held], dtype=np.float32),
        heldback_weak_labels=np.asarray(weak_labels[held], dtype=np.float64),
        heldback_texts=[b_texts[i] for i in held],
        dev_features=np.asarray(dev_features, dtype=np.float32),
        dev_texts=list(dev_texts),
        seed=seed,
    )


def write_workspace_job(job: Path, inputs: WorkspaceInputs, stored: dict[str, str] | None = None) -> None:
    inp = job / "input"
    inp.mkdir(parents=True, exist_ok=True)
    for name in ("train_features", "weak_soft_labels", "heldback_features", "heldback_weak_labels", "dev_features"):
        np.save(inp / f"{name}.npy", getattr(inputs, name), allow_pickle=False)
    for name in ("train_texts", "heldback_texts", "dev_texts"):
        (inp / f"{name}.json").write_text(json.dumps(getattr(inputs, name)), encoding="utf-8")
    (inp / "stored").mkdir(exist_ok=True)
    for sha, code in (stored or {}).items():
        (inp / "stored" / f"{sha}.py").write_text(code, encoding="utf-8")
    (inp / "ctx.json").write_text(json.dumps({"workspace": True, "seed": int(inputs.seed), **inputs.rows}),
                                  encoding="utf-8")


class WorkspaceSandbox:
    """One workspace sandbox: started (perhaps ahead of its request), run once, gone."""

    def __init__(self, inputs: WorkspaceInputs, *, limits: SandboxLimits | None = None,
                 unsafe_no_sandbox: bool = False, teacher: Callable[[int, list[str]], Any] | None = None,
                 stored: dict[str, str] | None = None) -> None:
        self.limits = limits or DEFAULT_LIMITS
        sandboxed = not unsafe_no_sandbox
        if sandboxed and (problem := sandbox_problem()) is not None:
            raise SandboxUnavailableError(f"refusing to run untrusted code without a sandbox: {problem}")
        self.inputs = inputs
        self.teacher = teacher
        self.job = Path(tempfile.mkdtemp(prefix="aar-workspace-"))
        self.job.chmod(0o755)
        try:
            write_workspace_job(self.job, inputs, stored)
            self.launched = Launched.start(self.job, self.limits, sandboxed, _use_cgroups(self.limits),
                                           teacher=teacher, stdin=True, result_cap=RESULT_CAP)
        except BaseException:
            shutil.rmtree(self.job, ignore_errors=True)
            raise

    def alive(self) -> bool:
        return self.launched.alive()

    def run(self, code: str, *, wall_s: float | None = None, cpu_s: float | None = None,
            stored: dict[str, str] | None = None) -> SandboxResult:
        """Run ``code``; ``wall_s`` / ``cpu_s`` lower this sandbox's limits for the run;
        ``stored``: the stored methods it imports (written before the code is handed over)."""
        for sha, text in (stored or {}).items():
            (self.job / "input" / "stored" / f"{sha}.py").write_text(text, encoding="utf-8")
        limits = self.launched.limits
        if wall_s is not None:
            limits = _replace(limits, wall_s=min(limits.wall_s, wall_s))
        if cpu_s is not None:
            limits = _replace(limits, cpu_s=min(limits.cpu_s, max(0.5, float(cpu_s))))
        self.launched.limits = limits
        try:
            return self.launched.finish(code.encode("utf-8"))
        finally:
            shutil.rmtree(self.job, ignore_errors=True)

    def close(self) -> None:
        self.launched.abandon()
        shutil.rmtree(self.job, ignore_errors=True)


def _replace(limits: SandboxLimits, **changes: Any) -> SandboxLimits:
    from dataclasses import replace

    return replace(limits, **changes)
