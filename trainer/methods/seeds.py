"""Run one method over several seeds, training the seeds' heads as one batched model.

A job scores a method on k seeds. Each seed trains a small head (a few hundred Adam
steps on ~1,000 rows), and on a CPU the per-step overhead (Python, autograd, the
optimizer) costs far more than the arithmetic. :func:`run_seeds` runs ``fn(ctx)`` for
every context in its own thread; whenever every thread is either waiting in
:func:`~trainer.methods.base.train_head` or done, the waiting heads that can share a
model (same rows x features shape and the same :class:`HeadConfig`) are trained
together: their parameters are stacked along a seed axis, one batched forward and one
backward per step, one Adam over the stacked tensors. Adam works elementwise and the
loss is the sum of the seeds' own losses, so every seed gets the update it would get
alone: same initialisation (``torch.manual_seed(seed)``), same row order (its own
generator), same loss and schedule. Results equal the one-by-one ones up to float
rounding (batched matrix products sum in another order).

Calls that cannot be batched (``sample_weight`` or ``on_epoch`` given, or a head alone
in its group) train as before, one at a time under a lock (their initialisation uses
the process-wide torch RNG). Methods whose code uses global random state (``np.random``,
``torch.rand``) must not run here; the built-in methods use ``ctx.rng`` and seeded
generators only. The sandbox runs agent code one seed after the other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch

from trainer.methods.base import BATCHING, SOLO_LOCK, Head, HeadConfig, cosine_lrs, step_once
from trainer.methods.losses import LossFn, batched_form

T = TypeVar("T")
X = TypeVar("X")

HEAD_FIELDS = tuple(HeadConfig.__dataclass_fields__)  # heads trained alone from run_seeds' threads: one at a time


@dataclass(slots=True)
class HeadCall:
    """One pending ``train_head`` call of one seed's thread."""

    x: torch.Tensor  # [n, d] float32
    y: torch.Tensor  # [n, 2] targets
    seed: int
    loss: LossFn
    cfg: HeadConfig
    head: Head | None = None
    error: BaseException | None = None
    done: bool = False

    @property
    def key(self) -> tuple[Any, ...]:
        return (tuple(self.x.shape), tuple(self.y.shape), *(getattr(self.cfg, f) for f in HEAD_FIELDS))


@dataclass(slots=True)
class _Batcher:
    live: int
    cond: threading.Condition = field(default_factory=threading.Condition)
    pending: list[HeadCall] = field(default_factory=list)

    def train_one(self, x: torch.Tensor, y: torch.Tensor, seed: int, loss: LossFn, cfg: HeadConfig) -> Head:
        """What :func:`~trainer.methods.base.train_head` calls in one of the seeds' threads."""
        return self.train(HeadCall(x, y, seed, loss, cfg))

    def train(self, call: HeadCall) -> Head:
        with self.cond:
            self.pending.append(call)
            self._maybe_run()
            while not call.done:
                self.cond.wait()
        if call.error is not None:
            raise call.error
        assert call.head is not None
        return call.head

    def leave(self) -> None:
        with self.cond:
            self.live -= 1
            self._maybe_run()

    def _maybe_run(self) -> None:
        """Train the pending heads once every live thread waits (called under the lock)."""
        if not self.pending or len(self.pending) < self.live:
            return
        calls, self.pending = self.pending, []
        try:
            groups: dict[tuple[Any, ...], list[HeadCall]] = {}
            for c in calls:
                groups.setdefault(c.key, []).append(c)
            for group in groups.values():
                try:
                    heads = train_batched(group)
                    for c, h in zip(group, heads, strict=True):
                        c.head = h
                except BaseException as exc:  # noqa: BLE001 - every waiting seed gets the error
                    for c in group:
                        c.error = exc
        finally:
            for c in calls:  # never leave a seed waiting, whatever went wrong
                if c.head is None and c.error is None:
                    c.error = RuntimeError("batched head training did not run")
                c.done = True
            self.cond.notify_all()


def current() -> _Batcher | None:
    """The batcher of this thread, when it runs inside :func:`run_seeds`."""
    return getattr(BATCHING, "batcher", None)


