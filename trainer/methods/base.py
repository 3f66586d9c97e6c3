"""What a method sees (:class:`MethodContext`) and the head-training helper it can use.

A method is a function ``run(ctx) -> predictions`` where predictions are P(class 1) on
``ctx.eval_features`` rows: shape ``(n_eval,)``, or ``(n_eval, 2)`` class probabilities.
The context never holds a gold label.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from trainer.errors import MethodError
from trainer.methods.losses import LossFn, soft_ce


@dataclass(slots=True)
class HeadConfig:
    """Hyper-parameters of :func:`train_head` (the defaults of every built-in method)."""

    epochs: int = 20  # passes over the training rows
    batch_size: int = 64  # rows per Adam step (full batch when >= n)
    lr: float = 1e-2  # Adam learning rate, cosine-annealed to 0
    l2: float = 1e-2  # L2 penalty (sum of squared weights, not biases) added to the mean loss
    hidden: int = 0  # 0: linear (logistic) head; > 0: one ReLU layer of this width
    standardize: bool = False  # z-score features with the training rows' mean/std first

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> HeadConfig:
        names = cls.__dataclass_fields__
        return cls(**{k: params[k] for k in names if k in params})


class Head(torch.nn.Module):
    """A standardizing linear (or one-hidden-layer) classifier with 2 logits."""

    mean: torch.Tensor  # buffers (register_buffer): saved with the weights, moved with .to()
    std: torch.Tensor

    def __init__(
        self, dim: int, hidden: int = 0, mean: np.ndarray | None = None, std: np.ndarray | None = None
    ) -> None:
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean if mean is not None else np.zeros(dim), dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std if std is not None else np.ones(dim), dtype=torch.float32))
        if hidden > 0:
            self.net: torch.nn.Module = torch.nn.Sequential(
                torch.nn.Linear(dim, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, 2)
            )
        else:
            self.net = torch.nn.Linear(dim, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def weight_penalty(self) -> torch.Tensor:
        return sum((p.pow(2).sum() for n, p in self.net.named_parameters() if n.endswith("weight")), torch.zeros(()))

    @torch.no_grad()
    def logits(self, features: np.ndarray) -> np.ndarray:
        self.eval()
        return self.forward(torch.as_tensor(np.asarray(features, dtype=np.float32))).numpy()

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """P(class 1) per row, float64."""
        logits = self.logits(features).astype(np.float64)
        return 1.0 / (1.0 + np.exp(-(logits[:, 1] - logits[:, 0])))


HEAD_THREADS = 1  # small heads train fastest on one thread (torch overhead dominates)


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (process-wide)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


EpochCallback = Callable[[int, Head], bool | None]  # return True to stop


def as_targets(labels: np.ndarray) -> torch.Tensor:
    """P(class 1) per row (soft or hard) -> ``[n, 2]`` class-probability targets."""
    p = torch.as_tensor(np.asarray(labels, dtype=np.float32)).clamp(0.0, 1.0)
    return torch.stack([1.0 - p, p], dim=1)


def train_head(
    features: np.ndarray,
    targets: np.ndarray,
    *,
    seed: int = 0,
    loss: LossFn = soft_ce,
    config: HeadConfig | None = None,
    sample_weight: np.ndarray | None = None,
    on_epoch: EpochCallback | None = None,
    **overrides: Any,
) -> Head:
    """Fit a :class:`Head` on ``features`` to ``targets`` (P(class 1) per row, soft or hard).

    Adam with a cosine-annealed learning rate, mini-batches reshuffled each epoch by a
    ``torch.Generator`` seeded with ``seed``; the same inputs and seed give the same head.
    ``loss(logits, targets[n, 2], step_frac)`` defaults to soft cross-entropy; the L2
    penalty is added to it. ``sample_weight`` scales rows in the mini-batch sampling (rows
    are drawn with probability proportional to their weight instead of shuffled).
    ``on_epoch(epoch, head)`` runs after every epoch; returning True stops training.
    ``overrides`` replace fields of ``config`` (e.g. ``epochs=5``).
    """
    batcher = getattr(BATCHING, "batcher", None)
    if batcher is not None:  # inside trainer.methods.seeds.run_seeds: one of several seeds
        if sample_weight is None and on_epoch is None:
            cfg = _config(config, overrides)
            x = torch.as_tensor(np.asarray(features, dtype=np.float32))
            y = as_targets(targets)
            _check_shapes(x, y)
            head: Head = batcher.train_one(x, y, int(seed), loss, cfg)
            return head
        with SOLO_LOCK, torch_threads(HEAD_THREADS):
            return _train_head(features, targets, seed, loss, config, sample_weight, on_epoch, overrides)
    with torch_threads(HEAD_THREADS):
        return _train_head(features, targets, seed, loss, config, sample_weight, on_epoch, overrides)


# Set per thread by trainer.methods.seeds.run_seeds (its batcher), unset elsewhere.
BATCHING = threading.local()
SOLO_LOCK = threading.Lock()  # heads trained alone from run_seeds' threads: one at a time


def _config(config: HeadConfig | None, overrides: dict[str, Any]) -> HeadConfig:
    cfg = config or HeadConfig()
    if overrides:
        cfg = HeadConfig(**{**{k: getattr(cfg, k) for k in cfg.__dataclass_fields__}, **overrides})
    return cfg


def _check_shapes(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] == 0:
        raise ValueError(f"features {tuple(x.shape)} and targets {tuple(y.shape)} do not match")


def _train_head(
    features: np.ndarray,
    targets: np.ndarray,
    seed: int,
    loss: LossFn,
    config: HeadConfig | None,
    sample_weight: np.ndarray | None,
    on_epoch: EpochCallback | None,
    overrides: dict[str, Any],
) -> Head:
    cfg = _config(config, overrides)
    x = torch.as_tensor(np.asarray(features, dtype=np.float32))
    y = as_targets(targets)
    _check_shapes(x, y)
    generator = torch.Generator().manual_seed(int(seed))
    mean = x.mean(0).numpy() if cfg.standardize else None
    std = (x.std(0) + 1e-6).numpy() if cfg.standardize else None
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        head = Head(x.shape[1], cfg.hidden, mean, std)
    n = x.shape[0]
    batch = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total = cfg.epochs * steps_per_epoch
    # Per-step overhead is most of the cost of a small head, so the loop does the least
    # it can: standardizes once (the head's own buffers), gathers each epoch's rows in
    # one copy and slices views of it, and sets the cosine-annealed learning rate from a
    # precomputed table (CosineAnnealingLR's closed form, eta_min 0).
    xz = (x - head.mean) / head.std if cfg.standardize else x
    net = head.net
    weights = [p for name, p in net.named_parameters() if name.endswith("weight")]
    optimizer = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    lrs = cosine_lrs(cfg.lr, total)
    sampling = None if sample_weight is None else torch.as_tensor(np.asarray(sample_weight, dtype=np.float64))
    l2 = float(cfg.l2)
    step = 0
    for epoch in range(cfg.epochs):
        head.train()
        if sampling is None:
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.multinomial(sampling, steps_per_epoch * batch, replacement=True, generator=generator)
        xs, ys = xz[order], y[order]
        for b in range(steps_per_epoch):
            lo = b * batch
            step_once(optimizer, loss(net(xs[lo : lo + batch]), ys[lo : lo + batch], step / total), weights, l2,
                      lrs[step])
            step += 1
        if on_epoch is not None and on_epoch(epoch, head):
            break
    head.eval()
    return head


def cosine_lrs(lr: float, total: int) -> list[float]:
    """The learning rate of each step: CosineAnnealingLR's closed form (eta_min 0)."""
    return [lr * 0.5 * (1.0 + math.cos(math.pi * t / max(1, total))) for t in range(total)]


