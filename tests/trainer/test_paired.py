"""The paired bootstrap (trainer/paired.py) against a closed form and a brute-force
resampling, and its ties."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.paired import paired_difference, paired_se_closed_form


def _arms(n: int, k: int, p_b: float, flip: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``b`` correct w.p. ``p_b``; ``a`` is ``b`` with a share ``flip`` of rows turned
    correct (per seed): strongly correlated, as two methods on the same rows are."""
    rng = np.random.default_rng(seed)
    easy = rng.random(n) < p_b  # rows every method gets right
    b = np.tile(easy, (k, 1)) ^ (rng.random((k, n)) < 0.05)
    a = b | (rng.random((k, n)) < flip)
    return a.astype(float), b.astype(float)


def test_one_seed_se_agrees_with_the_closed_form() -> None:
    a, b = _arms(2000, 1, 0.75, 0.06, seed=1)
    diff = paired_difference(a, b, n_bootstrap=3000, seed=7)
    closed = paired_se_closed_form(a, b)
    assert diff.accuracy_se == pytest.approx(closed, rel=0.10)
    assert diff.accuracy == pytest.approx(float(a.mean() - b.mean()))


def _brute_force_se(a: np.ndarray, b: np.ndarray, w: np.ndarray, c: np.ndarray, reps: int, seed: int) -> float:
    """The same resampling, one replicate at a time, in plain loops."""
    rng = np.random.default_rng(seed)
    k, n = int(a.shape[0]), int(a.shape[1])
    out = []
    for _ in range(reps):
        rows = rng.integers(0, n, size=n)
        seeds = rng.integers(0, k, size=k)
        acc = {name: np.mean([m[s, rows].mean() for s in seeds]) for name, m in (("a", a), ("b", b),
                                                                               ("w", w), ("c", c))}
        out.append((acc["a"] - acc["b"]) / (acc["c"] - acc["w"]))
    return float(np.std(out, ddof=1))


def test_pgr_se_over_rows_and_seeds_agrees_with_brute_force() -> None:
    a, b = _arms(400, 5, 0.72, 0.08, seed=2)
    rng = np.random.default_rng(3)
    w = (rng.random((5, 400)) < 0.70).astype(float)
    c = (rng.random((5, 400)) < 0.85).astype(float)
    diff = paired_difference(a, b, w, c, n_bootstrap=2000, seed=11)
    brute = _brute_force_se(a, b, w, c, reps=1500, seed=12)
    assert diff.pgr is not None and diff.pgr_se is not None
    assert diff.pgr_se == pytest.approx(brute, rel=0.10)
    assert diff.pgr == pytest.approx((a.mean() - b.mean()) / (c.mean() - w.mean()))
    lo, hi = diff.pgr_ci  # type: ignore[misc]  # set whenever pgr is
    assert lo < diff.pgr < hi


def test_identical_methods_differ_by_zero_and_are_tied() -> None:
    a, _ = _arms(1000, 5, 0.7, 0.0, seed=4)
    rng = np.random.default_rng(5)
    w = (rng.random((5, 1000)) < 0.6).astype(float)
    c = (rng.random((5, 1000)) < 0.9).astype(float)
    diff = paired_difference(a, a.copy(), w, c)
    assert diff.accuracy == 0.0 and diff.accuracy_se == 0.0 and diff.pgr == 0.0
    assert diff.tied


def test_better_on_every_row_is_not_tied() -> None:
    rng = np.random.default_rng(6)
    b = (rng.random((5, 1000)) < 0.7).astype(float)
    a = np.maximum(b, (rng.random((5, 1000)) < 0.1).astype(float))  # never worse, often better
    w = (rng.random((5, 1000)) < 0.6).astype(float)
    c = (rng.random((5, 1000)) < 0.9).astype(float)
    diff = paired_difference(a, b, w, c)
    assert not diff.tied and diff.pgr is not None and diff.pgr > 0 and diff.pgr_ci[0] > 0  # type: ignore[index]  # set with pgr


def test_the_same_seed_gives_the_same_figures_and_pairing_shrinks_the_se() -> None:
    a, b = _arms(1000, 5, 0.75, 0.05, seed=8)
    first, again = paired_difference(a, b, seed=3), paired_difference(a, b, seed=3)
    assert first == again
    # Unpaired (b's rows shuffled): the common luck no longer cancels.
    unpaired = paired_difference(a, b[:, np.random.default_rng(9).permutation(1000)], seed=3)
    assert first.accuracy_se < 0.5 * unpaired.accuracy_se


def test_bad_inputs_are_refused() -> None:
    a = np.ones((5, 10))
    with pytest.raises(ValueError, match="same 10 rows"):
        paired_difference(a, np.ones((5, 9)))
    with pytest.raises(ValueError, match="0/1"):
        paired_difference(a, np.full((5, 10), 0.5))
    with pytest.raises(ValueError, match="n_bootstrap"):
        paired_difference(a, a, n_bootstrap=1)
