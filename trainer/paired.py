"""Paired comparisons of two methods scored on the same rows and seeds.

Every method of a session is evaluated on the same dev rows, with the same seeds, and
its PGR shares the same weak and ceiling baselines, so two methods' scores are far
more alike than two independent draws: most of the row-to-row and seed-to-seed luck
is common to both. Comparing them *paired* cancels it, and the difference has a much
smaller standard error than either score (PGR ± 0.16 each, a difference of ±0.04).

The inputs are 0/1 correctness matrices, ``[seeds, rows]``, one per arm (the method
``a``, the method ``b`` it is compared with, and for PGR the weak teacher and the
ceiling), on the same rows in the same order. Each bootstrap replicate draws

- the rows with replacement (one draw, applied to every arm: the pairing), and
- the seeds with replacement, the same seed indices for every arm of as many seeds
  (method seed ``s`` and baseline seed ``s`` are the same random seed of the session);

then computes, on that replicate,

    d_acc = mean(acc_a) - mean(acc_b)
    d_pgr = d_acc / (mean(acc_ceiling) - mean(acc_weak))     (PGR_a - PGR_b)

The standard error is the replicates' standard deviation; the 95% interval their 2.5th
and 97.5th percentiles. Two methods are **tied** when that interval of the difference
(in PGR when it exists, else in accuracy) holds 0. Replicates are drawn from
``numpy.random.default_rng(seed)``: the same inputs and seed give the same figures, so
a score is reproducible from the log. Pure functions on arrays, like :mod:`trainer.w2s`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_BOOTSTRAP = 2000
DEFAULT_SEED = 0
LEVEL = 0.95
MAX_CELLS = 4_000_000  # seeds x rows x replicates held at once (the rest in chunks)


@dataclass(frozen=True, slots=True)
class PairedDifference:
    """``a`` minus ``b``: the point estimate, its bootstrap SE and 95% interval."""

    accuracy: float
    accuracy_se: float
    accuracy_ci: tuple[float, float]
    pgr: float | None  # None without baselines, or when the gap is not positive
    pgr_se: float | None
    pgr_ci: tuple[float, float] | None
    tied: bool  # the interval holds 0: no evidence that a and b differ
    n_rows: int
    n_seeds: int
    n_bootstrap: int
    seed: int


def _matrix(name: str, values: np.ndarray) -> np.ndarray:
    m = np.asarray(values, dtype=np.float64)
    if m.ndim == 1:
        m = m[None, :]
    if m.ndim != 2 or m.shape[0] < 1 or m.shape[1] < 1:
        raise ValueError(f"{name} must be a [seeds, rows] matrix of 0/1 correctness, got shape {m.shape}")
    if not np.isin(m, (0.0, 1.0)).all():
        raise ValueError(f"{name} must hold 0/1 correctness values")
    return m


def _replicate_means(arms: list[np.ndarray], rows: np.ndarray, seeds: np.ndarray) -> list[np.ndarray]:
    """Each arm's mean accuracy on every replicate: ``rows[B, n]`` row draws, ``seeds[B, k]``
    seed draws (taken modulo an arm's own number of seeds)."""
    out = []
    for arm in arms:
        k = arm.shape[0]
        # [k, B, n] -> per seed and replicate: accuracy on the replicate's rows
        per_seed = arm[:, rows].mean(axis=2)  # [k, B]
        pick = seeds % k  # an arm with fewer seeds reuses them in order
        out.append(np.take_along_axis(per_seed.T, pick, axis=1).mean(axis=1))  # [B]
    return out


def paired_difference(
    correct_a: np.ndarray,
    correct_b: np.ndarray,
    weak_correct: np.ndarray | None = None,
    ceiling_correct: np.ndarray | None = None,
    *,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = DEFAULT_SEED,
) -> PairedDifference:
    """The paired difference ``a - b`` in accuracy and, given the weak and ceiling arms,
    in PGR, with its bootstrap standard error and 95% interval (see the module's
    docstring). All arms are ``[seeds, rows]`` 0/1 matrices on the same rows."""
    a, b = _matrix("correct_a", correct_a), _matrix("correct_b", correct_b)
    arms = [a, b]
    with_pgr = False
    if weak_correct is not None and ceiling_correct is not None:
        arms += [_matrix("weak_correct", weak_correct), _matrix("ceiling_correct", ceiling_correct)]
        with_pgr = True
    n = a.shape[1]
    if any(arm.shape[1] != n for arm in arms):
        raise ValueError(f"every arm must be scored on the same {n} rows, got {[arm.shape[1] for arm in arms]}")
    if n_bootstrap < 2:
        raise ValueError("n_bootstrap must be at least 2")
    k = max(arm.shape[0] for arm in arms)
    rng = np.random.default_rng(seed)
    means = [arm.mean() for arm in arms]
    d_acc = float(means[0] - means[1])
    gap = float(means[3] - means[2]) if with_pgr else 0.0
    acc_reps: list[np.ndarray] = []
    pgr_reps: list[np.ndarray] = []
    chunk = max(1, MAX_CELLS // max(1, k * n))
    done = 0
    while done < n_bootstrap:
        size = min(chunk, n_bootstrap - done)
        rows = rng.integers(0, n, size=(size, n))
        seeds = rng.integers(0, k, size=(size, k))
        reps = _replicate_means(arms, rows, seeds)
        acc_reps.append(reps[0] - reps[1])
        if with_pgr:
            g = reps[3] - reps[2]
            with np.errstate(divide="ignore", invalid="ignore"):
                pgr_reps.append(np.where(g > 0, (reps[0] - reps[1]) / g, np.nan))
        done += size
    acc = np.concatenate(acc_reps)
    tail = (1 - LEVEL) / 2 * 100
    acc_ci = (float(np.percentile(acc, tail)), float(np.percentile(acc, 100 - tail)))
    pgr = pgr_se = None
    pgr_ci: tuple[float, float] | None = None
    if with_pgr and gap > 0:
        reps_pgr = np.concatenate(pgr_reps)
        reps_pgr = reps_pgr[np.isfinite(reps_pgr)]
        if reps_pgr.size >= 2:
            pgr = d_acc / gap
            pgr_se = float(reps_pgr.std(ddof=1))
            pgr_ci = (float(np.percentile(reps_pgr, tail)), float(np.percentile(reps_pgr, 100 - tail)))
    interval = pgr_ci if pgr_ci is not None else acc_ci
    tied = bool(interval[0] <= 0.0 <= interval[1])
    return PairedDifference(
        accuracy=d_acc, accuracy_se=float(acc.std(ddof=1)), accuracy_ci=acc_ci,
        pgr=pgr, pgr_se=pgr_se, pgr_ci=pgr_ci, tied=tied,
        n_rows=n, n_seeds=k, n_bootstrap=n_bootstrap, seed=seed,
    )


def paired_se_closed_form(correct_a: np.ndarray, correct_b: np.ndarray) -> float:
    """The standard error of ``mean(a) - mean(b)`` over rows for one seed, paired:
    ``sd(a_i - b_i) / sqrt(n)`` (what the bootstrap over rows estimates; a check)."""
    a = _matrix("correct_a", correct_a).mean(axis=0)
    b = _matrix("correct_b", correct_b).mean(axis=0)
    d = a - b
    return float(d.std(ddof=1) / math.sqrt(d.size)) if d.size > 1 else 0.0


@dataclass(frozen=True, slots=True)
class PairedPGR:
    """One method's PGR with the standard error of a bootstrap that resamples the rows
    and seeds of all three arms (student, weak, ceiling) together."""

    value: float | None  # None: the gap is not positive
    se: float | None
    ci: tuple[float, float] | None
    n_rows: int
    n_seeds: int
    n_bootstrap: int
    seed: int


def paired_pgr(
    student_correct: np.ndarray,
    weak_correct: np.ndarray,
    ceiling_correct: np.ndarray,
    *,
    n_bootstrap: int = DEFAULT_BOOTSTRAP,
    seed: int = DEFAULT_SEED,
) -> PairedPGR:
    """PGR = (acc_student - acc_weak) / (acc_ceiling - acc_weak) and its SE, the three
    arms resampled *jointly* (same row draw and seed draw for every arm, as in
    :func:`paired_difference`).

    The three arms are scored on the same rows, so their accuracies are positively
    correlated (a hard row is missed by all of them); :func:`trainer.w2s.pgr`'s closed
    form treats them as independent and overstates the SE. This is the SE of the same
    number that keeps the correlation. Replicates where the gap is not positive are dropped.
    """
    arms = [_matrix("student_correct", student_correct), _matrix("weak_correct", weak_correct),
            _matrix("ceiling_correct", ceiling_correct)]
    n = arms[0].shape[1]
    if any(arm.shape[1] != n for arm in arms):
        raise ValueError(f"every arm must be scored on the same {n} rows, got {[arm.shape[1] for arm in arms]}")
    if n_bootstrap < 2:
        raise ValueError("n_bootstrap must be at least 2")
    k = max(arm.shape[0] for arm in arms)
    s, w, c = (float(arm.mean()) for arm in arms)
    if c - w <= 0:
        return PairedPGR(None, None, None, n, k, n_bootstrap, seed)
    rng = np.random.default_rng(seed)
    chunk = max(1, MAX_CELLS // max(1, k * n))
    reps: list[np.ndarray] = []
    done = 0
    while done < n_bootstrap:
        size = min(chunk, n_bootstrap - done)
        rs, rw, rc = _replicate_means(arms, rng.integers(0, n, size=(size, n)), rng.integers(0, k, size=(size, k)))
        g = rc - rw
        with np.errstate(divide="ignore", invalid="ignore"):
            reps.append(np.where(g > 0, (rs - rw) / g, np.nan))
        done += size
    r = np.concatenate(reps)
    r = r[np.isfinite(r)]
    if r.size < 2:
        return PairedPGR((s - w) / (c - w), None, None, n, k, n_bootstrap, seed)
    tail = (1 - LEVEL) / 2 * 100
    return PairedPGR((s - w) / (c - w), float(r.std(ddof=1)),
                     (float(np.percentile(r, tail)), float(np.percentile(r, 100 - tail))), n, k, n_bootstrap, seed)
