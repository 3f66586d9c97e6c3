"""Tamper evidence: the log's hash chain (services/recorder/chain.py), ``aar verify-log``
and the named audit ``chain_breaks``, on real DuckDB files edited directly with DuckDB
while no recorder runs (the issue: "the changes outlived the recorder")."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import duckdb
import pytest
from typer.testing import CliRunner

from aar import verify_log
from aar.cli import app
from bus import Bus, NatsServer, Role
from core.paths import AarHome
from schemas import Event, EventType, Rejection
from services.recorder import chain
from services.recorder.store import EventStore, Recorded, RejectedRecord

from .conftest import (
    ServiceProcess,
    recorded_count,
    recorder_health,
    settings,
    wait_until,
)
from .factories import sample_event

pytestmark = pytest.mark.timeout(180)
runner = CliRunner()
KINDS = (EventType.SCORE_PUBLISHED, EventType.INTEGRITY_FLAGGED, EventType.IDEA_PROPOSED, EventType.AGENT_TOOL_CALLED)


def _events(n: int, session: str = "s-chain") -> list[Event]:
    return [sample_event(KINDS[i % len(KINDS)], session, n=i) for i in range(n)]


@pytest.fixture
def log(home: AarHome) -> tuple[AarHome, list[Event]]:
    """A log of 4 moves: 40 events, 2 rejections, a conflict; projections caught up."""
    events = _events(40)
    store = EventStore(home.events_db)
    try:
        for k in range(0, 40, 10):
            rejected = [RejectedRecord(Rejection(reason="not JSON", raw=b"{", subject="aar.s-chain.x"), 1000 + k)] \
                if k in (10, 30) else []
            store.record([Recorded(e, k + i + 1) for i, e in enumerate(events[k:k + 10])], rejected)
        forged = Event.parse({**json.loads(events[3].to_json()), "source": "someone-else"})
        store.record([Recorded(forged, 2000)])  # a conflict: a rejection row
        store.refresh_projections()
        store.checkpoint()
    finally:
        store.close()
    return home, events


def _verify(home: AarHome, monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[int, str, dict | None]:
    monkeypatch.setenv("AAR_HOME", str(home.root))
    done = runner.invoke(app, ["verify-log", *args])
    report = None
    if "-f" in args:
        report = json.loads(done.stdout.strip().splitlines()[-1])
    return done.exit_code, done.output, report


def _edit(home: AarHome, *sql: str, params: list | None = None) -> None:
    con = duckdb.connect(str(home.events_db))
    try:
        for statement in sql:
            con.execute(statement, params or [])
    finally:
        con.close()


def test_an_untouched_log_verifies(log: tuple[AarHome, list[Event]], monkeypatch: pytest.MonkeyPatch) -> None:
    home, _ = log
    code, output, report = _verify(home, monkeypatch, "-f", "json")
    assert code == 0, output
    assert report is not None and report["intact"] and report["summary"]["batches"] == 5
    assert report["summary"]["events"] == 40 and report["summary"]["rejected"] == 3
    code, output, _ = _verify(home, monkeypatch)
    assert code == 0 and "intact" in output
    # the named audit says the same: no broken link
    monkeypatch.setenv("AAR_HOME", str(home.root))
    done = runner.invoke(app, ["audit", "--named", "chain_breaks", "-f", "json"])
    assert done.exit_code == 0 and done.stdout.strip() == ""


TAMPERING: dict[str, tuple[Callable[[list[Event]], tuple[list[str], list]], str, str]] = {
    # name: (sql and params, the table of the first broken link, the problem)
    "score changed": (lambda ev: (["UPDATE events SET payload = json_object('pgr', 0.99) WHERE id = ?"], [ev[12].id]),
                      "events", "rows changed"),
    "flag deleted": (lambda ev: (["DELETE FROM events WHERE id = ?"], [ev[13].id]), "events", "rows missing or added"),
    "event forged": (lambda ev: (["INSERT INTO events SELECT * REPLACE ('forged-1' AS id) FROM events WHERE id = ?"],
                                 [ev[0].id]), "events", "rows outside the chain"),
    "rejection deleted": (lambda ev: (["DELETE FROM rejected_events WHERE stream_seq = ?"], [1010]),
                          "rejected_events", "rows missing or added"),
    "rejection reworded": (lambda ev: (["UPDATE rejected_events SET reason = 'fine' WHERE stream_seq = ?"], [2000]),
                           "rejected_events", "rows changed"),
    "link deleted": (lambda ev: (["DELETE FROM log_chain WHERE batch = ?"], [2]), "", "batch numbers skip"),
    "link edited": (lambda ev: (["UPDATE log_chain SET events_count = events_count - 1 WHERE batch = ?"], [3]),
                    "", "link edited"),
}


@pytest.mark.parametrize("case", list(TAMPERING))
def test_each_kind_of_tampering_is_found_with_its_place(
    log: tuple[AarHome, list[Event]], monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    home, events = log
    build, table, problem = TAMPERING[case]
    sql, params = build(events)
    _edit(home, *sql, params=params)
    code, output, report = _verify(home, monkeypatch, "-f", "json")
    assert code == 1, output
    assert report is not None
    first = report["first_break"]
    assert first["problem"] == problem, first
    assert (first["tbl"] or "") == table
    if case == "score changed":
        assert first["batch"] == 2 and first["at_key"] == events[12].id and first["at_pos"] == 12
    if case == "flag deleted":
        assert first["batch"] == 2 and first["rows"] == 10 and "is gone" in first["detail"]
        assert first["at_pos"] == 13  # where the missing row was: the next one is there now
    if case == "event forged":
        assert first["batch"] is None and first["at_key"] == "forged-1"
    if case == "link deleted":
        assert first["batch"] == 3
    # the text form names the batch and what differs
    code, output, _ = _verify(home, monkeypatch)
    assert code == 1 and "BROKEN" in output and "first broken link" in output


def test_a_cut_off_chain_is_caught_by_the_head_kept_elsewhere(
    log: tuple[AarHome, list[Event]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Removing the last batch *and* its rows leaves a consistent, shorter chain: only a
    head kept elsewhere (the recorder logs it, health reports it) shows the cut."""
    home, _ = log
    _, _, report = _verify(home, monkeypatch, "-f", "json")
    assert report is not None
    head = report["summary"]["head"]
    assert _verify(home, monkeypatch, "--head", head)[0] == 0
    assert _verify(home, monkeypatch, "--head", head[:16])[0] == 0
    _edit(home, "DELETE FROM rejected_events WHERE stream_seq = 2000", "DELETE FROM log_chain WHERE batch = 5")
    assert _verify(home, monkeypatch)[0] == 0  # consistent in itself ...
    code, output, _ = _verify(home, monkeypatch, "--head", head)
    assert code == 1 and "not the hash of any batch" in output  # ... but not the chain you knew
    assert _verify(home, monkeypatch, "--head", "not-a-hash")[0] == 2


