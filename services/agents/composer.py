"""A :class:`~services.agents.blocks.Recipe` rendered as one readable Python module.

The module has the method's hypothesis as its docstring, its recipe as data
(``RECIPE``: what another agent reads to build on it), its parameters as constants
(``DEFAULTS``, each overridable through ``ctx.params``), one function per stage, and
``run(ctx)``. Run as a script (``python method.py``) it trains on random features and
prints what it predicts, so a person can try it alone. Deterministic: the same recipe and
text give the same bytes, hence the same artifact hash.
"""

from __future__ import annotations

import ast
import math
import re
import textwrap
from typing import Any

from .blocks import Recipe, constants, render_stage

RUN = '''
def P(ctx, name):
    """A parameter: ctx.params overrides the module's default (lower-case name)."""
    return ctx.params.get(name, DEFAULTS[name])


def run(ctx):
    """P(class 1) for each eval row: prepare the features, fit the head round after round
    on the selected rows, combine the heads, blend in the parent when there is one."""
    x_train, x_eval, head = prepare(ctx)
    first_targets, from_parent = with_parent(ctx, ctx.weak_soft_labels)

    def predict(seed):
        targets, step = np.asarray(first_targets, dtype=np.float64), 0
        while True:
            rows, weights = select(ctx, targets, step)
            model = fit(ctx, x_train[rows], targets[rows], weights, seed, head)
            following = next_targets(ctx, targets, model.predict_proba(x_train), step)
            if following is None:
                return np.asarray(model.predict_proba(x_eval), dtype=np.float64)
            targets, step = np.asarray(following, dtype=np.float64), step + 1

    p = combine(ctx, predict)
    if from_parent is not None:
        w = float(P(ctx, "parent_weight"))
        p = (1.0 - w) * p + w * from_parent
    return np.clip(p, 0.0, 1.0)


if __name__ == "__main__":  # a try on random data: python this_file.py
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    weak = 1.0 / (1.0 + np.exp(-(x[:, 0] + 0.5 * rng.normal(size=300))))
    demo = MethodContext(train_features=x[:200], weak_soft_labels=weak[:200], eval_features=x[200:],
                         train_texts=[f"text {i}" for i in range(200)], eval_texts=[f"text {i}" for i in range(200, 300)])
    out = run(demo)
    print(f"{len(out)} predictions, mean {out.mean():.3f}; agreement with the weak labels "
          f"{((out > 0.5) == (weak[200:] > 0.5)).mean():.3f}")
'''


def render(recipe: Recipe) -> str:
    """The module's source for ``recipe``: a function of the recipe alone, so two agents
    who compose the same method write the same bytes, and the scorer answers the second
    as a duplicate of the first (the idea's own title and hypothesis are in its proposal)."""
    parent = recipe["parent"]
    uses_parent = parent.choice != "none"
    doc = [f"A weak-to-strong method composed from building blocks: {title_of(recipe)}.", "",
           *textwrap.wrap(f"Hypothesis: {recipe.describe()} recovers more of the gap between the weak "
                          "teacher and the strong ceiling than training on the weak labels as they are.", 88),
           "", "Recipe (one function per stage below):"]
    doc += [f"- {b.stage}: {b.label()}" for b in recipe.blocks]
    if uses_parent:
        doc += ["", f"Built on the stored method {parent.params['sha']} (loaded by its hash)."]
    doc += ["", "Written by AAR's offline researcher (services/agents/composer.py)."]
    imports = ["import dataclasses"] if parent.choice == "targets" else []
    imports += ["", "import numpy as np", "", "from trainer.methods import losses", "from trainer.methods.base import MethodContext"]
    if uses_parent:
        imports.append("from trainer.methods.stored import load")
    defaults = {k.lower(): v for k, v in constants(recipe).items()}
    body = [
        '"""' + "\n".join(doc).replace('"""', "'''").replace("\\", "/") + '\n"""',
        "",
        "from __future__ import annotations",
        "",
        *imports,
        "",
        f"RECIPE = {_literal(recipe.as_json())}",
        f"DEFAULTS = {_literal(defaults)}",
        "",
        *[("\n\n" + render_stage(b)) for b in recipe.blocks],
        RUN,
    ]
    source = re.sub(r"\n{3,}", "\n\n\n", "\n".join(body)).strip() + "\n"
    compile(source, "<composed method>", "exec")  # a renderer bug shows here, not in a sandbox
    return source


def title_of(recipe: Recipe) -> str:
    """A short name of the recipe: its blocks that are not the plain choice of their stage."""
    shown = [b.label() for b in recipe.blocks if not (b.stage == "parent" and b.choice == "none")
             and not (b.stage in ("rounds", "ensemble") and not b.params) and not (b.stage == "select" and b.choice == "all")]
    return " + ".join(shown)[:160]


def _literal(value: Any) -> str:
    """``value`` as a Python literal, its keys sorted (the same value, the same text)."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {_literal(v)}" for k, v in sorted(value.items())) + "}"
    return repr(value)


def recipe_of(source: str) -> Recipe | None:
    """The recipe of a module this composer wrote (None for any other code)."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "RECIPE"):
            try:
                recipe = Recipe.from_json(ast.literal_eval(node.value))
            except (ValueError, TypeError, KeyError, SyntaxError, AttributeError):
                return None
            return recipe if _plain(recipe) else None
    return None


SHA_OR_EMPTY = re.compile(r"(?:[0-9a-f]{64})?")


def _plain(recipe: Recipe) -> bool:
    """Another agent's ``RECIPE`` is data this researcher will render into its own code and
    titles: short numbers and words only, a parent named by a hash (anything else: not a
    recipe it builds on)."""
    for b in recipe.blocks:
        for name, value in b.params.items():
            if name == "sha":
                if not (isinstance(value, str) and SHA_OR_EMPTY.fullmatch(value)):
                    return False
            elif isinstance(value, bool) or not isinstance(value, int | float | str):
                return False
            elif isinstance(value, str) and not re.fullmatch(r"[a-z_]{1,20}", value):
                return False
            elif isinstance(value, float) and not math.isfinite(value):
                return False
    return True
