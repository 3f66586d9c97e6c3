"""The built-in method library on synthetic features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.trainer.conftest import synthetic_context
from trainer import w2s
from trainer.errors import MethodError, UnknownNameError
from trainer.methods import METHODS, MethodContext, get_method, losses, run_method, train_head, validate_predictions
from trainer.methods.base import Head


@pytest.mark.parametrize("name", sorted(METHODS))
def test_each_method_returns_valid_probabilities(name: str, synthetic: tuple[MethodContext, np.ndarray]) -> None:
    ctx, gold = synthetic
    probs = run_method(name, ctx)
    assert probs.shape == (ctx.n_eval,) and probs.dtype == np.float64
    assert np.isfinite(probs).all() and (probs >= 0).all() and (probs <= 1).all()
    assert w2s.accuracy(probs, gold) > 0.7  # the classes are well separated
    again = run_method(name, synthetic_context()[0])
    assert np.allclose(probs, again), "same inputs and seed must give the same predictions"


def test_methods_document_their_parameters() -> None:
    for method in METHODS.values():
        assert method.summary, method.name
        assert {"epochs", "lr", "l2", "batch_size"} <= method.params
        for key in method.defaults:
            assert key in (method.fn.__doc__ or "") or method.name == "aux_conf_fixed", (method.name, key)


def test_unknown_method_and_unknown_params_are_clear_errors(synthetic: tuple[MethodContext, np.ndarray]) -> None:
    ctx, _ = synthetic
    with pytest.raises(UnknownNameError, match="naive_soft"):
        get_method("magic")
    ctx.params = {"aux_cof": 0.5}
    with pytest.raises(ValueError, match="aux_cof"):
        run_method("aux_conf", ctx)
    assert run_method("aux_conf", ctx, strict=False).shape == (ctx.n_eval,)


def test_seed_changes_the_head() -> None:
    ctx, _ = synthetic_context()
    a = ctx.train_head().predict_proba(ctx.eval_features)
    ctx.seed = 1
    b = ctx.train_head().predict_proba(ctx.eval_features)
    assert not np.allclose(a, b)


def test_train_head_learns_hard_targets_and_stops_on_request() -> None:
    ctx, gold = synthetic_context(noise=0.0)
    seen: list[int] = []

    def on_epoch(epoch: int, head: Head) -> bool:
        seen.append(epoch)
        return epoch == 2

    head = train_head(ctx.train_features, (ctx.weak_soft_labels >= 0.5).astype(float), epochs=50, on_epoch=on_epoch)
    assert seen == [0, 1, 2]
    assert w2s.accuracy(head.predict_proba(ctx.eval_features), gold) > 0.8


def test_validate_predictions() -> None:
    assert validate_predictions([[1, 3], [2, 2]], 2).tolist() == [0.75, 0.5]
    assert validate_predictions(np.array([[0.2], [0.4]]), 2).tolist() == [0.2, 0.4]
    for bad in ([0.5], [0.5, float("nan")], [0.5, 1.5], [[-1, 1], [1, 1]], "xy"):
        with pytest.raises(MethodError):
            validate_predictions(bad, 2)


def test_aux_warmup_faithful_vs_fixed() -> None:
    coef = losses.aux_coefficient
    # faithful (released code): ramps as step_frac itself, then jumps to aux_coef
    assert coef(0.05, 0.5, 0.1, "faithful") == pytest.approx(0.025)
    assert coef(0.1, 0.5, 0.1, "faithful") == pytest.approx(0.05)
    assert coef(0.11, 0.5, 0.1, "faithful") == pytest.approx(0.5)
    # fixed (the paper): linear ramp to aux_coef at warmup_frac
    assert coef(0.05, 0.5, 0.1, "fixed") == pytest.approx(0.25)
    assert coef(0.1, 0.5, 0.1, "fixed") == pytest.approx(0.5)
    assert coef(0.9, 0.5, 0.1, "fixed") == pytest.approx(0.5)
    with pytest.raises(ValueError):
        coef(0.5, 0.5, 0.1, "linear")  # type: ignore[arg-type]  # not a schedule: must raise


def test_harden_matches_the_weak_class_balance() -> None:
    preds = torch.softmax(torch.randn(100, 2, generator=torch.Generator().manual_seed(0)), dim=-1)
    weak = torch.zeros(100, 2)
    weak[:30, 1] = 1.0  # 30% class 1
    weak[30:, 0] = 1.0
    hard = losses.harden(preds, weak)
    assert hard.sum(dim=1).eq(1).all()
    assert abs(int(hard[:, 1].sum()) - 30) <= 1


def test_product_loss_target_is_normalized_product() -> None:
    logits = torch.tensor([[0.0, 0.0]], requires_grad=True)
    loss = losses.product()(logits, torch.tensor([[0.2, 0.8]]), 0.0)
    # student uniform -> target equals the weak label
    expected = torch.nn.functional.cross_entropy(logits.detach(), torch.tensor([[0.2, 0.8]]))
    assert float(loss.detach()) == pytest.approx(float(expected))
    loss.backward()  # the target is detached: gradients flow only through the logits
    assert logits.grad is not None


@pytest.mark.parametrize("alpha", [0.5, 1.0])
def test_product_loss_keeps_a_hard_labels_class(alpha: float) -> None:
    """A student sure of class 0 (logit gap 30) against a hard label [0, 1]: the target
    stays on class 1. The old floor (weak clamped at 1e-12 everywhere) made it
    [1e-6 * 1, 1 * 9e-14] at alpha 0.5: the target flipped to class 0."""
    logits = torch.tensor([[30.0, 0.0]], requires_grad=True)
    hard = torch.tensor([[0.0, 1.0]])
    target = losses.product_target(torch.softmax(logits.detach(), dim=-1), hard, alpha)
    assert target.tolist() == [[0.0, 1.0]]
    old = torch.softmax(logits.detach(), dim=-1) * hard.clamp_min(1e-12).pow(alpha)
    old_target = old / old.sum(dim=-1, keepdim=True)
    assert float(old_target[0, 0]) > 0.5  # what the old floor did: the target flipped to class 0
    loss = losses.product(alpha=alpha)(logits, hard, 0.0)
    loss.backward()
    assert logits.grad is not None and float(logits.grad[0, 1]) < 0  # pushed towards class 1


def test_product_loss_floors_only_a_row_whose_whole_product_is_zero() -> None:
    preds = torch.tensor([[1.0, 0.0], [0.3, 0.7]])  # row 0: the student's mass exactly on class 0
    weak = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    target = losses.product_target(preds, weak, alpha=0.5)
    assert target[0].tolist() == [1.0, 0.0]  # nothing else to normalize: the floored product
    assert target[1].tolist() == [0.0, 1.0]  # the exact product
    assert torch.isfinite(target).all()
