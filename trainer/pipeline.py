"""Glue for trusted callers (scorer, trainer, report): features of a dataset's splits,
the seeded weak teacher and baselines, and method contexts.

The scorer owns the gold labels: it builds :class:`Prepared`, computes
:func:`baselines` and hands a trainer only what :func:`method_inputs` returns.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core.paths import AarHome
from trainer import w2s
from trainer.data import DEFAULT_SPLIT_SEED, Dataset, SplitSizes, get_dataset
from trainer.features import DEFAULT_POOLING, split_features
from trainer.methods import MethodContext
from trainer.methods.seeds import run_seeds

DEFAULT_WEAK = "minilm"
DEFAULT_STRONG = "mpnet"


@dataclass(slots=True)
class Prepared:
    """A dataset with weak features of A/B/eval splits and strong features of B/eval splits."""

    dataset: Dataset
    weak: str
    strong: str
    weak_features: dict[str, np.ndarray]
    strong_features: dict[str, np.ndarray]
    _teacher_cache: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def weak_labels(self, seed: int) -> np.ndarray:
        """The weak teacher's P(class 1) on B for this seed (computed once)."""
        if seed not in self._teacher_cache:
            self.teach((seed,))
        return self._teacher_cache[seed]

    def teach(self, seeds: tuple[int, ...]) -> None:
        """Train the weak teachers of ``seeds`` not trained yet, as one batched model."""
        todo = [s for s in dict.fromkeys(seeds) if s not in self._teacher_cache]
        labels = run_seeds(lambda s: w2s.train_weak_teacher(
            self.weak_features["A"], self.dataset.A.labels, self.weak_features["B"], s), todo)
        self._teacher_cache.update(zip(todo, labels, strict=True))


def prepare(
    dataset: str = "rotten_tomatoes",
    *,
    weak: str = DEFAULT_WEAK,
    strong: str = DEFAULT_STRONG,
    sizes: SplitSizes | None = None,
    split_seed: int = DEFAULT_SPLIT_SEED,
    eval_splits: tuple[str, ...] = ("dev", "test"),
    pooling: str = DEFAULT_POOLING,
    home: AarHome | None = None,
    progress: bool = True,
) -> Prepared:
    """Load the splits and their (cached) features. Strong features of A are never needed."""
    ds = get_dataset(dataset, sizes, split_seed)
    weak_f = {
        s: split_features(weak, ds.split(s), pooling=pooling, home=home, progress=progress)
        for s in ("A", "B", *eval_splits)
    }
    strong_f = {
        s: split_features(strong, ds.split(s), pooling=pooling, home=home, progress=progress)
        for s in ("B", *eval_splits)
    }
    return Prepared(ds, weak, strong, weak_f, strong_f)


@dataclass(frozen=True, slots=True)
class Baselines:
    eval_split: str
    seeds: tuple[int, ...]
    weak_acc: tuple[float, ...]  # weak floor per seed
    ceiling_acc: tuple[float, ...]  # strong ceiling per seed
    n_eval: int
    # Per seed and row, 0/1: what paired comparisons resample (trainer/paired.py). Never
    # leaves the scorer (per-row correctness would reveal the gold labels).
    weak_correct: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), compare=False, repr=False)
    ceiling_correct: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)), compare=False, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "eval_split": self.eval_split,
            "seeds": list(self.seeds),
            "weak_acc": list(self.weak_acc),
            "ceiling_acc": list(self.ceiling_acc),
            "n_eval": self.n_eval,
        }


def baselines(prep: Prepared, seeds: tuple[int, ...] = (0, 1, 2, 3, 4), eval_split: str = "dev") -> Baselines:
    gold = prep.dataset.split(eval_split).labels
    # Each arm's seeds train as one batched model (trainer.methods.seeds).
    weak = np.stack(run_seeds(lambda s: w2s.correct(
        w2s.weak_floor(prep.weak_features["A"], prep.dataset.A.labels, prep.weak_features[eval_split], s), gold
    ), list(seeds)))
    ceil = np.stack(run_seeds(lambda s: w2s.correct(
        w2s.ceiling(prep.strong_features["B"], prep.dataset.B.labels, prep.strong_features[eval_split], s), gold
    ), list(seeds)))
    return Baselines(eval_split, tuple(seeds), tuple(float(r.mean()) for r in weak),
                     tuple(float(r.mean()) for r in ceil), len(gold), weak, ceil)


def method_inputs(
    prep: Prepared, seed: int, eval_split: str = "dev", params: dict[str, Any] | None = None, *, shuffled: bool = False
) -> MethodContext:
    """A method's context for one seed: B's strong features and weak labels, eval features, texts.

    ``shuffled``: the teacher-ablation control (weak labels permuted by :func:`w2s.shuffle_labels`).
    """
    labels = prep.weak_labels(seed)
    if shuffled:
        labels = w2s.shuffle_labels(labels, seed)
    return MethodContext(
        train_features=prep.strong_features["B"],
        weak_soft_labels=labels,
        eval_features=prep.strong_features[eval_split],
        train_texts=list(prep.dataset.B.texts),
        eval_texts=list(prep.dataset.split(eval_split).texts),
        seed=seed,
        params=dict(params or {}),
    )