def run_seeds(fn: Callable[[X], T], ctxs: Sequence[X]) -> list[T]:
    """``[fn(ctx) for ctx in ctxs]``, the seeds' heads trained as one batched model.

    ``ctxs``: one item per seed (usually a :class:`MethodContext`; trusted callers pass
    seeds). Raises the first seed's exception (in ``ctxs`` order) if any seed fails."""
    if len(ctxs) <= 1:
        return [fn(ctx) for ctx in ctxs]
    batcher = _Batcher(live=len(ctxs))
    results: list[Any] = [None] * len(ctxs)
    errors: list[BaseException | None] = [None] * len(ctxs)

    def work(i: int) -> None:
        BATCHING.batcher = batcher
        try:
            results[i] = fn(ctxs[i])
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors[i] = exc
        finally:
            BATCHING.batcher = None
            batcher.leave()

    threads = [threading.Thread(target=work, args=(i,), name=f"seed-{i}", daemon=True) for i in range(len(ctxs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for exc in errors:
        if exc is not None:
            raise exc
    return results


def _stacked(heads: list[Head]) -> list[torch.Tensor]:
    """Each parameter of the heads' nets, stacked along a new seed axis (leaf tensors)."""
    names = [name for name, _ in heads[0].net.named_parameters()]
    out = []
    for name in names:
        t = torch.stack([dict(h.net.named_parameters())[name].detach() for h in heads]).clone()
        out.append(t.requires_grad_(True))
    return out


def _forward(params: list[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """The stacked nets on ``x[S, B, d]``: linear (W, b) or one ReLU layer (W1, b1, W2, b2)."""
    if len(params) == 2:
        w, b = params
        return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))
    w1, b1, w2, b2 = params
    hidden = torch.relu(torch.baddbmm(b1.unsqueeze(1), x, w1.transpose(1, 2)))
    return torch.baddbmm(b2.unsqueeze(1), hidden, w2.transpose(1, 2))


def train_batched(calls: list[HeadCall]) -> list[Head]:
    """Train the heads of ``calls`` (same shapes and config) together; one :class:`Head` each."""
    from trainer.methods.base import HEAD_THREADS, _train_head, torch_threads

    if len(calls) == 1:
        c = calls[0]
        with SOLO_LOCK, torch_threads(HEAD_THREADS):
            return [_train_head(c.x.numpy(), c.y[:, 1].numpy(), c.seed, c.loss, c.cfg, None, None, {})]
    cfg = calls[0].cfg
    heads = []
    with SOLO_LOCK:  # initialisation uses the process-wide RNG
        for c in calls:
            mean = c.x.mean(0).numpy() if cfg.standardize else None
            std = (c.x.std(0) + 1e-6).numpy() if cfg.standardize else None
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(c.seed))
                heads.append(Head(c.x.shape[1], cfg.hidden, mean, std))
    with torch_threads(HEAD_THREADS):
        _fit(calls, heads, cfg)
    for h in heads:
        h.eval()
    return heads


def _fit(calls: list[HeadCall], heads: list[Head], cfg: HeadConfig) -> None:
    s_count = len(calls)
    x = torch.stack([(c.x - h.mean) / h.std if cfg.standardize else c.x for c, h in zip(calls, heads, strict=True)])
    y = torch.stack([c.y for c in calls])
    n = x.shape[1]
    batch = min(cfg.batch_size, n)
    steps_per_epoch = max(1, n // batch)
    total = cfg.epochs * steps_per_epoch
    params = _stacked(heads)
    weights = [p for p, (name, _) in zip(params, heads[0].net.named_parameters(), strict=True)
               if name.endswith("weight")]
    optimizer = torch.optim.Adam(params, lr=cfg.lr)
    lrs = cosine_lrs(cfg.lr, total)
    generators = [torch.Generator().manual_seed(int(c.seed)) for c in calls]
    seeds_axis = torch.arange(s_count).unsqueeze(1)
    # One loss call for all seeds when they share a loss of trainer.methods.losses (same
    # name and parameters); else each seed's own loss on its slice of the logits.
    forms = [batched_form(c.loss) for c in calls]
    together = forms[0][1] if forms[0] is not None and all(f is not None and f[0] == forms[0][0] for f in forms) \
        else None
    l2 = float(cfg.l2)
    step = 0
    for _ in range(cfg.epochs):
        order = torch.stack([torch.randperm(n, generator=g) for g in generators])  # [S, n]
        xs, ys = x[seeds_axis, order], y[seeds_axis, order]
        for b in range(steps_per_epoch):
            lo = b * batch
            logits = _forward(params, xs[:, lo : lo + batch])
            frac = step / total
            yb = ys[:, lo : lo + batch]
            if together is not None:
                value = together(logits, yb, frac).sum()
            else:
                value = sum((c.loss(logits[i], yb[i], frac) for i, c in enumerate(calls)), torch.zeros(()))
            step_once(optimizer, value, weights, l2, lrs[step])
            step += 1
    with torch.no_grad():
        for i, h in enumerate(heads):
            for p, (_, target) in zip(params, h.net.named_parameters(), strict=True):
                target.copy_(p[i])
