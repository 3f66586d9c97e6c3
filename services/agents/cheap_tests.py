"""Cheap tests of a candidate method in the agent's workspace, before it spends a dev
evaluation (the study's "cheap experiments before intensive testing").

The workspace has no gold label, so the tests are label-free: the candidate is trained
on B's train part as a trainer would, and on B's held-back part it must

- agree with the held-back weak labels reasonably (it learned the teacher's concept;
  copying the teacher scores 1.0, which is not a failure: the dev score decides);
- be stable across two seeds (the same rows on the same side of 0.5);
- be calibrated: its mean prediction near the weak labels' mean (no collapse to one class);
- return finite probabilities.

:func:`script` is the workspace code; :func:`verdict` reads its result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

DROPPED = "dropped before scoring"  # how the note about a candidate that failed its cheap tests starts
MIN_AGREEMENT = 0.6
MIN_STABILITY = 0.85
MAX_MEAN_GAP = 0.2


def script(sha: str) -> str:
    """Workspace code testing the stored method ``sha`` (a result dict)."""
    return f'''import dataclasses
import numpy as np
from trainer.methods.stored import load

method = load("{sha}")
first = ctx.method_context()
p0 = np.asarray(method.run(first), dtype=np.float64).reshape(-1)
p1 = np.asarray(method.run(dataclasses.replace(first, seed=first.seed + 1)), dtype=np.float64).reshape(-1)
finite = bool(np.isfinite(p0).all() and np.isfinite(p1).all())
result = {{
    "rows": int(p0.shape[0]),
    "finite": finite,
    "agreement": ctx.agreement(np.nan_to_num(p0, nan=0.5)) if finite else 0.0,
    "stability": float(((p0 > 0.5) == (p1 > 0.5)).mean()),
    "mean_p": float(np.nanmean(p0)),
    "mean_weak": float(np.mean(ctx.heldback_weak_labels)),
}}
'''


@dataclass(frozen=True, slots=True)
class Verdict:
    ok: bool
    reason: str
    figures: dict[str, Any]


def verdict(outcome: dict[str, Any]) -> Verdict:
    """Whether the candidate passed, from the workspace run's outcome (the ``run_code`` tool's answer)."""
    result = outcome.get("result")
    if outcome.get("status") != "ok" or not isinstance(result, dict):
        why = outcome.get("error") or outcome.get("reason") or outcome.get("status") or "no result"
        tail = str(outcome.get("stderr") or "").strip().splitlines()[-1:] or [""]
        return Verdict(False, f"the workspace run did not finish: {why} {tail[0]}".strip()[:300], {})
    figures = {k: result.get(k) for k in ("agreement", "stability", "mean_p", "mean_weak", "rows")}
    if not result.get("finite"):
        return Verdict(False, "it predicts NaN or infinity", figures)
    agreement, stability = float(result.get("agreement", 0.0)), float(result.get("stability", 0.0))
    gap = abs(float(result.get("mean_p", 0.5)) - float(result.get("mean_weak", 0.5)))
    if agreement < MIN_AGREEMENT:
        return Verdict(False, f"it agrees with the held-back weak labels on {agreement:.2f} of rows "
                              f"(at least {MIN_AGREEMENT} needed)", figures)
    if stability < MIN_STABILITY:
        return Verdict(False, f"two seeds agree on {stability:.2f} of rows (at least {MIN_STABILITY} needed)", figures)
    if gap > MAX_MEAN_GAP:
        return Verdict(False, f"its mean prediction is {gap:.2f} away from the weak labels' (at most "
                              f"{MAX_MEAN_GAP}): it collapses towards one class", figures)
    return Verdict(True, f"agreement {agreement:.2f}, stability {stability:.2f}, mean gap {gap:.2f}", figures)