def test_projections_views_and_planted_functions_are_checked(
    log: tuple[AarHome, list[Event]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The views read typed projections, not the events: a projection edited to give a
    better score, a redefined view or a function planted to answer in place of a
    built-in would change what audits say with every event intact."""
    home, _ = log
    _edit(home, "UPDATE proj_score SET pgr = 0.99")
    code, _, report = _verify(home, monkeypatch, "-f", "json")
    assert code == 1 and report is not None and report["breaks"] == []
    assert any("proj_score" in p for p in report["problems"])
    assert _verify(home, monkeypatch, "--no-projections")[0] == 0
    _edit(home, "CREATE OR REPLACE VIEW scores AS SELECT 1 AS pgr", "CREATE MACRO sha256(x) AS 'forged'")
    code, _, report = _verify(home, monkeypatch, "-f", "json", "--no-projections")
    assert code == 1 and report is not None
    assert any("view scores was redefined" in p for p in report["problems"])
    assert any("macro sha256" in p for p in report["problems"])
    assert report["breaks"] == []  # the planted sha256 did not answer for the real one


def test_a_log_from_before_the_chain_gets_one_over_what_it_holds(home: AarHome,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    events = _events(12)
    store = EventStore(home.events_db)
    store.record([Recorded(e, i + 1) for i, e in enumerate(events[:8])])
    store.close()
    _edit(home, "DROP TABLE log_chain")  # what a log written by an older recorder looks like
    code, output, _ = _verify(home, monkeypatch)
    assert code == 2 and "no hash chain" in output
    store = EventStore(home.events_db)  # opens, and says so
    try:
        assert store.chain_batch == 1
        store.record([Recorded(e, 9 + i) for i, e in enumerate(events[8:])])
    finally:
        store.close()
    code, output, report = _verify(home, monkeypatch, "-f", "json")
    assert code == 0, output
    assert report is not None and report["summary"]["batches"] == 2
    assert any("chain started over 8 events" in note for note in report["notes"])


CRASH = """
import os, sys
sys.path.insert(0, {root!r})
from pathlib import Path
from schemas import EventType
from services.recorder.store import EventStore, Recorded
from tests.test_recorder_chain import _events
events = _events(30)
store = EventStore(Path({db!r}))
store.record([Recorded(e, i + 1) for i, e in enumerate(events[:10])])
store.append([Recorded(e, i + 1) for i, e in enumerate(events[:20])])  # a redelivery and new ones, not moved
store._append_cur.execute("UPDATE " + store.inboxes.target() + ".events SET payload = '{{broken' WHERE id = ?",
                          [events[15].id])  # a row the log will refuse
os._exit(0)  # a crash: nothing closed, nothing moved
"""


def test_the_chain_survives_crashes_redeliveries_and_isolated_rows(home: AarHome,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, "-c", CRASH.format(root=str(root), db=str(home.events_db))], check=True,
                   timeout=120, cwd=root)
    events = _events(30)
    store = EventStore(home.events_db)  # folds the inbox in, isolating the broken row
    try:
        store.record([Recorded(e, 21 + i) for i, e in enumerate(events[20:])])
        assert store.counts() == {"events": 29, "rejected": 1}
    finally:
        store.close()
    code, output, _ = _verify(home, monkeypatch)
    assert code == 0, output


async def test_a_running_recorder_chains_what_it_records(
    admin: Bus, recorder: ServiceProcess, home: AarHome, nats_server: NatsServer
) -> None:
    await admin.publish_many(_events(30, "s-live-chain"))

    async def all_in() -> bool:
        return await recorded_count(admin, "SELECT count(*) FROM events WHERE session_id = 's-live-chain'") == 30

    await wait_until(all_in, what="the events")
    health = await recorder_health(admin)
    assert health is not None and health["chain_batch"] >= 1 and len(health["chain_head"]) == 64
    breaks = await admin.request("recorder", "audit", {"sql": chain.first_break_sql()}, timeout=30)
    assert breaks["rows"] == []

    def verify_through_the_recorder() -> verify_log.Report:
        audit = verify_log.recorder_audit(settings(nats_server, Role.ADMIN), 60)
        try:
            return verify_log.check(audit, "")
        finally:
            audit.close()

    report = await asyncio.to_thread(verify_through_the_recorder)
    assert report.intact, report.as_dict()
    assert report.summary["events"] == 30
    recorder.stop()
    con = duckdb.connect(str(home.events_db), read_only=True)
    try:
        assert con.execute(chain.breaks_sql()).fetchall() == []
        newest = con.execute("SELECT arg_max(hash, batch) FROM log_chain").fetchone()
        found = con.execute("SELECT count(*) FROM log_chain WHERE hash = ?", [health["chain_head"]]).fetchone()
        assert newest is not None and found is not None
        assert newest[0] == health["chain_head"] or found[0] == 1
    finally:
        con.close()
