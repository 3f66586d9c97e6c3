"""Building blocks of the methods the offline researcher writes, each rendered as code.

A method is a :class:`Recipe`: one choice per stage, each with its parameters.

- ``features``: how the strong features are prepared (raw, standardised, PCA-whitened,
  or a head with one hidden layer);
- ``select``: which rows train the head and with what weight (all, the most confident
  weak labels, weights growing with the teacher's margin, a curriculum from the most
  confident rows to all of them);
- ``loss``: what the head is fitted to (soft cross-entropy, hardened labels, the
  auxiliary-confidence loss, the product loss, or a 2-means clustering of the
  features oriented by the weak labels; ``cluster`` with ``orient="none"`` ignores the
  teacher altogether, which the scorer's teacher ablation exists to catch);
- ``rounds``: relabelling rounds (strong-to-strong): the student's own predictions on
  B, mixed with the weak labels, become the next round's targets;
- ``ensemble``: one head, the mean of heads trained with different seeds, or a blend
  with the weak teacher's answers on the eval texts (``ctx.teacher``);
- ``parent``: another idea's stored module (its artifact hash), whose predictions this
  method blends with its own or uses as extra targets: code built on code.

Each stage renders a small, documented function (:func:`render_stage`); the composer
(:mod:`services.agents.composer`) puts them together into one module. Pure: the same
recipe renders the same text, so the same idea has the same artifact hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

STAGES = ("features", "select", "loss", "rounds", "ensemble", "parent")

# Each stage's choices and their parameters' defaults.
CHOICES: dict[str, dict[str, dict[str, Any]]] = {
    "features": {"raw": {}, "standardize": {}, "pca": {"k": 64}, "hidden": {"width": 64}},
    "select": {"all": {}, "confident": {"drop_frac": 0.3}, "margin": {"power": 1.0},
               "curriculum": {"start_frac": 0.5}},  # (a curriculum brings a relabelling round)
    "loss": {"soft": {}, "hard": {"threshold": 0.5}, "aux_conf": {"aux_coef": 0.5, "warmup_frac": 0.1},
             "product": {"alpha": 1.0, "beta": 1.0}, "cluster": {"orient": "weak", "temperature": 1.0}},
    "rounds": {"none": {}, "relabel": {"rounds": 1, "mix": 0.5}},
    "ensemble": {"single": {}, "seeds": {"heads": 3}, "teacher": {"weight": 0.3}},
    "parent": {"none": {}, "blend": {"sha": "", "weight": 0.5}, "targets": {"sha": "", "weight": 0.5}},
}

# Parameter ranges the search samples from: (kind, low, high) or ("choice", options...).
RANGES: dict[str, tuple[Any, ...]] = {
    "k": ("choice", 16, 32, 64, 128),
    "width": ("choice", 32, 64, 128),
    "drop_frac": ("float", 0.1, 0.6),
    "power": ("float", 0.5, 3.0),
    "start_frac": ("float", 0.2, 0.8),
    "threshold": ("float", 0.4, 0.6),
    "aux_coef": ("float", 0.2, 0.9),
    "warmup_frac": ("float", 0.0, 0.4),
    "alpha": ("float", 0.3, 2.0),
    "beta": ("float", 0.3, 2.0),
    "temperature": ("float", 0.5, 3.0),
    "rounds": ("int", 1, 2),
    "mix": ("float", 0.2, 0.8),
    "heads": ("int", 2, 4),
    "weight": ("float", 0.1, 0.6),
}


@dataclass(frozen=True)
class Block:
    stage: str
    choice: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.stage not in CHOICES:
            raise ValueError(f"no stage {self.stage!r}: {', '.join(STAGES)}")
        if self.choice not in CHOICES[self.stage]:
            raise ValueError(f"no {self.stage} block {self.choice!r}: {', '.join(CHOICES[self.stage])}")
        unknown = set(self.params) - set(CHOICES[self.stage][self.choice])
        if unknown:
            raise ValueError(f"{self.stage}={self.choice} takes no {', '.join(sorted(unknown))}")
        object.__setattr__(self, "params", {**CHOICES[self.stage][self.choice], **self.params})  # defaults filled

    def label(self) -> str:
        shown = {k: v for k, v in self.params.items() if k != "sha"}
        if self.params.get("sha"):
            shown["of"] = str(self.params["sha"])[:10]
        return self.choice + (f"({', '.join(f'{k}={_fmt(v)}' for k, v in sorted(shown.items()))})" if shown else "")


def _fmt(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


@dataclass(frozen=True)
class Recipe:
    """One choice per stage (missing stages take their first, plainest choice)."""

    blocks: tuple[Block, ...]

    def __post_init__(self) -> None:
        stages = [b.stage for b in self.blocks]
        if stages != list(STAGES):
            raise ValueError(f"a recipe has one block per stage, in order: {', '.join(STAGES)}")
        if self["select"].choice == "curriculum" and self["rounds"].choice == "none":
            # A curriculum is a schedule over rounds: the easy rows first, then all of B.
            object.__setattr__(self, "blocks", tuple(Block("rounds", "relabel", {"rounds": 1}) if b.stage == "rounds"
                                                     else b for b in self.blocks))

    @classmethod
    def of(cls, **stages: str | tuple[str, dict[str, Any]]) -> Recipe:
        """``Recipe.of(loss=("aux_conf", {"aux_coef": 0.6}), select="confident")``."""
        unknown = set(stages) - set(STAGES)
        if unknown:
            raise ValueError(f"no stage {', '.join(sorted(unknown))}: {', '.join(STAGES)}")
        blocks = []
        for stage in STAGES:
            spec = stages.get(stage, next(iter(CHOICES[stage])))
            choice, params = (spec, {}) if isinstance(spec, str) else spec
            blocks.append(Block(stage, choice, dict(params)))
        return cls(tuple(blocks))

    def __getitem__(self, stage: str) -> Block:
        return next(b for b in self.blocks if b.stage == stage)

    def replace(self, block: Block) -> Recipe:
        return Recipe(tuple(block if b.stage == block.stage else b for b in self.blocks))

    @property
    def combination(self) -> tuple[str, ...]:
        """Which block of each stage, without parameters: what novelty is counted on."""
        return tuple(f"{b.stage}={b.choice}" for b in self.blocks)

    def as_json(self) -> dict[str, Any]:
        return {b.stage: {"block": b.choice, **b.params} for b in self.blocks}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Recipe:
        stages: dict[str, tuple[str, dict[str, Any]]] = {}
        for stage, spec in data.items():
            spec = dict(spec)
            stages[stage] = (str(spec.pop("block")), spec)
        return cls.of(**stages)

    def describe(self) -> str:
        return ", ".join(f"{b.stage} {b.label()}" for b in self.blocks
                         if not (b.stage in ("rounds", "ensemble", "parent") and not b.params))

    def digest(self) -> str:
        return json.dumps(self.as_json(), sort_keys=True)


# -- rendering ------------------------------------------------------------------------------
# Each stage is one function of the module. Parameters are module constants (upper case)
# that ``ctx.params`` may override by their lower-case name, so the scorer's parameter
# grid and an agent's edits both work on the same code.


def constants(recipe: Recipe) -> dict[str, Any]:
    """The module's tunable constants: ``STAGE_PARAM`` -> value."""
    out: dict[str, Any] = {}
    for b in recipe.blocks:
        for k, v in sorted(b.params.items()):
            out[f"{b.stage}_{k}".upper()] = v
    return out


