"""Seeds trained as one batched model give what one-by-one training gives."""

from __future__ import annotations

import threading
from dataclasses import replace

import numpy as np
import pytest

from tests.trainer.conftest import synthetic_context
from trainer.methods import METHODS, MethodContext, run_method
from trainer.methods import seeds as seeds_mod
from trainer.methods.seeds import run_seeds


def _ctxs(k: int = 3, **params: object) -> list[MethodContext]:
    base = synthetic_context(n_train=160, n_eval=60)[0]
    rng = np.random.default_rng(5)
    return [replace(base, seed=s, weak_soft_labels=np.clip(base.weak_soft_labels + rng.normal(0, 0.05, 160), 0, 1),
                    params={**base.params, **params}) for s in range(k)]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_builtin_gives_the_same_predictions_batched(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    ctxs = _ctxs()
    alone = [run_method(name, c) for c in ctxs]
    batched_sizes: list[int] = []
    real = seeds_mod.train_batched

    def spy(calls: list[seeds_mod.HeadCall]) -> list:
        batched_sizes.append(len(calls))
        return real(calls)

    monkeypatch.setattr(seeds_mod, "train_batched", spy)
    together = run_seeds(lambda c: run_method(name, c), ctxs)
    for a, b in zip(alone, together, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)
    if name != "early_stop":  # early stopping watches every epoch: trained one by one
        assert 3 in batched_sizes, batched_sizes  # the three seeds really shared one model


def test_seeds_differ_and_the_order_is_kept() -> None:
    ctxs = _ctxs(4)
    out = run_seeds(lambda c: (c.seed, run_method("naive_soft", c)), ctxs)
    assert [s for s, _ in out] == [0, 1, 2, 3]
    assert not np.allclose(out[0][1], out[1][1])


def test_heads_of_different_shapes_are_grouped_apart() -> None:
    ctxs = _ctxs(3)

    def fn(c: MethodContext) -> np.ndarray:
        keep = slice(0, 100 + 20 * c.seed)  # a different number of rows per seed
        return c.train_head(c.train_features[keep], c.weak_soft_labels[keep]).predict_proba(c.eval_features)

    alone = [fn(c) for c in ctxs]
    for a, b in zip(alone, run_seeds(fn, ctxs), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_a_failing_seed_raises_and_nothing_hangs() -> None:
    ctxs = _ctxs(3)

    def fn(c: MethodContext) -> np.ndarray:
        if c.seed == 1:
            raise RuntimeError("seed 1 breaks before training")
        return run_method("naive_soft", c)

    done = threading.Event()
    errors: list[BaseException] = []

    def call() -> None:
        try:
            run_seeds(fn, ctxs)
        except BaseException as exc:  # noqa: BLE001 - inspected below
            errors.append(exc)
        done.set()

    threading.Thread(target=call, daemon=True).start()
    assert done.wait(60), "run_seeds hung after a seed failed"
    assert len(errors) == 1 and "seed 1 breaks" in str(errors[0])


def test_a_loss_that_raises_fails_every_seed_of_its_group() -> None:
    ctxs = _ctxs(2)

    def bad(logits, targets, frac):  # type: ignore[no-untyped-def]  # a LossFn
        raise ValueError("bad loss")

    with pytest.raises(ValueError, match="bad loss"):
        run_seeds(lambda c: c.train_head(loss=bad), ctxs)