def step_once(optimizer: torch.optim.Optimizer, value: torch.Tensor, weights: Sequence[torch.Tensor], l2: float,
              lr: float) -> None:
    """One Adam step on ``value`` plus the L2 penalty of ``weights``, at learning rate ``lr``."""
    if l2:
        for w in weights:
            value = value + l2 * w.pow(2).sum()
    optimizer.param_groups[0]["lr"] = lr
    optimizer.zero_grad(set_to_none=True)
    value.backward()
    optimizer.step()


@dataclass(slots=True)
class MethodContext:
    """Everything a method may use. No gold labels, ever.

    - ``train_features``: strong-backbone features of split B, float32[n_train, d]
    - ``weak_soft_labels``: the weak teacher's P(class 1) on B, float[n_train]
    - ``eval_features``: strong-backbone features of the rows to predict, float32[n_eval, d]
    - ``train_texts`` / ``eval_texts``: the raw texts, same order as the features
    - ``seed``: the run's seed (use it for every random choice)
    - ``params``: the method's hyper-parameters (override its documented defaults)
    - ``teacher(texts)``: the weak teacher's P(class 1) on any texts (this seed's teacher,
      answered by the trainer; a budget of texts per run, counted in the run's events; in
      the teacher-ablation run it answers from a teacher trained on shuffled labels)
    """

    train_features: np.ndarray
    weak_soft_labels: np.ndarray
    eval_features: np.ndarray
    train_texts: list[str] = field(default_factory=list)
    eval_texts: list[str] = field(default_factory=list)
    seed: int = 0
    params: dict[str, Any] = field(default_factory=dict)
    teacher_fn: Callable[[int, list[str]], Any] | None = field(default=None, repr=False, compare=False)

    def teacher(self, texts: Sequence[str]) -> np.ndarray:
        """The weak teacher's P(class 1) for each of ``texts``, float64[len(texts)]."""
        if self.teacher_fn is None:
            raise RuntimeError("no weak teacher is available to this run")
        if isinstance(texts, str):
            texts = [texts]
        return np.asarray(self.teacher_fn(self.seed, list(texts)), dtype=np.float64).reshape(-1)

    def __post_init__(self) -> None:
        self.train_features = np.asarray(self.train_features, dtype=np.float32)
        self.eval_features = np.asarray(self.eval_features, dtype=np.float32)
        self.weak_soft_labels = np.asarray(self.weak_soft_labels, dtype=np.float64).reshape(-1)
        if self.train_features.shape[0] != self.weak_soft_labels.shape[0]:
            raise ValueError(
                f"{self.train_features.shape[0]} training rows but {self.weak_soft_labels.shape[0]} weak labels"
            )
        if (
            self.train_features.ndim != 2
            or self.eval_features.ndim != 2
            or self.train_features.shape[1] != self.eval_features.shape[1]
        ):
            raise ValueError(f"feature shapes do not match: {self.train_features.shape} vs {self.eval_features.shape}")

    @property
    def n_train(self) -> int:
        return int(self.train_features.shape[0])

    @property
    def n_eval(self) -> int:
        return int(self.eval_features.shape[0])

    def param(self, name: str, default: Any) -> Any:
        return self.params.get(name, default)

    def rng(self, salt: int = 0) -> np.random.Generator:
        return np.random.default_rng([int(self.seed), int(salt)])

    def head_config(self, **defaults: Any) -> HeadConfig:
        """A :class:`HeadConfig` from ``defaults`` overridden by ``ctx.params``."""
        return HeadConfig.from_params({**defaults, **self.params})

    def train_head(self, features: np.ndarray | None = None, targets: np.ndarray | None = None, **kw: Any) -> Head:
        """:func:`train_head` on B's features and weak labels unless others are given; seeded with ``ctx.seed``."""
        kw.setdefault("seed", self.seed)
        kw.setdefault("config", self.head_config())
        return train_head(
            self.train_features if features is None else features,
            self.weak_soft_labels if targets is None else targets,
            **kw,
        )


def validate_predictions(predictions: Any, n: int) -> np.ndarray:
    """Normalize a method's output to P(class 1), float64[n]; raise :class:`MethodError` if invalid."""
    try:
        p = np.asarray(predictions, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise MethodError(f"predictions are not numeric: {exc}") from None
    if p.ndim == 2 and p.shape == (n, 2):
        if (p < 0).any() or not np.isfinite(p).all():
            raise MethodError("class probabilities must be finite and non-negative")
        total = p.sum(axis=1)
        if (total <= 0).any():
            raise MethodError("class probabilities of a row sum to 0")
        p = p[:, 1] / total
    elif p.ndim == 2 and p.shape == (n, 1):
        p = p[:, 0]
    if p.shape != (n,):
        raise MethodError(f"expected predictions of shape ({n},) or ({n}, 2), got {p.shape}")
    if not np.isfinite(p).all():
        raise MethodError("predictions contain NaN or infinity")
    if (p < 0).any() or (p > 1).any():
        raise MethodError("predictions must be probabilities in [0, 1]")
    return p