def render_stage(block: Block) -> str:
    """The function implementing ``block``, as source text."""
    return _RENDER[(block.stage, block.choice)].strip("\n") + "\n"


_RENDER: dict[tuple[str, str], str] = {
    ("features", "raw"): '''
def prepare(ctx):
    """Features: the strong backbone's, as they are."""
    return ctx.train_features, ctx.eval_features, {}
''',
    ("features", "standardize"): '''
def prepare(ctx):
    """Features: z-scored with the training rows' mean and spread."""
    return ctx.train_features, ctx.eval_features, {"standardize": True}
''',
    ("features", "pca"): '''
def prepare(ctx):
    """Features: centred, projected on the training rows' top principal directions and
    whitened (each direction scaled to unit variance)."""
    k = int(P(ctx, "features_k"))
    mean = ctx.train_features.mean(axis=0)
    centred = ctx.train_features - mean
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    k = max(1, min(k, vt.shape[0]))
    scale = s[:k] / np.sqrt(max(1, centred.shape[0] - 1)) + 1e-6
    project = vt[:k].T / scale
    return (centred @ project).astype(np.float32), ((ctx.eval_features - mean) @ project).astype(np.float32), {}
''',
    ("features", "hidden"): '''
def prepare(ctx):
    """Features: as they are, for a head with one hidden ReLU layer."""
    return ctx.train_features, ctx.eval_features, {"hidden": int(P(ctx, "features_width")), "standardize": True}
''',
    ("select", "all"): '''
def select(ctx, targets, step):
    """Rows: all of B, equally weighted."""
    return np.arange(len(targets)), None
''',
    ("select", "confident"): '''
def select(ctx, targets, step):
    """Rows: drop the share of B whose targets are least confident (closest to 0.5)."""
    margin = np.abs(np.asarray(targets) - 0.5)
    keep = max(2, int(round(len(targets) * (1.0 - float(P(ctx, "select_drop_frac"))))))
    return np.sort(np.argsort(-margin, kind="stable")[:keep]), None
''',
    ("select", "margin"): '''
def select(ctx, targets, step):
    """Rows: all of B, drawn with weight growing with the target's margin from 0.5."""
    margin = np.abs(np.asarray(targets) - 0.5) * 2.0
    return np.arange(len(targets)), (margin + 1e-3) ** float(P(ctx, "select_power"))
''',
    ("select", "curriculum"): '''
def select(ctx, targets, step):
    """Rows: a curriculum over the rounds. The first trains on the most confident share of
    B only; the next ones on all of B, with targets the first round's student helped make."""
    if step > 0:
        return np.arange(len(targets)), None
    margin = np.abs(np.asarray(targets) - 0.5)
    keep = max(2, int(round(len(targets) * float(P(ctx, "select_start_frac")))))
    return np.sort(np.argsort(-margin, kind="stable")[:keep]), None
''',
    ("loss", "soft"): '''
def fit(ctx, x, targets, weights, seed, head):
    """Loss: cross-entropy on the targets as they are (soft)."""
    return ctx.train_head(x, targets, seed=seed, sample_weight=weights, config=ctx.head_config(**head))
''',
    ("loss", "hard"): '''
def fit(ctx, x, targets, weights, seed, head):
    """Loss: cross-entropy on hardened targets (1 where the target passes the threshold)."""
    hard = (np.asarray(targets) >= float(P(ctx, "loss_threshold"))).astype(np.float64)
    return ctx.train_head(x, hard, seed=seed, sample_weight=weights, config=ctx.head_config(**head))
''',
    ("loss", "aux_conf"): '''
def fit(ctx, x, targets, weights, seed, head):
    """Loss: the auxiliary-confidence loss (Burns et al. 2023): the targets mixed with the
    student's own hardened predictions, their weight warming up over training."""
    loss = losses.logconf(float(P(ctx, "loss_aux_coef")), float(P(ctx, "loss_warmup_frac")), "fixed")
    return ctx.train_head(x, targets, seed=seed, sample_weight=weights, loss=loss,
                          config=ctx.head_config(**{"batch_size": 32, **head}))
''',
    ("loss", "product"): '''
def fit(ctx, x, targets, weights, seed, head):
    """Loss: the product loss: cross-entropy towards normalize(student**beta * target**alpha)."""
    loss = losses.product(float(P(ctx, "loss_alpha")), float(P(ctx, "loss_beta")))
    return ctx.train_head(x, targets, seed=seed, sample_weight=weights, loss=loss, config=ctx.head_config(**head))
''',
    ("loss", "cluster"): '''
class _Clusters:
    """Two clusters of the features (2-means) as a classifier: P(class 1) from the
    distance to each centroid, at a temperature."""

    def __init__(self, centroids, sign, temperature):
        self.centroids, self.sign, self.temperature = centroids, sign, temperature

    def predict_proba(self, x):
        d = ((x[:, None, :] - self.centroids[None]) ** 2).sum(-1)
        z = (d[:, 0] - d[:, 1]) / (self.temperature * (np.median(np.abs(d[:, 0] - d[:, 1])) + 1e-9))
        return 1.0 / (1.0 + np.exp(-self.sign * z))


def fit(ctx, x, targets, weights, seed, head):
    """Loss: none. 2-means clustering of the features; with orient="weak" the cluster the
    targets call class 1 more often becomes class 1, with orient="none" the cluster with
    the larger first feature does (then nothing of the teacher is used)."""
    rng = np.random.default_rng([int(seed), 17])
    x = np.asarray(x, dtype=np.float64)
    centroids = x[rng.choice(len(x), size=2, replace=False)]
    for _ in range(25):
        nearest = ((x[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
        centroids = np.stack([x[nearest == c].mean(0) if (nearest == c).any() else centroids[c] for c in (0, 1)])
    sign = 1.0 if centroids[1, 0] >= centroids[0, 0] else -1.0
    if P(ctx, "loss_orient") == "weak":
        t = np.asarray(targets)
        ones = t[nearest == 1].mean() if (nearest == 1).any() else 0.5
        zeros = t[nearest == 0].mean() if (nearest == 0).any() else 0.5
        sign = 1.0 if ones >= zeros else -1.0
    return _Clusters(centroids, sign, float(P(ctx, "loss_temperature")))
''',
    ("rounds", "none"): '''
def next_targets(ctx, targets, student, step):
    """Rounds: none; the head trains once."""
    return None
''',
    ("rounds", "relabel"): '''
def next_targets(ctx, targets, student, step):
    """Rounds: relabelling (strong-to-strong). After each round but the last, the next
    targets are the student's predictions on B mixed with the weak labels."""
    if step >= int(P(ctx, "rounds_rounds")):
        return None
    mix = float(P(ctx, "rounds_mix"))
    return mix * student + (1.0 - mix) * ctx.weak_soft_labels
''',
    ("ensemble", "single"): '''
def combine(ctx, predict):
    """Ensemble: one head, this run's seed."""
    return predict(ctx.seed)
''',
    ("ensemble", "seeds"): '''
def combine(ctx, predict):
    """Ensemble: the mean of heads trained from different seeds (derived from the run's)."""
    heads = max(1, int(P(ctx, "ensemble_heads")))
    return np.mean([predict(ctx.seed * 1009 + i) for i in range(heads)], axis=0)
''',
    ("ensemble", "teacher"): '''
def combine(ctx, predict):
    """Ensemble: the student blended with the weak teacher's own answers on the eval texts
    (ctx.teacher); without a teacher to ask, the student alone."""
    student = predict(ctx.seed)
    if not ctx.eval_texts:
        return student
    try:
        teacher = ctx.teacher(ctx.eval_texts)
    except RuntimeError:
        return student
    w = float(P(ctx, "ensemble_weight"))
    return (1.0 - w) * student + w * teacher
''',
    ("parent", "none"): '''
def with_parent(ctx, targets):
    """Builds on: no other idea's code."""
    return targets, None
''',
    ("parent", "blend"): '''
def with_parent(ctx, targets):
    """Builds on another idea's code: its predictions on the eval rows are blended with
    this method's at the end."""
    parent = load(P(ctx, "parent_sha"))
    return targets, np.asarray(parent.run(ctx), dtype=np.float64).reshape(-1)
''',
    ("parent", "targets"): '''
def with_parent(ctx, targets):
    """Builds on another idea's code: its predictions on B itself (a context whose eval
    rows are the training rows) are mixed into the targets this method trains on."""
    parent = load(P(ctx, "parent_sha"))
    on_b = dataclasses.replace(ctx, eval_features=ctx.train_features, eval_texts=list(ctx.train_texts))
    theirs = np.asarray(parent.run(on_b), dtype=np.float64).reshape(-1)
    w = float(P(ctx, "parent_weight"))
    return (1.0 - w) * np.asarray(targets) + w * theirs, None
''',
}

assert set(_RENDER) == {(s, c) for s, choices in CHOICES.items() for c in choices}, "a block without code"
