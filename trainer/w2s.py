"""Weak-to-strong arithmetic: the weak teacher, the ceiling, accuracy and PGR.

Pure functions on arrays (no files, no events): the scorer and the trainer call them.

    PGR = (acc_student - acc_weak) / (acc_ceiling - acc_weak)

**Standard errors and the null rule** (:func:`pgr`). With ``k`` seeds per arm:

- each arm's accuracy is the mean over its seeds; its standard error combines the
  seed-to-seed spread and, when ``n_eval`` (the number of evaluated rows) is given, the
  sampling error of a finite evaluation set, which seeds do not average away because
  all seeds share the same rows::

      se(arm)^2 = var(acc, ddof=1) / k  +  mean(acc) * (1 - mean(acc)) / n_eval

  (the first term is 0 with one seed; the second is left out without ``n_eval``);
- the gap ``g = mean(ceiling) - mean(weak)`` has ``se(g) = sqrt(se(ceiling)^2 + se(weak)^2)``
  (arms treated as independent: conservative, as a shared eval set correlates them
  positively);
- **PGR is null** (``value is None``) when ``g <= min_gap_se * se(g)`` (default 2 standard
  errors) or ``g <= 0``: the denominator is indistinguishable from noise;
- otherwise ``PGR = (mean(student) - mean(weak)) / g`` and its standard error is the
  delta-method one for a ratio of independent means::

      se(PGR)^2 = (se(student)^2 + (1 - PGR)^2 * se(weak)^2 + PGR^2 * se(ceiling)^2) / g^2
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from trainer.methods.base import HeadConfig, train_head, validate_predictions

# Gold-label heads (weak teacher on A, ceiling on B): the same head as the methods use,
# so the ceiling is "this student, trained on the truth".
GOLD_HEAD = HeadConfig()
DEFAULT_MIN_GAP_SE = 2.0


def train_weak_teacher(
    weak_feats_A: np.ndarray,
    gold_A: np.ndarray,
    weak_feats_B: np.ndarray,
    seed: int,
    *,
    config: HeadConfig | None = None,
) -> np.ndarray:
    """The weak teacher (a head on weak features, trained on A's gold labels): its P(class 1) on B."""
    head = train_head(weak_feats_A, np.asarray(gold_A, dtype=np.float64), seed=seed, config=config or GOLD_HEAD)
    return head.predict_proba(weak_feats_B)


def weak_floor(
    weak_feats_A: np.ndarray,
    gold_A: np.ndarray,
    weak_feats_eval: np.ndarray,
    seed: int,
    *,
    config: HeadConfig | None = None,
) -> np.ndarray:
    """The same weak teacher (same seed, same head) predicting the eval rows: the weak floor's P(class 1)."""
    return train_weak_teacher(weak_feats_A, gold_A, weak_feats_eval, seed, config=config)


def ceiling(
    strong_feats_B: np.ndarray,
    gold_B: np.ndarray,
    strong_feats_eval: np.ndarray,
    seed: int,
    *,
    config: HeadConfig | None = None,
) -> np.ndarray:
    """The strong ceiling: a head on strong features trained on B's *gold* labels; P(class 1) on eval."""
    head = train_head(strong_feats_B, np.asarray(gold_B, dtype=np.float64), seed=seed, config=config or GOLD_HEAD)
    return head.predict_proba(strong_feats_eval)


def correct(probs: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """Per row, 1.0 where ``P(class 1) >= 0.5`` matches the gold label, else 0.0 (what
    :func:`accuracy` averages, and what paired comparisons resample). ``probs``: (n,) or (n, 2)."""
    gold = np.asarray(gold).reshape(-1)
    p = validate_predictions(probs, gold.shape[0])
    return ((p >= 0.5).astype(np.int64) == gold.astype(np.int64)).astype(np.float64)


def accuracy(probs: np.ndarray, gold: np.ndarray) -> float:
    """Fraction of rows where ``P(class 1) >= 0.5`` matches the gold label. ``probs``: (n,) or (n, 2)."""
    return float(correct(probs, gold).mean())


def shuffle_labels(weak_soft_labels: np.ndarray, seed: int) -> np.ndarray:
    """A seeded permutation of the weak labels (the teacher-ablation control: same label
    distribution, no relation to the texts)."""
    labels = np.asarray(weak_soft_labels)
    return labels[np.random.default_rng([int(seed), 0xAB1A7E]).permutation(labels.shape[0])]


@dataclass(frozen=True, slots=True)
class PGR:
    value: float | None  # None: the ceiling-weak gap is too small to divide by
    se: float | None
    student: float  # mean accuracies
    weak: float
    ceiling: float
    gap: float
    gap_se: float
    n_seeds: int  # student seeds
    reason: str | None = None  # why value is None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _arm(values: float | Sequence[float] | np.ndarray, n_eval: int | None) -> tuple[float, float, int]:
    x = np.atleast_1d(np.asarray(values, dtype=np.float64))
    if x.size == 0 or not np.isfinite(x).all():
        raise ValueError(f"accuracies must be a non-empty list of finite numbers, got {values!r}")
    mean = float(x.mean())
    var = float(x.var(ddof=1)) / x.size if x.size > 1 else 0.0
    if n_eval:
        var += mean * (1.0 - mean) / n_eval
    return mean, math.sqrt(var), int(x.size)


def mean_se(values: float | Sequence[float]) -> tuple[float, float]:
    """Mean over seeds and its standard error (the seed spread only)."""
    mean, se, _ = _arm(values, None)
    return mean, se


def pgr(
    student_acc: float | Sequence[float],
    weak_acc: float | Sequence[float],
    ceiling_acc: float | Sequence[float],
    *,
    n_eval: int | None = None,
    min_gap_se: float = DEFAULT_MIN_GAP_SE,
) -> PGR:
    """Performance gap recovered, with its standard error (see the module docstring for the rule)."""
    s, s_se, k = _arm(student_acc, n_eval)
    w, w_se, _ = _arm(weak_acc, n_eval)
    c, c_se, _ = _arm(ceiling_acc, n_eval)
    gap = c - w
    gap_se = math.hypot(c_se, w_se)

    def result(value: float | None, se: float | None, reason: str | None = None) -> PGR:
        return PGR(value, se, student=s, weak=w, ceiling=c, gap=gap, gap_se=gap_se, n_seeds=k, reason=reason)

    if gap <= 0:
        return result(None, None, reason=f"ceiling ({c:.4f}) is not above the weak floor ({w:.4f})")
    if gap <= min_gap_se * gap_se:
        return result(None, None, reason=f"gap {gap:.4f} is within {min_gap_se:g} standard errors ({gap_se:.4f})")
    value = (s - w) / gap
    se = math.sqrt(s_se**2 + (1 - value) ** 2 * w_se**2 + value**2 * c_se**2) / gap
    return result(value, se)
