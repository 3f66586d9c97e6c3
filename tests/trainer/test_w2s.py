"""PGR arithmetic, accuracy, the teacher-ablation shuffle."""

from __future__ import annotations

import math

import numpy as np
import pytest

from trainer import w2s


def test_pgr_value_and_delta_method_se() -> None:
    r = w2s.pgr([0.80, 0.82], [0.70, 0.72], [0.90, 0.92])
    assert r.value == pytest.approx(0.5)
    se_arm = np.std([0.80, 0.82], ddof=1) / math.sqrt(2)  # same spread in every arm
    expected = math.sqrt(se_arm**2 * (1 + 0.5**2 + 0.5**2)) / 0.2
    assert r.se == pytest.approx(expected)
    assert r.gap == pytest.approx(0.2) and r.gap_se == pytest.approx(math.sqrt(2) * se_arm)
    assert r.n_seeds == 2 and r.reason is None


def test_pgr_scalars_and_eval_sampling_error() -> None:
    exact = w2s.pgr(0.78, 0.748, 0.839)
    assert exact.value == pytest.approx((0.78 - 0.748) / (0.839 - 0.748))
    assert exact.se == 0.0
    sampled = w2s.pgr(0.78, 0.748, 0.839, n_eval=1000)
    assert sampled.value == pytest.approx(exact.value)
    assert sampled.se is not None and sampled.se > 0.1  # 1000 eval rows: the gap of 0.09 is only ~5 SE


def test_pgr_is_null_when_gap_is_within_two_standard_errors() -> None:
    r = w2s.pgr([0.75, 0.76], [0.74, 0.76], [0.75, 0.77])
    assert r.value is None and r.se is None and "standard errors" in (r.reason or "")
    r = w2s.pgr(0.80, 0.75, 0.76, n_eval=500)  # gap 0.01, se ~0.027
    assert r.value is None


def test_pgr_is_null_when_ceiling_not_above_weak() -> None:
    r = w2s.pgr(0.8, 0.8, 0.8)
    assert r.value is None and "not above" in (r.reason or "")
    assert w2s.pgr(0.8, 0.85, 0.8).value is None


def test_pgr_can_exceed_one_and_go_negative() -> None:
    assert w2s.pgr(0.95, 0.7, 0.9).value == pytest.approx(1.25)
    assert w2s.pgr(0.65, 0.7, 0.9).value == pytest.approx(-0.25)


def test_pgr_rejects_empty_or_nan() -> None:
    with pytest.raises(ValueError):
        w2s.pgr([], 0.7, 0.9)
    with pytest.raises(ValueError):
        w2s.pgr(float("nan"), 0.7, 0.9)


def test_accuracy_accepts_probabilities_and_class_pairs() -> None:
    gold = np.array([1, 0, 1, 0])
    assert w2s.accuracy(np.array([0.9, 0.1, 0.4, 0.5]), gold) == 0.5
    pairs = np.array([[0.1, 0.9], [0.9, 0.1], [0.2, 0.8], [0.7, 0.3]])
    assert w2s.accuracy(pairs, gold) == 1.0


def test_shuffle_labels_is_a_seeded_permutation() -> None:
    labels = np.linspace(0, 1, 50)
    a, b = w2s.shuffle_labels(labels, 3), w2s.shuffle_labels(labels, 3)
    assert np.array_equal(a, b) and not np.array_equal(a, labels)
    assert np.array_equal(np.sort(a), labels)
