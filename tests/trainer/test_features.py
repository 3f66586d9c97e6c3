"""Real MiniLM features on a small Rotten Tomatoes cut: caching, the weak teacher,
and the teacher-ablation signal the scorer relies on."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from tests.trainer.conftest import MiniLMSetup
from trainer import features, w2s
from trainer.methods import MethodContext, run_method
from trainer.pipeline import method_inputs


def test_features_are_cached_by_content(minilm: MiniLMSetup, monkeypatch: pytest.MonkeyPatch) -> None:
    prep = minilm.prep
    split = prep.dataset.dev
    path = features.features_path("minilm", split, home=minilm.home)
    assert path.is_file() and path.with_suffix(".json").is_file()
    cached = np.load(path)
    assert cached.shape == (len(split), 384) and cached.dtype == np.float32
    assert np.array_equal(cached, prep.weak_features["dev"])
    assert not list(minilm.home.features.glob(".*.tmp")), "no temp files left behind"

    def boom(*args: object, **kwargs: object) -> None:
        raise AssertionError("features were recomputed instead of read from the cache")

    monkeypatch.setattr(features, "embed_texts", boom)
    again = features.split_features("minilm", split, home=minilm.home, progress=False)
    assert np.array_equal(again, cached)
    other = features.features_path("minilm", split, pooling="mean_l2", home=minilm.home)
    assert other != path


def test_embedding_order_matches_the_texts(minilm: MiniLMSetup) -> None:
    texts = list(minilm.prep.dataset.dev.texts[:6])
    direct = features.embed_texts("minilm", texts[::-1], batch_size=2, home=minilm.home, progress=False)
    assert np.allclose(direct[::-1], minilm.prep.weak_features["dev"][:6], atol=1e-4)


def test_weak_teacher_beats_chance(minilm: MiniLMSetup) -> None:
    prep = minilm.prep
    soft = prep.weak_labels(0)
    assert soft.shape == (len(prep.dataset.B),) and ((soft >= 0) & (soft <= 1)).all()
    assert w2s.accuracy(soft, prep.dataset.B.labels) > 0.62
    floor = w2s.weak_floor(prep.weak_features["A"], prep.dataset.A.labels, prep.weak_features["dev"], 0)
    assert w2s.accuracy(floor, prep.dataset.dev.labels) > 0.62


def kmeans_ignores_teacher(ctx: MethodContext) -> np.ndarray:
    """A 'method' that never reads the weak labels: 2-means on the features, oriented by a
    fixed rule. Its score cannot depend on the teacher."""
    from sklearn.cluster import KMeans  # type: ignore[import-untyped]  # scikit-learn ships no type information

    km = KMeans(n_clusters=2, n_init=4, random_state=ctx.seed).fit(ctx.train_features)
    positive = int(np.argmax(km.cluster_centers_[:, 0]))
    d = km.transform(ctx.eval_features)
    return 1.0 / (1.0 + np.exp(d[:, positive] - d[:, 1 - positive]))


def test_teacher_ablation_separates_methods_that_use_the_teacher(minilm: MiniLMSetup) -> None:
    prep = minilm.prep
    gold = prep.dataset.dev.labels

    def drop(run: Callable[[MethodContext], np.ndarray]) -> float:
        diffs = []
        for seed in (0, 1):
            real = w2s.accuracy(run(method_inputs(prep, seed)), gold)
            shuffled = w2s.accuracy(run(method_inputs(prep, seed, shuffled=True)), gold)
            diffs.append(real - shuffled)
        return float(np.mean(diffs))

    assert drop(kmeans_ignores_teacher) == pytest.approx(0.0, abs=1e-9)
    assert drop(lambda ctx: run_method("naive_soft", ctx)) > 0.1
