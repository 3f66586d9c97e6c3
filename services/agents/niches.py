"""The offline researcher's niches: which building blocks each direction favours, and
how it samples, mutates and extends recipes (pure, one ``random.Random``).

A niche weighs the choices of some stages (the others keep their plain choice most of
the time), in the manner of island search: each agent explores around its direction,
and meets the others through the leaderboard and their code.
"""

from __future__ import annotations

import random
from typing import Any

from .blocks import CHOICES, RANGES, STAGES, Block, Recipe

# direction key -> stage -> choice -> weight (stages left out: the plain choice, mostly)
NICHES: dict[str, dict[str, dict[str, float]]] = {
    "confidence": {"loss": {"aux_conf": 3, "product": 1, "soft": 1}, "select": {"confident": 2, "margin": 2, "all": 1}},
    "reweighting": {"select": {"margin": 3, "confident": 2, "all": 1}, "loss": {"soft": 2, "hard": 1, "product": 1}},
    "regularization": {"features": {"standardize": 2, "pca": 2, "raw": 1}, "ensemble": {"seeds": 3, "single": 1},
                       "loss": {"soft": 2, "aux_conf": 1}},
    "self_training": {"rounds": {"relabel": 3, "none": 1}, "ensemble": {"seeds": 2, "single": 1},
                      "loss": {"aux_conf": 1, "soft": 1}},
    "elicitation": {"features": {"pca": 3, "raw": 1}, "loss": {"product": 2, "cluster": 1, "aux_conf": 1}},
    "curriculum": {"select": {"curriculum": 3, "confident": 1}, "loss": {"soft": 1, "aux_conf": 1}},
    "interpretability": {"features": {"pca": 3, "hidden": 1}, "loss": {"soft": 1, "product": 1}},
}
OFF_NICHE_PLAIN = 0.8  # chance a stage outside the niche keeps its plain (first) choice
NO_TEACHER_FREE = {"cluster": {"orient": "weak"}}  # the policy never proposes a teacher-free method


def _weighted(rng: random.Random, weights: dict[str, float]) -> str:
    names = sorted(weights)
    return rng.choices(names, weights=[weights[n] for n in names])[0]


def sample_value(rng: random.Random, name: str) -> Any:
    kind, *bounds = RANGES[name]
    if kind == "choice":
        return rng.choice(bounds)
    lo, hi = bounds
    if kind == "int":
        return rng.randint(int(lo), int(hi))
    return round(rng.uniform(float(lo), float(hi)), 3)


def _block(rng: random.Random, stage: str, choice: str, keep: dict[str, Any] | None = None) -> Block:
    params: dict[str, Any] = {}
    for name in CHOICES[stage][choice]:
        if name in (keep or {}):
            params[name] = (keep or {})[name]
        elif name in RANGES and rng.random() < 0.5:
            params[name] = sample_value(rng, name)
    params.update(NO_TEACHER_FREE.get(choice, {}))
    return Block(stage, choice, params)


def sample(rng: random.Random, niche: str) -> Recipe:
    """A new recipe from ``niche``'s weights (no parent: building on code is :func:`extend`)."""
    weights = NICHES.get(niche, {})
    blocks = []
    for stage in STAGES:
        choices = [c for c in CHOICES[stage] if stage != "parent" or c == "none"]
        if stage in weights:
            choice = _weighted(rng, {c: w for c, w in weights[stage].items() if c in choices})
        elif rng.random() < OFF_NICHE_PLAIN:
            choice = choices[0]
        else:
            choice = rng.choice(choices)
        blocks.append(_block(rng, stage, choice))
    return Recipe(tuple(blocks))


def mutate(rng: random.Random, recipe: Recipe, niche: str) -> Recipe:
    """``recipe`` with one stage changed: another block of the niche, or new parameters."""
    tunable = [b for b in recipe.blocks if b.stage != "parent" and any(n in RANGES for n in b.params)]
    if tunable and rng.random() < 0.5:
        b = rng.choice(tunable)
        name = rng.choice(sorted(n for n in b.params if n in RANGES))
        return recipe.replace(Block(b.stage, b.choice, {**b.params, name: sample_value(rng, name)}))
    stage = rng.choice([s for s in STAGES if s != "parent"])
    weights = NICHES.get(niche, {}).get(stage) or {c: 1.0 for c in CHOICES[stage]}
    others = {c: w for c, w in weights.items() if c != recipe[stage].choice} or {
        c: 1.0 for c in CHOICES[stage] if c != recipe[stage].choice}
    return recipe.replace(_block(rng, stage, _weighted(rng, others)))


def extend(rng: random.Random, own: Recipe, parent_sha: str) -> Recipe:
    """``own`` built on another idea's stored module: blending its predictions with this
    method's, or training on targets its predictions help make."""
    how = rng.choice(["blend", "targets"])
    return own.replace(Block("parent", how, {"sha": parent_sha, "weight": sample_value(rng, "weight")}))
