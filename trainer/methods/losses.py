"""Loss functions of the weak-to-strong literature, on 2-class logits.

Convention (as in github.com/openai/weak-to-strong ``weak_to_strong/loss.py``): a loss is
called as ``loss(logits[n, 2], targets[n, 2], step_frac) -> scalar``, where ``targets``
are the weak teacher's soft labels as class probabilities and ``step_frac`` in [0, 1) is
the fraction of training done (``step / total_steps``).

Auxiliary confidence loss (Burns et al. 2023, section 4.3.2)::

    target = (1 - a) * weak + a * harden(student)
    loss   = CE(logits, target)

``harden`` thresholds the student's own P(class 0) at the batch quantile that makes the
hardened batch have the weak labels' class balance, so the student is pushed to be
confident without collapsing to one class. ``a`` (the aux coefficient) is warmed up.

The two warm-up modes:

- ``faithful``: exactly the released code,
  ``coef = aux_coef * (1.0 if step_frac > warmup_frac else step_frac)``.
  During warm-up ``a`` grows as ``step_frac`` itself (at most ``warmup_frac * aux_coef``,
  i.e. 0.05 with the defaults) and then jumps to ``aux_coef``: not the linear ramp the
  paper describes, but a near-zero phase followed by a step.
- ``fixed``: the linear ramp the paper describes,
  ``coef = aux_coef * min(1.0, step_frac / warmup_frac)``.

The product loss (also from the released code) trains towards the renormalized product
``student**beta * weak**alpha``; the released code accepts a ``warmup_frac`` and never uses
it, and so do we.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F

LossFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
# The same loss over a stack of seeds: ``logits[S, n, 2], targets[S, n, 2] -> losses[S]``
# (trainer.methods.seeds trains several seeds' heads as one model with it).
BatchedLossFn = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
Warmup = Literal["faithful", "fixed"]


def batched_form(loss: LossFn) -> tuple[tuple[object, ...], BatchedLossFn] | None:
    """``(spec, batched)`` of a loss of this module: ``spec`` names it with its parameters
    (equal specs: the same loss), ``batched`` computes it for every seed at once."""
    found = getattr(loss, "batched", None)
    return found if isinstance(found, tuple) else None


def _attach(loss: LossFn, spec: tuple[object, ...], batched: BatchedLossFn) -> LossFn:
    loss.batched = (spec, batched)  # type: ignore[attr-defined]  # a function attribute, read by batched_form
    return loss


def _soft_ce_rows(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Soft cross-entropy per seed, ``[S, n, 2] -> [S]`` (mean over the rows)."""
    return -(targets * torch.log_softmax(logits, dim=-1)).sum(dim=-1).mean(dim=-1)


