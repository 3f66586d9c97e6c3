"""The literature's weak-to-strong methods on frozen strong features (trusted code).

Every method trains a head (:func:`trainer.methods.base.train_head`) on the strong
features of B and returns P(class 1) on the eval rows. Every method accepts the head
hyper-parameters of :class:`~trainer.methods.base.HeadConfig` (``epochs``,
``batch_size``, ``lr``, ``l2``, ``hidden``, ``standardize``) plus its own, listed in its
docstring with their defaults (also in ``METHODS[name].defaults``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer.methods import losses
from trainer.methods.base import Head, MethodContext


def _p(ctx: MethodContext, defaults: dict[str, Any]) -> dict[str, Any]:
    return {**defaults, **ctx.params}


def _hard(p: np.ndarray) -> np.ndarray:
    return (np.asarray(p) >= 0.5).astype(np.float64)


# ------------------------------------------------------------------ naive fine-tuning

NAIVE_SOFT: dict[str, Any] = {}


def naive_soft(ctx: MethodContext) -> np.ndarray:
    """Cross-entropy on the weak teacher's soft labels (the paper's naive baseline).

    No hyper-parameters beyond the head's.
    """
    return ctx.train_head().predict_proba(ctx.eval_features)


NAIVE_HARD: dict[str, Any] = {"threshold": 0.5}


def naive_hard(ctx: MethodContext) -> np.ndarray:
    """Cross-entropy on hardened weak labels: ``1[weak >= threshold]``.

    - ``threshold`` (0.5): where a weak probability becomes class 1.
    """
    p = _p(ctx, NAIVE_HARD)
    targets = (ctx.weak_soft_labels >= p["threshold"]).astype(np.float64)
    return ctx.train_head(targets=targets).predict_proba(ctx.eval_features)


# ------------------------------------------------------------------ auxiliary confidence

AUX_CONF: dict[str, Any] = {"aux_coef": 0.5, "warmup_frac": 0.1, "warmup": "faithful", "batch_size": 32}


def aux_conf(ctx: MethodContext) -> np.ndarray:
    """Auxiliary confidence loss of Burns et al. 2023 (see :mod:`trainer.methods.losses`).

    - ``aux_coef`` (0.5): final weight of the hardened student predictions (the paper
      uses 0.75 for its largest students and 0.5 otherwise);
    - ``warmup_frac`` (0.1): fraction of training steps over which ``aux_coef`` warms up;
    - ``warmup`` ("faithful"): "faithful" reproduces the released code (near-zero
      coefficient during warm-up, then a jump), "fixed" is the paper's linear ramp;
    - ``batch_size`` (32): the hardening quantile is taken per batch, as in the paper.
    """
    p = _p(ctx, AUX_CONF)
    loss = losses.logconf(float(p["aux_coef"]), float(p["warmup_frac"]), p["warmup"])
    head = ctx.train_head(loss=loss, config=ctx.head_config(batch_size=AUX_CONF["batch_size"]))
    return head.predict_proba(ctx.eval_features)


def aux_conf_fixed(ctx: MethodContext) -> np.ndarray:
    """:func:`aux_conf` with ``warmup="fixed"`` (the paper's linear warm-up) by default."""
    return aux_conf(_with_defaults(ctx, {"warmup": "fixed"}))


# ------------------------------------------------------------------ product loss

PRODUCT: dict[str, Any] = {"alpha": 1.0, "beta": 1.0}


def product(ctx: MethodContext) -> np.ndarray:
    """Product loss (released openai/weak-to-strong code): CE towards ``normalize(student**beta * weak**alpha)``.

    - ``alpha`` (1.0): weight (exponent) of the weak labels;
    - ``beta`` (1.0): weight (exponent) of the student's own predictions.
    """
    p = _p(ctx, PRODUCT)
    head = ctx.train_head(loss=losses.product(float(p["alpha"]), float(p["beta"])))
    return head.predict_proba(ctx.eval_features)


# ------------------------------------------------------------------ confidence filtering

CONF_FILTER: dict[str, Any] = {"drop_frac": 0.3, "hard": False}


def conf_filter(ctx: MethodContext) -> np.ndarray:
    """Drop the least confident weak labels, train on the rest.

    - ``drop_frac`` (0.3): fraction of B dropped, those with the smallest ``|weak - 0.5|``
      (ties broken by row order);
    - ``hard`` (False): train on hardened instead of soft labels for the kept rows.
    """
    p = _p(ctx, CONF_FILTER)
    confidence = np.abs(ctx.weak_soft_labels - 0.5)
    n_keep = max(2, int(round(ctx.n_train * (1.0 - float(p["drop_frac"])))))
    keep = np.sort(np.argsort(-confidence, kind="stable")[:n_keep])
    targets = ctx.weak_soft_labels[keep]
    if p["hard"]:
        targets = _hard(targets)
    return ctx.train_head(ctx.train_features[keep], targets).predict_proba(ctx.eval_features)


# ------------------------------------------------------------------ early stopping

EARLY_STOP: dict[str, Any] = {"val_frac": 0.2, "max_epochs": 60, "patience": 5}


def early_stop(ctx: MethodContext) -> np.ndarray:
    """Early stopping on a weak-labelled validation slice of B.

    A seeded ``val_frac`` of B is held out; the head trains on the rest for at most
    ``max_epochs`` epochs (constant schedule length: the cosine runs over ``max_epochs``)
    and the epoch whose predictions agree best with the hardened weak labels of the slice
    (ties: lower soft cross-entropy) is kept. Training stops after ``patience`` epochs
    without improvement.

    - ``val_frac`` (0.2), ``max_epochs`` (60), ``patience`` (5).
    """
    p = _p(ctx, EARLY_STOP)
    order = ctx.rng(salt=1).permutation(ctx.n_train)
    n_val = max(1, int(round(ctx.n_train * float(p["val_frac"]))))
    val, train = order[:n_val], order[n_val:]
    val_x, val_soft = ctx.train_features[val], ctx.weak_soft_labels[val]
    val_hard = _hard(val_soft)
    best: dict[str, Any] = {"score": (-1.0, 0.0), "state": None, "since": 0}

    def on_epoch(epoch: int, head: Head) -> bool:
        q = np.clip(head.predict_proba(val_x), 1e-7, 1 - 1e-7)
        agreement = float((_hard(q) == val_hard).mean())
        xent = float(-(val_soft * np.log(q) + (1 - val_soft) * np.log(1 - q)).mean())
        score = (agreement, -xent)
        if score > best["score"]:
            best.update(score=score, state={k: v.clone() for k, v in head.state_dict().items()}, since=0)
        else:
            best["since"] += 1
        return best["since"] >= int(p["patience"])

    config = ctx.head_config()
    config.epochs = int(p["max_epochs"])
    head = ctx.train_head(ctx.train_features[train], ctx.weak_soft_labels[train], config=config, on_epoch=on_epoch)
    if best["state"] is not None:
        head.load_state_dict(best["state"])
    return head.predict_proba(ctx.eval_features)


# ------------------------------------------------------------------ strong-to-strong relabelling

S2S_RELABEL: dict[str, Any] = {"folds": 2, "rounds": 1, "relabel_frac": 0.5}


def s2s_relabel(ctx: MethodContext) -> np.ndarray:
    """Strong-to-strong relabelling: the student relabels B with its own confident predictions.

    Each round, B is cut into ``folds`` seeded folds; a head trained on the other folds'
    current labels predicts each fold (cross-fitting, so no row is relabelled by a head
    that saw its label). The ``relabel_frac`` of rows where that prediction is most
    confident get its hardened prediction as their new label; the rest keep their current
    label. After ``rounds`` rounds a head trained on all of B with the new labels predicts
    the eval rows.

    - ``folds`` (2), ``rounds`` (1), ``relabel_frac`` (0.5).
    """
    p = _p(ctx, S2S_RELABEL)
    labels = ctx.weak_soft_labels.copy()
    folds = max(2, int(p["folds"]))
    for r in range(int(p["rounds"])):
        fold_of = ctx.rng(salt=100 + r).permutation(ctx.n_train) % folds
        student = np.empty(ctx.n_train)
        for k in range(folds):
            inside = fold_of == k
            head = ctx.train_head(
                ctx.train_features[~inside], labels[~inside], seed=ctx.seed + 7919 * (r * folds + k + 1)
            )
            student[inside] = head.predict_proba(ctx.train_features[inside])
        n_relabel = int(round(ctx.n_train * float(p["relabel_frac"])))
        confident = np.argsort(-np.abs(student - 0.5), kind="stable")[:n_relabel]
        labels[confident] = _hard(student[confident])
    return ctx.train_head(targets=labels).predict_proba(ctx.eval_features)


def _with_defaults(ctx: MethodContext, defaults: dict[str, Any]) -> MethodContext:
    return MethodContext(
        ctx.train_features,
        ctx.weak_soft_labels,
        ctx.eval_features,
        ctx.train_texts,
        ctx.eval_texts,
        ctx.seed,
        {**defaults, **ctx.params},
    )
