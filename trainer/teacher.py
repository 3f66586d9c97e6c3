"""The weak teacher on demand (``ctx.teacher(texts)``), trusted side.

The scorer trains each seed's weak teacher on A (:func:`train_teachers`: the same heads
that label B) and stores their weights as an artifact (:func:`pack_teachers`); for the
teacher-ablation run it stores teachers trained on a seeded permutation of A's labels,
which carry no signal. A trainer loads them (:func:`unpack_teachers`) and answers a
sandboxed method's queries (:class:`Teacher`): it embeds the texts with the weak model,
which it owns, and returns each text's P(class 1) under the seed's teacher. The method
never sees the weights, only answers, and at most ``budget`` texts per run.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from core.paths import AarHome
from trainer import w2s
from trainer.methods.base import Head, train_head
from trainer.methods.seeds import run_seeds

MEDIA_TYPE = "application/x-npz"
MAX_TEXT_CHARS = 10_000  # longer query texts are cut (the weak model reads a few hundred tokens at most)


class TeacherBudgetError(RuntimeError):
    """A run asked the teacher about more texts than its budget."""


@dataclass(frozen=True, slots=True)
class TeacherHead:
    """A head's weights as arrays: z-scored input, then linear layers with ReLU between."""

    mean: np.ndarray
    std: np.ndarray
    layers: tuple[tuple[np.ndarray, np.ndarray], ...]  # (weight [out, in], bias [out])

    @classmethod
    def from_head(cls, head: Head) -> TeacherHead:
        import torch

        linear = [m for m in head.net.modules() if isinstance(m, torch.nn.Linear)]
        return cls(
            head.mean.detach().numpy().astype(np.float32),
            head.std.detach().numpy().astype(np.float32),
            tuple((m.weight.detach().numpy().astype(np.float32), m.bias.detach().numpy().astype(np.float32))
                  for m in linear),
        )

    def predict(self, features: np.ndarray) -> np.ndarray:
        """P(class 1) per row, float64."""
        x = (np.asarray(features, dtype=np.float32) - self.mean) / self.std
        for i, (w, b) in enumerate(self.layers):
            x = x @ w.T + b
            if i < len(self.layers) - 1:
                x = np.maximum(x, 0.0)
        logits = x.astype(np.float64)
        return 1.0 / (1.0 + np.exp(-(logits[:, 1] - logits[:, 0])))


def train_teachers(weak_a: np.ndarray, gold_a: np.ndarray, seeds: Sequence[int], *,
                   shuffled: bool = False) -> dict[int, TeacherHead]:
    """Each seed's weak teacher, trained on A's gold labels (``shuffled``: on a seeded
    permutation of them, the ablation's teacher without signal)."""
    def one(seed: int) -> TeacherHead:
        labels = np.asarray(gold_a, dtype=np.float64)
        if shuffled:
            labels = w2s.shuffle_labels(labels, seed)
        return TeacherHead.from_head(train_head(weak_a, labels, seed=seed, config=w2s.GOLD_HEAD))

    seeds = list(seeds)
    return dict(zip(seeds, run_seeds(one, seeds), strict=True))


def pack_teachers(heads: dict[int, TeacherHead]) -> bytes:
    arrays: dict[str, np.ndarray] = {}
    for seed, head in sorted(heads.items()):
        arrays[f"s{seed}_mean"], arrays[f"s{seed}_std"] = head.mean, head.std
        for i, (w, b) in enumerate(head.layers):
            arrays[f"s{seed}_w{i}"], arrays[f"s{seed}_b{i}"] = w, b
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def unpack_teachers(data: bytes) -> dict[int, TeacherHead]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k]) for k in npz.files}
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"not a teacher artifact: {exc}") from exc
    seeds = sorted({int(k[1:].split("_", 1)[0]) for k in arrays if k.endswith("_mean")})
    heads = {}
    for seed in seeds:
        layers: list[tuple[np.ndarray, np.ndarray]] = []
        while f"s{seed}_w{len(layers)}" in arrays:
            i = len(layers)
            layers.append((arrays[f"s{seed}_w{i}"], arrays[f"s{seed}_b{i}"]))
        if not layers:
            raise ValueError(f"the teacher of seed {seed} has no layers")
        heads[seed] = TeacherHead(arrays[f"s{seed}_mean"], arrays[f"s{seed}_std"], tuple(layers))
    return heads


class Teacher:
    """Answers ``ctx.teacher(texts)`` for one run: embeds with the weak model (cached per
    text), applies the seed's head, counts texts against ``budget``. Thread-safe."""

    def __init__(self, heads: dict[int, TeacherHead], weak_model: str, dataset: str | None, *, budget: int,
                 home: AarHome | None = None) -> None:
        self.heads = heads
        self.weak_model = weak_model
        self.dataset = dataset
        self.budget = budget
        self.home = home
        self.queries = 0
        self._lock = threading.Lock()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()

    def fresh(self, budget: int) -> Teacher:
        """The same teacher for another run: its own budget and count, the embedding cache shared."""
        other = Teacher(self.heads, self.weak_model, self.dataset, budget=budget, home=self.home)
        other._cache = self._cache
        return other

    def __call__(self, seed: int, texts: Sequence[str]) -> np.ndarray:
        head = self.heads.get(int(seed))
        if head is None:
            raise ValueError(f"no teacher for seed {seed} (this run has seeds {sorted(self.heads)})")
        texts = [str(t)[:MAX_TEXT_CHARS] for t in texts]
        cost = max(1, len(texts))  # a query costs at least one text (empty ones are not free)
        with self._lock:
            if self.queries + cost > self.budget:
                raise TeacherBudgetError(
                    f"the teacher budget is {self.budget} texts per run; {self.queries} used, "
                    f"{len(texts)} asked")
            self.queries += cost
            if not texts:
                return np.zeros(0, dtype=np.float64)
            return head.predict(self._embed(texts))

    def warm(self) -> None:
        """Load the weak model now (seconds, once per process), not during a run's first query."""
        self._embed([""])

    def _embed(self, texts: list[str]) -> np.ndarray:
        from trainer import models
        from trainer.features import embed_texts, token_limit

        todo = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if todo:
            home = self.home or AarHome.from_env()
            path = models.model_path(self.weak_model, home, fetch_missing=False)
            length = token_limit(self.weak_model, self.dataset, path)
            feats = embed_texts(self.weak_model, todo, progress=False, home=home, threads=1, max_length=length)
            for text, row in zip(todo, feats, strict=True):
                self._cache[text] = row
            while len(self._cache) > 50_000:
                self._cache.popitem(last=False)
        return np.stack([self._cache[t] for t in texts])