def _quantile_rows(values: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``torch.quantile(values[s], q[s])`` for every row ``s`` (linear interpolation)."""
    ordered = values.sort(dim=-1).values
    pos = q.clamp(0, 1) * (values.shape[-1] - 1)
    lo = pos.floor().long()
    hi = pos.ceil().long()
    v_lo = ordered.gather(-1, lo.unsqueeze(-1)).squeeze(-1)
    v_hi = ordered.gather(-1, hi.unsqueeze(-1)).squeeze(-1)
    return torch.lerp(v_lo, v_hi, pos - lo.to(pos.dtype))


def soft_ce(logits: torch.Tensor, targets: torch.Tensor, step_frac: float = 0.0) -> torch.Tensor:
    """Cross-entropy against soft (or one-hot) targets."""
    return F.cross_entropy(logits.float(), targets.float())


def _soft_ce_batched(logits: torch.Tensor, targets: torch.Tensor, step_frac: float = 0.0) -> torch.Tensor:
    return _soft_ce_rows(logits.float(), targets.float())


_attach(soft_ce, ("soft_ce",), _soft_ce_batched)


def aux_coefficient(step_frac: float, aux_coef: float, warmup_frac: float, warmup: Warmup) -> float:
    if warmup == "faithful":
        return aux_coef * (1.0 if step_frac > warmup_frac else step_frac)
    if warmup == "fixed":
        return aux_coef * (min(1.0, step_frac / warmup_frac) if warmup_frac > 0 else 1.0)
    raise ValueError(f"warmup must be 'faithful' or 'fixed', got {warmup!r}")


def harden(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """One-hot student predictions thresholded at the batch quantile of the weak class balance."""
    threshold = torch.quantile(preds[:, 0], targets[:, 1].mean())
    class0 = preds[:, 0] >= threshold
    return torch.stack([class0, ~class0], dim=1).to(preds.dtype)


def logconf(aux_coef: float = 0.5, warmup_frac: float = 0.1, warmup: Warmup = "faithful") -> LossFn:
    """The auxiliary confidence loss (defaults: the released code's)."""

    def loss(logits: torch.Tensor, targets: torch.Tensor, step_frac: float = 0.0) -> torch.Tensor:
        logits, targets = logits.float(), targets.float()
        coef = aux_coefficient(step_frac, aux_coef, warmup_frac, warmup)
        strong = harden(torch.softmax(logits, dim=-1), targets).detach()
        return F.cross_entropy(logits, targets * (1 - coef) + strong * coef)

    def batched(logits: torch.Tensor, targets: torch.Tensor, step_frac: float = 0.0) -> torch.Tensor:
        logits, targets = logits.float(), targets.float()
        coef = aux_coefficient(step_frac, aux_coef, warmup_frac, warmup)
        preds = torch.softmax(logits, dim=-1).detach()
        threshold = _quantile_rows(preds[..., 0], targets[..., 1].mean(dim=-1))
        class0 = preds[..., 0] >= threshold.unsqueeze(-1)
        strong = torch.stack([class0, ~class0], dim=-1).to(preds.dtype)
        return _soft_ce_rows(logits, targets * (1 - coef) + strong * coef)

    return _attach(loss, ("logconf", float(aux_coef), float(warmup_frac), warmup), batched)


PRODUCT_FLOOR = 1e-12


def product_target(preds: torch.Tensor, weak: torch.Tensor, alpha: float = 1.0, beta: float = 1.0) -> torch.Tensor:
    """``normalize(preds**beta * weak**alpha)`` row by row.

    A weak probability of exactly 0 stays 0: a hard label ``[0, 1]`` keeps its target on
    class 1 however sure the student is of class 0. Only a row whose whole product is 0
    (the student's and the teacher's mass on different classes, both exactly) uses the
    floored weak labels ``max(weak, 1e-12)**alpha`` instead, so that it can be
    normalized at all. (Flooring every row, as the released code does, moves a hard
    label's target: at alpha 0.5 the floor is 1e-6, which outweighs a student
    probability below it, and the target flips to the student's class.)"""
    exact = preds.pow(beta) * weak.pow(alpha)
    total = exact.sum(dim=-1, keepdim=True)
    floored = preds.pow(beta) * weak.clamp_min(PRODUCT_FLOOR).pow(alpha)
    target = torch.where(total > 0, exact, floored)
    return target / target.sum(dim=-1, keepdim=True)


def product(alpha: float = 1.0, beta: float = 1.0) -> LossFn:
    """CE towards ``normalize(student**beta * weak**alpha)`` (detached; see :func:`product_target`)."""

    def loss(logits: torch.Tensor, targets: torch.Tensor, step_frac: float = 0.0) -> torch.Tensor:
        logits, targets = logits.float(), targets.float()
        target = product_target(torch.softmax(logits, dim=-1), targets, alpha, beta).detach()
        return F.cross_entropy(logits, target)

    def batched(logits: torch.Tensor, targets: torch.Tensor, step_frac: float = 0.0) -> torch.Tensor:
        logits, targets = logits.float(), targets.float()
        target = product_target(torch.softmax(logits, dim=-1), targets, alpha, beta).detach()
        return _soft_ce_rows(logits, target)

    return _attach(loss, ("product", float(alpha), float(beta)), batched)
