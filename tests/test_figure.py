"""The study's figure: its data from a real log file, and ``aar plot`` drawing it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from core.paths import AarHome
from schemas import Event, Payload
from schemas.agent import AgentStarted, AgentStopped, AgentToolCalled
from schemas.experiment import Purpose, Split
from schemas.scoring import ScorePublished, ScoreWithheld
from schemas.session import Backend, SessionStarted
from services.dashboard.figure import figure, intervals
from services.recorder.audit import FileAudit
from services.recorder.store import EventStore, Recorded

from .test_cli import aar

SID = "s-fig"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
H = 3600.0


def _ev(payload: Payload, seconds: float, source: str = "scorer") -> Event[Any]:
    return Event.create(payload, session_id=SID, source=source, time=T0 + timedelta(seconds=seconds))


def _score(idea: str, agent: str, pgr: float | None, *, split: Split = Split.DEV, purpose: Purpose = Purpose.SCORE,
           dataset: str = "rotten_tomatoes") -> ScorePublished:
    withheld = split is not Split.DEV or purpose is not Purpose.SCORE
    cls = ScoreWithheld if withheld else ScorePublished
    return cls(experiment_id=f"x-{idea}-{split.value}-{purpose.value}", idea_id=idea, agent_id=agent, dataset=dataset,
               split=split, purpose=purpose, n_seeds=2, accuracy=0.8, accuracy_stderr=0.01, weak_accuracy=0.7,
               ceiling_accuracy=0.9, pgr=pgr, pgr_stderr=0.1, builtin_method="aux_conf")


def _start(agent: str) -> AgentStarted:
    return AgentStarted(agent_id=agent, direction="d", backend=Backend.OFFLINE)


def _stop(agent: str) -> AgentStopped:
    return AgentStopped(agent_id=agent, reason="session_over")


@pytest.fixture
def log(home: AarHome) -> Iterator[AarHome]:
    """agent-1 active 0-2 h, agent-2 1-2 h; a killed run; agent-1 again 10-11 h (a resume)."""
    events = [
        _ev(SessionStarted(name="fig", backend=Backend.OFFLINE, dataset="rotten_tomatoes", weak_model="minilm",
                           strong_model="minilm"), 0, "orchestrator"),
        _ev(_start("agent-1"), 0, "agent-1"),
        _ev(_score("nv", "scorer", 0.3, purpose=Purpose.BASELINE).model_copy(update={"idea_id": None, "agent_id": None}), 60),
        _ev(_start("agent-2"), H, "agent-2"),
        _ev(_score("a", "agent-1", 0.4), 0.5 * H),  # 0.5 research hours
        _ev(_score("b", "agent-1", 0.2), 1.5 * H),  # 1.5 + 0.5 = 2.0
        _ev(_score("c", "agent-2", 0.5), 1.5 * H + 1),
        _ev(_score("c", "agent-2", 0.45, split=Split.TEST), 1.6 * H),
        _ev(_score("c", "agent-2", 0.1, split=Split.HELDOUT, dataset="imdb"), 1.6 * H),
        _ev(_score("c", "agent-2", 0.0, purpose=Purpose.ABLATION), 1.6 * H),  # not a point of the figure
        _ev(_score("n", "agent-2", None), 1.7 * H),  # PGR undefined: no dot
        _ev(_stop("agent-2"), 2 * H, "agent-2"),
        _ev(_score("d", "agent-1", 0.7), 2 * H),
        _ev(AgentToolCalled(agent_id="agent-1", tool="note"), 2 * H, "agent-1"),  # killed here: its last event
        _ev(_start("agent-1"), 10 * H, "agent-1"),
        _ev(_score("e", "agent-1", 0.6), 10.5 * H),  # 2 + 1 + 0.5 = 3.5
        _ev(_stop("agent-1"), 11 * H, "agent-1"),
    ]
    store = EventStore(home.events_db)
    store.record([Recorded(e, i) for i, e in enumerate(events, 1)])
    store.close()
    yield home


def test_points_lines_and_research_hours(log: AarHome) -> None:
    audit = FileAudit.open(log.events_db)
    try:
        fig = figure(audit, SID)
        with pytest.raises(LookupError, match="no session 's-none'"):
            figure(audit, "s-none")
    finally:
        audit.close()
    assert fig.agents == ["agent-1", "agent-2"]
    by = {d.idea_id: d for d in fig.dots}
    assert sorted(by) == ["a", "b", "c", "d", "e"]  # dev scores with a PGR, one dot each
    assert [round(by[i].hours, 2) for i in "abcde"] == [0.5, 2.0, 2.0, 3.0, 3.5]
    assert fig.hours == pytest.approx(4.0)  # agent-1 2 h + 1 h, agent-2 1 h: not the 8 h gap
    assert fig.best["agent-1"] == [(0.5, 0.4), (3.0, 0.7), (4.0, 0.7)]  # best so far, run on to the end
    assert fig.best["agent-2"] == [(by["c"].hours, 0.5), (4.0, 0.5)]
    assert fig.naive_pgr == 0.3
    (promoted,) = fig.promoted
    assert (promoted.idea_id, promoted.test_pgr, promoted.heldout_pgr, promoted.heldout) == ("c", 0.45, 0.1, "imdb")


def test_an_agent_started_twice_without_a_stop_was_active_until_its_last_event() -> None:
    rows = [("a", "agent.started", 0), ("a", "agent.started", 100), ("a", "agent.stopped", 150)]
    assert intervals(rows, {"a": [0, 40, 100, 150]}) == [(0, 40), (100, 150)]
    assert intervals([("b", "agent.started", 10)], {"b": [10, 40]}) == [(10, 40)]


def test_aar_plot_writes_the_figure(log: AarHome) -> None:
    done = aar("plot", SID, "--out", str(log.root / "f.svg"), "--reference-pgr", "0.23", "human baseline", home=log)
    assert done.returncode == 0, done.stdout + done.stderr
    svg = (log.root / "f.svg").read_text()
    assert "<svg" in svg and "human baseline" in svg and "agent-2" in svg
    assert "5 scored idea(s) of 2 agent(s) over 4.00 research hours; 1 promoted" in done.stdout
    default = aar("plot", home=log)  # the newest session, next to the log
    assert default.returncode == 0 and (log.root / "figures" / f"{SID}.png").stat().st_size > 10_000
    bad = aar("plot", SID, "--out", "fig.gif", home=log)
    assert bad.returncode == 2 and "must end in .png, .svg, .pdf" in bad.stderr
    unknown = aar("plot", "s-nope", home=log)
    assert unknown.returncode == 1 and "no session 's-nope'" in unknown.stderr


def test_a_log_written_before_a_view_was_added_reads_as_a_new_one(log: AarHome) -> None:
    """A log file from an earlier version lacks the views added since (here ``agent_runs``,
    which the figure reads): opened read-only, it gets this version's views."""
    import duckdb

    audit = FileAudit.open(log.events_db)
    try:
        now = figure(audit, SID)
    finally:
        audit.close()
    con = duckdb.connect(str(log.events_db))
    con.execute("DROP VIEW agent_runs")
    con.execute("CREATE OR REPLACE VIEW scores AS SELECT 1 AS stale")  # a view of an older definition
    con.close()
    audit = FileAudit.open(log.events_db)
    try:
        assert figure(audit, SID) == now
        assert audit.query("SELECT count(*) FROM agent_runs WHERE session_id = ?", [SID]).rows == [[5]]
    finally:
        audit.close()
