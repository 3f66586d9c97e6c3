"""The offline researcher writes methods as code: mostly code after its first idea,
deterministic for a seed, novel block combinations first, never the same recipe twice,
building on another agent's code; its cheap workspace tests drop bad candidates."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from services.agents import cheap_tests
from services.agents.assignment import Assignment
from services.agents.blocks import Recipe
from services.agents.composer import recipe_of, render
from services.agents.offline import KnownCode, OfflinePolicy
from trainer import sandbox

THEIRS = Recipe.of(loss=("aux_conf", {"aux_coef": 0.6}), select="confident")
THEIR_CODE = render(THEIRS)
THEIR_SHA = hashlib.sha256(THEIR_CODE.encode()).hexdigest()
BOARD = [
    {"idea_id": "i-code", "agent_id": "agent-2", "method": f"code:{THEIR_SHA[:12]}", "params": {}, "pgr": 0.7,
     "flags": []},
    {"idea_id": "i-1", "agent_id": "agent-2", "method": "aux_conf", "params": {"lr": 0.02}, "pgr": 0.61, "flags": []},
    {"idea_id": "i-bad", "agent_id": "agent-3", "method": "code:ffffffffffff", "params": {}, "pgr": 0.95,
     "flags": ["teacher_ablation"]},
]
KNOWN = {"i-code": KnownCode(THEIR_SHA, THEIRS), "i-bad": KnownCode("f" * 64, Recipe.of(loss="hard"))}
POSTS = [{"post_id": "p-9", "idea_ids": ["i-code"]}]


def _policy(seed: int = 0, direction: str = "confidence") -> OfflinePolicy:
    return OfflinePolicy(Assignment(session_id="s", agent_id="agent-1", direction="x", direction_key=direction,
                                    seed=seed))


def _run(seed: int, rounds: int = 20, direction: str = "confidence") -> list[tuple]:
    policy = _policy(seed, direction)
    out = []
    for r in range(rounds):
        p = policy.choose(BOARD if r else [], POSTS if r else [], KNOWN if r else {})
        out.append((p.method, tuple(sorted(p.params.items())), p.recipe.digest() if p.recipe else None,
                    p.parent_ideas, p.cites_posts))
    return out


def test_the_same_observations_and_seed_give_the_same_proposals() -> None:
    assert _run(7) == _run(7)
    assert _run(7) != _run(8)


def test_after_its_first_idea_it_mostly_writes_code_and_never_the_same_recipe_twice() -> None:
    for direction in ("confidence", "self_training", "elicitation", "curriculum"):
        ideas = _run(3, rounds=20, direction=direction)
        assert ideas[0][2] is None  # the first: the direction's favourite built-in, a reference
        code = [i for i in ideas if i[2] is not None]
        assert len(code) >= 14, (direction, len(code))
        assert len({i[2] for i in code}) == len(code), direction  # no recipe proposed twice


def test_it_builds_on_the_best_unflagged_code_of_another_agent() -> None:
    policy = _policy(5)
    policy.choose([], [])
    built = []
    for _ in range(30):
        p = policy.choose(BOARD, POSTS, KNOWN)
        if p.recipe is not None and p.parent_ideas:
            built.append(p)
    assert built, "never built on the other agent's code in 30 rounds"
    assert all(p.parent_ideas == ("i-code",) and p.cites_posts == ("p-9",) for p in built)  # i-bad is flagged
    assert all(p.builds_on_agent == "agent-2" for p in built)
    imports = [p for p in built if p.recipe is not None and p.recipe["parent"].choice != "none"]
    assert imports and all(p.recipe is not None and p.recipe["parent"].params["sha"] == THEIR_SHA for p in imports)
    code = render(imports[0].recipe)  # type: ignore[arg-type]
    assert 'load(P(ctx, "parent_sha"))' in code and THEIR_SHA in code  # the trainer provides it by this hash
    assert recipe_of(code) == imports[0].recipe


def test_exploration_prefers_block_combinations_not_tried_yet() -> None:
    policy = _policy(11, "regularization")
    policy.choose([], [])
    seen = []
    for _ in range(12):
        p = policy.choose([], [], {})
        assert p.recipe is not None or p.method != "code"
        if p.recipe is not None:
            seen.append(p.recipe.combination)
    # the first few explorations each try a combination nobody had
    assert len(set(seen[:6])) == 6, seen[:6]
    assert sum(policy.tried.values()) >= len(seen)


def test_a_dropped_candidate_is_not_proposed_again() -> None:
    policy = _policy(2)
    policy.choose([], [])
    first = policy.choose([], [], {})
    while first.recipe is None:
        first = policy.choose([], [], {})
    policy.dropped(first)
    assert first.recipe is not None
    later = [policy.choose([], [], {}) for _ in range(25)]
    assert all(p.recipe is None or p.recipe.digest() != first.recipe.digest() for p in later)


def test_the_verdict_drops_what_fails_and_says_why() -> None:
    good = {"status": "ok", "result": {"finite": True, "agreement": 0.82, "stability": 0.97, "mean_p": 0.52,
                                       "mean_weak": 0.5, "rows": 50}}
    assert cheap_tests.verdict(good).ok
    for change, why in (({"agreement": 0.51}, "agrees with the held-back weak labels on 0.51"),
                        ({"stability": 0.6}, "two seeds agree on 0.60"),
                        ({"mean_p": 0.95}, "collapses towards one class"),
                        ({"finite": False}, "NaN")):
        v = cheap_tests.verdict({"status": "ok", "result": {**good["result"], **change}})  # type: ignore[dict-item]
        assert not v.ok and why in v.reason, (change, v.reason)
    crashed = cheap_tests.verdict({"status": "failed", "error": "MethodError", "stderr": "x\nValueError: boom"})
    assert not crashed.ok and "ValueError: boom" in crashed.reason


@pytest.mark.skipif(sandbox.sandbox_problem() is not None, reason=f"no sandbox: {sandbox.sandbox_problem()}")
def test_the_cheap_tests_run_in_the_workspace_sandbox_and_tell_good_from_bad() -> None:
    from trainer.workspace import WorkspaceSandbox, workspace_inputs

    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 16)).astype(np.float32)
    weak = 1.0 / (1.0 + np.exp(-2.0 * x[:, 0]))
    texts = [f"t{i}" for i in range(300)]
    good = render(Recipe.of(select="margin"))
    noisy = ("def run(ctx):\n"  # a quarter of its answers flipped at random, differently for each seed
             "    p = ctx.train_head().predict_proba(ctx.eval_features)\n"
             "    flip = ctx.rng(5).random(ctx.n_eval) < 0.25\n"
             "    p[flip] = 1.0 - p[flip]\n"
             "    return p\n")
    collapsed = ("import numpy as np\n"  # the right side of 0.5, but far too sure of class 1
                 "def run(ctx):\n"
                 "    p = ctx.train_head().predict_proba(ctx.eval_features)\n"
                 "    return np.where(p > 0.5, 0.99, 0.45)\n")
    stored = {hashlib.sha256(c.encode()).hexdigest(): c for c in (good, noisy, collapsed)}
    inputs = workspace_inputs(x, texts, weak, x[:50], texts[:50])
    verdicts = {}
    for sha, code in stored.items():  # (a workspace sandbox runs one script)
        result = WorkspaceSandbox(inputs, stored=stored).run(cheap_tests.script(sha))
        outcome = {"status": "ok" if result.ok else "failed", "error": result.error, "stderr": result.stderr,
                   "result": json.loads(result.value_json) if result.value_json else None}
        verdicts[code] = cheap_tests.verdict(outcome)
    assert verdicts[good].ok, verdicts[good]
    assert not verdicts[noisy].ok and "two seeds agree" in verdicts[noisy].reason
    assert not verdicts[collapsed].ok and "collapses" in verdicts[collapsed].reason


class _Tools:
    """The toolbox's surface the researcher uses: answers per tool, calls recorded."""

    def __init__(self, answers: dict[str, dict], end_during: str | None = None) -> None:
        import asyncio

        self.answers, self.end_during = answers, end_during
        self.session_over = asyncio.Event()
        self.calls: list[tuple[str, dict]] = []

    async def call(self, tool: str, arguments: dict | None = None) -> dict:
        self.calls.append((tool, dict(arguments or {})))
        if tool == self.end_during:
            self.session_over.set()
        return self.answers.get(tool, {})

    def notes(self) -> list[str]:
        return [a["text"] for t, a in self.calls if t == "note"]


