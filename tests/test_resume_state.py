"""What a resumed session goes on from, without a stack: the progress and the agents'
histories rebuilt from a real log file, the agents restoring them, the orchestrator's
bookkeeping, and a service that cannot hang after its supervisor died."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.audit import Param
from core.paths import AarHome
from schemas import Event, Payload
from schemas.agent import AgentLlmCalled, AgentToolCalled
from schemas.experiment import ExperimentFailed, ExperimentRequested, Purpose, Split
from schemas.idea import IdeaProposed
from schemas.scoring import ScorePublished, ScoreWithheld
from schemas.session import EndReason, SessionEnded, SessionResumed, SessionStarted
from services.agents.assignment import AgentHistory, Assignment, PastIdea
from services.agents.claude import first_message
from services.agents.offline import OfflinePolicy
from services.agents.pricing import cost_usd
from services.orchestrator import resume
from services.orchestrator.config import SessionConfig
from services.orchestrator.service import Orchestrator
from services.recorder.audit import FileAudit
from services.recorder.store import EventStore, Recorded

from .factories import sample_payload

SID = "s-resume"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def _ev(payload: Payload, seconds: float, source: str = "scorer") -> Event[Any]:
    return Event.create(payload, session_id=SID, source=source, time=T0 + timedelta(seconds=seconds))


def _score(exp: str, idea: str, *, pgr: float = 0.5, split: Split = Split.DEV, purpose: Purpose = Purpose.SCORE,
           withheld: bool = False) -> ScorePublished:
    cls = ScoreWithheld if withheld else ScorePublished
    return cls(experiment_id=exp, idea_id=idea, agent_id="agent-1", dataset="rotten_tomatoes", split=split,
               purpose=purpose, n_seeds=2, accuracy=0.8, accuracy_stderr=0.01, weak_accuracy=0.75,
               ceiling_accuracy=0.85, pgr=pgr, pgr_stderr=0.1)


def _request(exp: str, idea: str | None, agent: str | None = "agent-1") -> ExperimentRequested:
    base = sample_payload(ExperimentRequested.event_type)
    assert isinstance(base, ExperimentRequested)
    return base.model_copy(update={"experiment_id": exp, "idea_id": idea, "agent_id": agent})


def _idea(idea: str, agent: str = "agent-1", method: str = "aux_conf") -> IdeaProposed:
    return IdeaProposed(idea_id=idea, agent_id=agent, title=f"try {method}", hypothesis="h", builtin_method=method,
                        params={"lr": 0.01})


def _tool(agent: str, tool: str, args: dict[str, Any], summary: str = "{}", ok: bool = True) -> AgentToolCalled:
    return AgentToolCalled(agent_id=agent, tool=tool, arguments=args, ok=ok, result_summary=summary,
                           error=None if ok else "bad input")


def _llm(agent: str, claimed: float, tokens: int) -> AgentLlmCalled:
    return AgentLlmCalled(agent_id=agent, model="claude-sonnet-4-6", input_tokens=tokens, output_tokens=0,
                          cost_usd=claimed, latency_s=1.0)


@pytest.fixture
def log(home: AarHome) -> Iterator[FileAudit]:
    """Two runs of one session: the first (0-100 s) killed with work in flight, the second
    (a day later, 86400-86460 s) interrupted by Ctrl-C; a third run would resume from here."""
    started = sample_payload(SessionStarted.event_type)
    events = [
        _ev(started, 0, "orchestrator"),
        _ev(_idea("i-1"), 5, "agent-1"), _ev(_request("x-1", "i-1"), 6), _ev(_score("x-1", "i-1", pgr=0.4), 20),
        _ev(_idea("i-2"), 21, "agent-1"), _ev(_request("x-2", "i-2"), 22),  # in flight
        _ev(_idea("i-9", agent="agent-2", method="naive_soft"), 23, "agent-2"),
        _ev(_request("x-9", "i-9", "agent-2"), 24),
        _ev(ExperimentFailed(experiment_id="x-9", trainer_id="trainer-1", error_class="ValueError",
                             message="shapes", retryable=True), 30, "trainer-1"),  # retried: still in flight
        _ev(_idea("i-8", agent="agent-2"), 25, "agent-2"), _ev(_request("x-8", "i-8", "agent-2"), 26),
        _ev(ExperimentFailed(experiment_id="x-8", trainer_id="trainer-1", error_class="SandboxViolation",
                             message="socket"), 27, "trainer-1"),  # final
        # a withheld score is never an agent's to see, whatever its split says
        _ev(_score("x-h", "i-9", pgr=0.99, withheld=True).model_copy(update={"agent_id": "agent-2"}), 28),
        _ev(_request("x-t", "i-1"), 31), _ev(_score("x-t", "i-1", split=Split.TEST, withheld=True), 40),
        _ev(_tool("agent-1", "note", {"text": "aux_conf looks good"}), 41, "agent-1"),
        _ev(_tool("agent-1", "leaderboard", {"limit": 5}, '{"entries": 1}'), 42, "agent-1"),
        _ev(_tool("agent-1", "propose_idea", {"title": "x" * 500}, ok=False), 43, "agent-1"),
        _ev(_llm("agent-1", 1e9, 1000), 50, "agent-1"),  # claims a fortune: charged the table's price
        _ev(_llm("agent-2", 0.0, 2000), 60, "agent-2"),  # claims nothing: charged nothing
        _ev(_tool("agent-2", "note", {"text": "naive first"}), 100, "agent-2"),
        # -- killed; resumed a day later --
        _ev(SessionResumed(resume=1, elapsed_s=100.0, experiments=1, in_flight=["x-2", "x-9"]), 86400,
            "orchestrator"),
        _ev(_score("x-2", "i-2", pgr=0.6), 86430),
        _ev(SessionEnded(reason=EndReason.INTERRUPTED, experiments=2), 86460, "orchestrator"),
        # what the third run's services publish before its orchestrator reads the log: not history
        _ev(_tool("agent-1", "note", {"text": "from the new run"}), 90000, "agent-1"),
    ]
    store = EventStore(home.events_db)
    store.record([Recorded(e, i) for i, e in enumerate(events, 1)])
    store.close()
    audit = FileAudit.open(home.events_db)
    yield audit
    audit.close()


def _ask(audit: FileAudit) -> resume.Ask:
    async def ask(sql: str, params: Sequence[Param]) -> list[list[Any]]:
        result = audit.query(sql, params)
        assert not result.truncated
        return [list(r) for r in result.rows]

    return ask


BEFORE_US = int((T0 + timedelta(seconds=89000)).timestamp() * 1e6)


async def test_progress_counts_each_run_and_not_the_gap_between(log: FileAudit) -> None:
    done = await resume.progress(_ask(log), SID, BEFORE_US)
    assert done.resumes == 1 and done.previous_end is EndReason.INTERRUPTED
    assert done.elapsed_s == pytest.approx(100.0 + 60.0)  # two runs, not the day between them
    assert done.scored == {"x-1", "x-2"}  # dev scores only (x-t is a test score)
    assert done.in_flight == {"x-9"}  # a retryable failure is not the end of it
    assert done.settled == {"x-1", "x-2", "x-t", "x-8", "x-h"}
    assert done.spent["agent-1"] == pytest.approx(cost_usd("claude-sonnet-4-6", 1000, 0))
    assert done.spent["agent-2"] == 0.0


async def test_an_agent_history_has_its_ideas_scores_notes_spend_and_turns(log: FileAudit) -> None:
    history = await resume.agent_history(_ask(log), SID, "agent-1", BEFORE_US)
    assert history is not None
    assert [(i.idea_id, i.status, i.pgr) for i in history.ideas] == [("i-1", "scored", 0.4), ("i-2", "scored", 0.6)]
    assert history.ideas[0].method == "aux_conf" and history.ideas[0].params == {"lr": 0.01}
    assert history.notes == ["aux_conf looks good"]  # not the new run's note
    assert history.resumes == 1 and history.tool_calls == 3
    assert history.cost_usd == pytest.approx(cost_usd("claude-sonnet-4-6", 1000, 0))
    lines = history.summary.splitlines()
    assert lines[0].startswith("[+0:00:00] note(text=") and "aux_conf looks good" in lines[0]
    assert lines[1] == '[+0:00:01] leaderboard(limit=5) -> {"entries": 1}'
    assert "error: bad input" in lines[2] and len(lines[2]) < 200  # a long argument is cut short
    other = await resume.agent_history(_ask(log), SID, "agent-2", BEFORE_US)
    assert other is not None and [(i.idea_id, i.status) for i in other.ideas] == [("i-9", "pending"), ("i-8", "failed")]
    assert other.ideas[1].error == "SandboxViolation: socket"
    assert await resume.agent_history(_ask(log), SID, "agent-7", BEFORE_US) is None


def test_a_long_history_keeps_the_newest_turns() -> None:
    calls = [[i * 1_000_000, "leaderboard", "true", {"limit": i}, "{}", None] for i in range(1000)]
    text = resume.summarize_turns(calls, limit=2000)
    lines = text.splitlines()
    assert lines[0].startswith("(") and "older tool calls not shown" in lines[0]
    assert lines[-1].endswith("leaderboard(limit=999) -> {}") and len(text) <= 2000 + len(lines[0]) + 1
    assert int(lines[0][1:].split()[0]) + len(lines) - 1 == 1000


def _assignment(history: AgentHistory | None = None, **kw: Any) -> Assignment:
    return Assignment(session_id=SID, agent_id="agent-1", direction="confidence", direction_key="confidence",
                      history=history, **kw)


HISTORY = AgentHistory(resumes=1, cost_usd=0.25, tool_calls=7, notes=["keep lr low"],
                       summary="[+0:00:00] leaderboard(limit=5) -> {}",
                       ideas=[PastIdea(idea_id="i-1", method="aux_conf", params={"lr": 0.01}, status="scored",
                                       pgr=0.41, pgr_stderr=0.1, accuracy=0.8),
                              PastIdea(idea_id="i-2", method="conf_filter", status="pending")])


def test_the_offline_policy_goes_on_rather_than_starting_over() -> None:
    fresh, resumed, again = OfflinePolicy(_assignment()), OfflinePolicy(_assignment(HISTORY)), \
        OfflinePolicy(_assignment(HISTORY))
    assert fresh.rounds == 0 and resumed.rounds == 2
    board: list[dict[str, Any]] = []
    first = fresh.choose(board, [])
    assert first.params == {}  # a fresh agent starts from its direction's defaults
    picks = [resumed.choose(board, []) for _ in range(5)]
    assert all(p.params or p.recipe is not None for p in picks), "a resumed agent repeated its first, default idea"
    assert picks == [again.choose(board, []) for _ in range(5)]  # the same history, the same proposals


def test_claude_resumes_from_a_summary_of_its_past() -> None:
    text = first_message(_assignment(HISTORY))
    assert "resumed" in text and "i-1 aux_conf" in text and "PGR 0.410" in text
    assert "not scored yet (re-queued)" in text and "keep lr low" in text and "leaderboard(limit=5)" in text
    assert "$0.2500" in text
    assert first_message(_assignment()) == "The session has started. You act only through the tools."


class _Msg:
    def __init__(self, event: Event[Any]) -> None:
        self.data = event.to_json()
        self.headers = {"Aar-Publisher": event.source}
        self.subject = event.subject


async def test_a_request_published_again_for_a_settled_experiment_is_not_outstanding() -> None:
    """A restarted scorer re-publishes what it requested (derived ids: stored once); the
    orchestrator's drain must not wait for a run that will never happen again."""
    orch = Orchestrator(None, SessionConfig(session_id=SID, name="t"))  # type: ignore[arg-type]  # no bus: bookkeeping only
    for payload in (_request("x-1", "i-1"), _score("x-1", "i-1"), _request("x-1", "i-1"), _request("x-2", "i-2")):
        await orch._on_event(_Msg(_ev(payload, 1)))  # type: ignore[arg-type]  # the fields it reads
    assert orch.outstanding == {"x-2"} and orch.scored == {"x-1"}


def test_a_service_told_to_stop_exits_even_when_its_clean_up_hangs() -> None:
    """After a supervisor's death the kernel's SIGTERM is all a service gets: a clean-up
    that hangs (here: a non-daemon thread) must not keep it alive."""
    code = ("import threading, time, asyncio\n"
            "from services.runtime import install_stop_handlers\n"
            "async def main():\n"
            "    stop = asyncio.Event(); install_stop_handlers(stop, grace_s=1.0)\n"
            "    threading.Thread(target=time.sleep, args=(60,)).start()\n"
            "    print('ready', flush=True); await stop.wait()\n"
            "asyncio.run(main())\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        proc.terminate()
        assert proc.wait(20) == 3 and time.monotonic() - t0 < 10
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
