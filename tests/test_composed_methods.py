"""Methods the offline researcher composes from building blocks: every block renders to
code that compiles, runs in the sandbox on a tiny dataset and learns something; a
module reads back as its recipe; a module runs alone as a script."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from services.agents.blocks import CHOICES, Recipe
from services.agents.composer import recipe_of, render
from tests.trainer.conftest import synthetic_context
from trainer import sandbox
from trainer.sandbox import run_untrusted

needs_bwrap = pytest.mark.skipif(
    sandbox.sandbox_problem() is not None, reason=f"sandbox unavailable: {sandbox.sandbox_problem()}"
)


def _sha(code: str) -> str:
    return hashlib.sha256(code.encode()).hexdigest()


BASE = render(Recipe.of())


def one_block_each() -> dict[str, str]:
    """``stage=choice`` -> the module of a recipe with that block (the others plain)."""
    out = {}
    for stage, choices in CHOICES.items():
        for choice, params in choices.items():
            p = {**params, **({"sha": _sha(BASE)} if "sha" in params else {})}
            out[f"{stage}={choice}"] = render(Recipe.of(**{stage: (choice, p)}))
    return out


def test_recipes_render_the_same_text_and_read_back() -> None:
    modules = one_block_each()
    assert len(modules) == sum(map(len, CHOICES.values()))
    assert one_block_each() == modules  # the same recipe, the same bytes: the same artifact hash
    # one module per distinct recipe (each stage's first block is the plain recipe's own)
    assert len(set(modules.values())) == len(modules) - (len(CHOICES) - 1)
    for name, code in modules.items():
        recipe = recipe_of(code)
        assert recipe is not None and f"{name}" in recipe.combination, name
        assert render(recipe) == code
    assert recipe_of("def run(ctx):\n    return ctx.weak_soft_labels\n") is None
    assert recipe_of("RECIPE = {'loss': {'block': 'no such block'}}\n") is None
    # another agent's RECIPE is untrusted data: nothing but short numbers and words, a parent by its hash
    for evil in ({"loss": {"block": "hard", "threshold": "x" * 5000}},  # a title or hypothesis too long to propose
                 {"loss": {"block": "hard", "threshold": [1, 2]}},
                 {"loss": {"block": "hard", "threshold": float("inf")}},
                 {"parent": {"block": "blend", "sha": 'a"""\nimport os', "weight": 0.5}}):
        assert recipe_of(f"RECIPE = {evil!r}\n".replace("inf", "1e999")) is None, evil
    with pytest.raises(ValueError, match="no loss block 'magic'"):
        Recipe.of(loss="magic")
    with pytest.raises(ValueError, match="takes no drop_frac"):
        Recipe.of(loss=("soft", {"drop_frac": 0.2}))


@needs_bwrap
def test_every_block_runs_in_the_sandbox_and_learns() -> None:
    """One sandbox job: a dispatcher runs the block whose index is the context's seed."""
    ctx, truth = synthetic_context(n_train=160, n_eval=60)
    modules = one_block_each()
    names = list(modules)
    shas = [_sha(modules[n]) for n in names]
    dispatcher = (
        "import numpy as np\nfrom trainer.methods.stored import load\n"
        f"SHAS = {shas!r}\n"
        "def run(ctx):\n"
        "    return load(SHAS[ctx.seed]).run(ctx)\n"
    )
    ctxs = [dataclasses.replace(ctx, seed=i) for i in range(len(names))]
    asked: list[int] = []

    def teacher(seed: int, texts: list[str]) -> list[float]:
        asked.append(len(texts))
        return [0.5] * len(texts)

    result = run_untrusted(dispatcher, ctxs, stored={**{s: modules[n] for s, n in zip(shas, names, strict=True)},
                                                      _sha(BASE): BASE}, teacher=teacher)
    assert result.ok, result.stderr[-3000:]
    assert len(result.seed_predictions) == len(names)
    for name, p in zip(names, result.seed_predictions, strict=True):
        accuracy = float(((np.asarray(p) > 0.5) == (truth == 1)).mean())
        assert accuracy > 0.65, (name, accuracy)  # every block learns the classes (chance: 0.5)
    assert asked == [ctx.n_eval]  # the teacher block asked about the eval texts, once


def test_a_module_runs_alone_as_a_script(tmp_path: Path) -> None:
    code = render(Recipe.of(features=("pca", {"k": 8}), select="margin", loss="aux_conf",
                            rounds=("relabel", {"rounds": 1}), ensemble=("seeds", {"heads": 2})))
    path = tmp_path / "method.py"
    path.write_text(code)
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent, check=False)
    assert done.returncode == 0, done.stderr
    assert "100 predictions" in done.stdout and "agreement with the weak labels" in done.stdout


@needs_bwrap
def test_a_composed_method_that_ignores_the_teacher_is_flagged_by_the_ablation_check() -> None:
    """The scorer's teacher ablation (services/scorer/ablation.py) on sandboxed runs: a pure
    2-means clustering of the features keeps its whole gain when the weak labels are
    shuffled; the same recipe trained on the weak labels loses it."""
    from services.scorer.ablation import ignores_teacher
    from services.scorer.config import ScoringConfig

    ctx, truth = synthetic_context(n_train=300, n_eval=200, noise=0.3)
    shuffled = dataclasses.replace(ctx, weak_soft_labels=np.random.default_rng(1).permutation(ctx.weak_soft_labels))
    train_truth = np.random.default_rng(0).integers(0, 2, 500)[:300]  # synthetic_context's draw of the labels
    weak_accuracy = float(((ctx.weak_soft_labels > 0.5) == (train_truth == 1)).mean())
    threshold = ScoringConfig().ablation_retained
    flagged = {}
    for name, recipe in (("pure clustering", Recipe.of(loss=("cluster", {"orient": "none"}))),
                         ("trained on the weak labels", Recipe.of())):
        code = render(recipe)
        runs = run_untrusted(code, [ctx, shuffled])
        assert runs.ok, runs.stderr[-2000:]
        acc, acc_shuffled = (float(((np.asarray(p) > 0.5) == (truth == 1)).mean()) for p in runs.seed_predictions)
        assert acc > weak_accuracy, (name, acc, weak_accuracy)  # each beats its weak floor on the real labels
        flagged[name] = ignores_teacher(acc, weak_accuracy, acc_shuffled, threshold)
    assert flagged == {"pure clustering": True, "trained on the weak labels": False}