async def test_only_a_candidate_that_failed_its_tests_is_dropped() -> None:
    from services.agents.cheap_tests import DROPPED
    from services.agents.offline import _write_and_test

    policy = _policy(4)
    policy.choose([], [])
    proposal = policy.choose([], [], {})
    stored = {"write_method": {"method_artifact": "a" * 64}}
    # (a run's outcome carries "error": None when it finished: the run_code tool's shape)
    bad = {"status": "ok", "error": None, "result": {"finite": True, "agreement": 0.4, "stability": 1.0,
                                                     "mean_p": 0.5, "mean_weak": 0.5, "rows": 10}}
    tools = _Tools({**stored, "run_code": bad})
    assert await _write_and_test(tools, proposal, policy, skip_tests=False) == (None, False)  # type: ignore[arg-type]
    assert tools.notes()[0].startswith(f"{DROPPED}: ") and "agrees with the held-back weak labels" in tools.notes()[0]
    # the session ended while the run waited: neither dropped nor proposed
    over = _Tools({**stored, "run_code": {"error": "the session is over: the workspace is closed"}},
                  end_during="run_code")
    assert await _write_and_test(over, proposal, policy, skip_tests=False) == (None, False)  # type: ignore[arg-type]
    assert over.notes() == []
    # the tool refused the run (not the candidate's fault): proposed untested, counted as a failed run
    refused = _Tools({**stored, "run_code": {"error": "code of 300,000 bytes is over the limit"}})
    assert await _write_and_test(refused, proposal, policy, skip_tests=False) == ("a" * 64, True)  # type: ignore[arg-type]
    assert not any(n.startswith(DROPPED) for n in refused.notes())
    good = _Tools({**stored, "run_code": {**bad, "result": {**bad["result"], "agreement": 0.8}}})  # type: ignore[dict-item]
    assert await _write_and_test(good, proposal, policy, skip_tests=False) == ("a" * 64, False)  # type: ignore[arg-type]
    assert good.notes()[0].startswith("cheap tests passed: ")
