"""What a dev score reveals (services/scorer/release.py): a label-probing method learns
next to nothing from 50 released scores, while an agent can still tell whether it
beat its parent.

The attack is the one agents can write: a method reads row choices from ``ctx.params``
and flips its predictions there, differently per seed (``ctx.seed``), so each score is
a linear measurement of the probed rows' labels; least squares over the scores then
estimates every probed label. On exact figures (the scorer before release noise:
``rows=0``) it recovers them all; on released figures it is near a coin flip.
"""

from __future__ import annotations

import numpy as np
import pytest

from schemas.experiment import Purpose, Split
from schemas.scoring import Against, Comparison, ScorePublished
from services.scorer.release import Release
from trainer import w2s
from trainer.paired import paired_difference

N = 3000  # the default dev split
SEEDS = 5
SCORES = 50
PROBED = 40


def _scorer_view(release: Release, correct: np.ndarray, key: str, weak: float, ceiling: float) -> ScorePublished:
    """What the scorer publishes for a method's [seeds, rows] correctness (service.py's path)."""
    accs = correct.mean(axis=1).tolist()
    p = w2s.pgr(accs, [weak] * SEEDS, [ceiling] * SEEDS, n_eval=N)
    _, seed_se = w2s.mean_se(accs)
    full = ScorePublished(
        experiment_id=key, idea_id="idea-probe", agent_id="agent-1", purpose=Purpose.SCORE, dataset="rotten_tomatoes",
        split=Split.DEV, n_seeds=SEEDS, accuracy=p.student, accuracy_stderr=seed_se, weak_accuracy=weak,
        ceiling_accuracy=ceiling, pgr=p.value, pgr_stderr=p.se, builtin_method=None,
    )
    released, _ = release.score(full, n_eval=N, seed_se=seed_se, key=key, comparisons=[])
    return released


def _attack(release: Release, rng: np.random.Generator, *, per_seed: bool = True) -> float:
    """Fraction of probed labels the attack gets right from SCORES released scores.
    ``per_seed``: each seed flips its own random half of the probes (else all seeds the
    same half: a stronger design, each flip moves the mean accuracy by a whole row)."""
    gold = rng.integers(0, 2, N)
    probed = rng.choice(N, PROBED, replace=False)
    base = np.zeros(N)  # predict class 0 everywhere; flipping row i is right iff gold[i] == 1
    design, observed = [], []
    for q in range(SCORES):
        flips = rng.integers(0, 2, (SEEDS if per_seed else 1, PROBED)).repeat(1 if per_seed else SEEDS, axis=0)
        correct = np.empty((SEEDS, N))
        for s in range(SEEDS):
            preds = base.copy()
            preds[probed[flips[s] == 1]] = 1.0
            correct[s] = (preds == gold).astype(float)
        score = _scorer_view(release, correct, f"x-{q}", weak=0.68, ceiling=0.85)
        design.append(flips.mean(axis=0))
        observed.append(score.accuracy)
    x = np.column_stack([np.ones(SCORES), np.asarray(design)])
    coef, *_ = np.linalg.lstsq(x, np.asarray(observed), rcond=None)
    guess = (coef[1:] > 0).astype(int)  # flipping a label-1 row raises the accuracy
    return float((guess == gold[probed]).mean())


@pytest.mark.parametrize("per_seed", [True, False])
def test_exact_scores_hand_out_the_probed_labels(per_seed: bool) -> None:
    """The control: without release noise (the old scorer) the attack works."""
    assert _attack(Release(rows=0), np.random.default_rng(0), per_seed=per_seed) >= 0.95


@pytest.mark.parametrize("per_seed", [True, False])
def test_released_scores_keep_the_attack_near_chance(per_seed: bool) -> None:
    rates = [_attack(Release(rows=20), np.random.default_rng(100 + t), per_seed=per_seed) for t in range(20)]
    assert np.mean(rates) <= 0.60, rates


def test_an_agent_still_sees_that_it_beat_its_parent() -> None:
    rng = np.random.default_rng(3)
    release = Release(rows=20)
    gold = rng.integers(0, 2, N)
    weak = (rng.random((SEEDS, N)) < 0.68).astype(float)
    ceiling = (rng.random((SEEDS, N)) < 0.85).astype(float)
    parent = (rng.random((SEEDS, N)) < 0.78).astype(float)
    child = parent.copy()  # the child fixes a fifth of its parent's errors: +0.044 accuracy, +0.26 PGR
    errors = np.argwhere(parent == 0)
    fixed = errors[rng.random(len(errors)) < 0.2]
    child[fixed[:, 0], fixed[:, 1]] = 1.0
    del gold
    wa, ca = float(weak.mean()), float(ceiling.mean())
    full_parent = _scorer_view(release, parent, "x-parent", wa, ca)
    parent_released = full_parent.accuracy
    d = paired_difference(child, parent, weak, ceiling, n_bootstrap=500, seed=1)
    comparison = Comparison(
        against=Against.PARENT, idea_id="idea-parent", accuracy_diff=d.accuracy, accuracy_diff_se=d.accuracy_se,
        accuracy_ci=list(d.accuracy_ci), pgr_diff=d.pgr, pgr_diff_se=d.pgr_se,
        pgr_ci=None if d.pgr_ci is None else list(d.pgr_ci), tied=d.tied, n_bootstrap=500, bootstrap_seed=1,
    )
    accs = child.mean(axis=1).tolist()
    p = w2s.pgr(accs, weak.mean(axis=1).tolist(), ceiling.mean(axis=1).tolist(), n_eval=N)
    full = ScorePublished(
        experiment_id="x-child", dataset="rotten_tomatoes", split=Split.DEV, n_seeds=SEEDS, accuracy=p.student,
        accuracy_stderr=0.001, weak_accuracy=p.weak, ceiling_accuracy=p.ceiling, pgr=p.value, pgr_stderr=p.se,
    )
    released, _ = release.score(full, n_eval=N, seed_se=0.001, key="x-child",
                                comparisons=[(comparison, parent_released, release.sigma(N))])
    vs = released.comparisons[0]
    assert not vs.tied and vs.pgr_diff is not None and vs.pgr_diff > 0 and vs.pgr_ci is not None and vs.pgr_ci[0] > 0
    assert vs.pgr_diff_se is not None and d.pgr_se is not None and vs.pgr_diff_se > d.pgr_se  # the noise is in the SE
    assert d.pgr is not None and abs(vs.pgr_diff - d.pgr) < 4 * vs.pgr_diff_se  # and the figure is still near the truth
    # The released figures are not the exact ones, and the score is within its noise.
    assert released.accuracy != round(full.accuracy, 6)
    assert abs(released.accuracy - full.accuracy) < 5 * release.sigma(N)


def test_the_noise_is_secret_and_repeatable() -> None:
    a, b = Release(rows=20), Release(rows=20)
    assert a.noisy(0.8, N, "x-1") == a.noisy(0.8, N, "x-1")  # one look per experiment
    assert a.noisy(0.8, N, "x-1") != b.noisy(0.8, N, "x-1")  # another scorer process: another secret
    assert Release(rows=0).noisy(0.8, N, "x-1") == pytest.approx(0.8)
