"""Ground truth for one (dataset, models, splits) setup: gold labels, baselines, weak labels.

Built only inside the scorer process. Gold labels leave it as aggregate accuracies
and nothing else; weak labels (the teacher's soft labels on B) leave it as an
artifact that trainers use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.paths import AarHome
from schemas.experiment import Split, dataset_split
from trainer import w2s
from trainer.data import SplitSizes
from trainer.pipeline import Baselines, Prepared, baselines, prepare
from trainer.teacher import TeacherHead, train_teachers


@dataclass(frozen=True, slots=True)
class Setup:
    dataset: str
    weak_model: str
    strong_model: str
    sizes: tuple[tuple[str, int], ...]
    split_seed: int
    seeds: tuple[int, ...]

    @property
    def split_sizes(self) -> dict[str, int]:
        return dict(self.sizes)


@dataclass(frozen=True, slots=True)
class Scored:
    accuracies: list[float]
    pgr: w2s.PGR
    correct: np.ndarray  # [seeds, rows] 0/1: for paired comparisons, never published


class GroundTruth:
    def __init__(self, setup: Setup, home: AarHome | None = None, *, progress: bool = False) -> None:
        self.setup = setup
        self.prep: Prepared = prepare(
            setup.dataset,
            weak=setup.weak_model,
            strong=setup.strong_model,
            sizes=SplitSizes(**setup.split_sizes),
            split_seed=setup.split_seed,
            eval_splits=("dev", "test"),
            home=home,
            progress=progress,
        )
        self.baselines: dict[str, Baselines] = {
            name: baselines(self.prep, setup.seeds, name) for name in ("dev", "test")
        }

    def weak_labels(self, *, shuffled: bool = False) -> dict[int, np.ndarray]:
        out = {}
        self.prep.teach(self.setup.seeds)  # every seed's teacher at once (batched)
        for seed in self.setup.seeds:
            labels = self.prep.weak_labels(seed)
            out[seed] = w2s.shuffle_labels(labels, seed) if shuffled else labels
        return out

    def teachers(self, *, shuffled: bool = False) -> dict[int, TeacherHead]:
        """Each seed's weak teacher as weights (for ``ctx.teacher``); ``shuffled``: trained on
        a seeded permutation of A's labels, a teacher without signal (the ablation's)."""
        return train_teachers(self.prep.weak_features["A"], self.prep.dataset.A.labels, self.setup.seeds,
                              shuffled=shuffled)

    def score(self, predictions: dict[int, np.ndarray], split: Split, seeds: list[int]) -> Scored:
        """Accuracy per seed on the eval split and PGR against this setup's baselines."""
        name = dataset_split(split)
        gold = self.prep.dataset.split(name).labels
        missing = [s for s in seeds if s not in predictions]
        if missing:
            raise ValueError(f"predictions are missing seeds {missing}")
        correct = np.stack([w2s.correct(predictions[s], gold) for s in seeds])
        accs = [float(row.mean()) for row in correct]
        base = self.baselines[name]
        return Scored(accs, w2s.pgr(accs, base.weak_acc, base.ceiling_acc, n_eval=base.n_eval), correct)
