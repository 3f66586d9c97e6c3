"""Audit SQL cannot change the log, and cannot stall the recorder.

Issue: "a data-changing statement inside a CTE passes the read-only check; the
recorder executes it on its writable connection" and "a few slow queries stall
recording itself". Every test runs a real DuckDB file; the last ones a real recorder
process behind a real nats-server.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import duckdb
import pytest

from bus import Bus, NatsServer, QueryError, Role
from core.paths import AarHome
from schemas import EventType
from services.recorder.audit import open_read_only, run_query
from services.recorder.store import EventStore, Recorded

from .conftest import ServiceProcess, recorded_count, recorder_health, wait_until
from .factories import sample_event

pytestmark = pytest.mark.timeout(180)

WRITES_IN_DISGUISE = [
    "WITH d AS (DELETE FROM events RETURNING *) SELECT count(*) FROM d",
    "WITH d AS (DELETE FROM rejected_events RETURNING *) SELECT count(*) FROM d",
    "WITH u AS (UPDATE events SET source = 'forged' RETURNING *) SELECT count(*) FROM u",
    ("WITH i AS (INSERT INTO events SELECT * REPLACE ('forged-' || id AS id) FROM events RETURNING *) "
     "SELECT count(*) FROM i"),
    "WITH d AS (DELETE FROM inbox0.events RETURNING *) SELECT count(*) FROM d",
    "WITH d AS (INSERT INTO inbox1.events SELECT * FROM inbox0.events RETURNING *) SELECT count(*) FROM d",
    "SELECT nextval('audit_seq')",
    "SELECT * FROM checkpoint()",
    "SELECT * FROM force_checkpoint()",
    "SELECT * FROM query('DELETE FROM events')",
    "SELECT * FROM duckdb_secrets()",
    "SELECT * FROM read_text('/etc/hostname')",
]
SLOW = "SELECT sum(a.range * b.range) FROM range(200000) a, range(200000) b"


def _store_with_rows(tmp_path: Path) -> tuple[EventStore, list[str]]:
    store = EventStore(tmp_path / "events.duckdb")
    events = [sample_event(EventType.SCORE_PUBLISHED, "s-ro", n=i) for i in range(5)]
    store.record([Recorded(e, i + 1) for i, e in enumerate(events)])
    store.append([Recorded(sample_event(EventType.IDEA_PROPOSED, "s-ro"), 99)])  # one row waiting in the inbox
    store._log_cur.execute("CREATE SEQUENCE IF NOT EXISTS audit_seq")
    return store, [e.id for e in events]


def _state(store: EventStore) -> tuple[object, ...]:
    cur = store._cursor()
    try:
        return tuple(cur.execute(sql).fetchall()[0][0] for sql in (
            "SELECT string_agg(id || source, ',' ORDER BY id) FROM events",
            "SELECT count(*) FROM rejected_events",
            "SELECT count(*) FROM inbox0.events", "SELECT count(*) FROM inbox1.events",
            "SELECT coalesce(last_value, -1) FROM duckdb_sequences() WHERE sequence_name = 'audit_seq'"))
    finally:
        cur.close()


@pytest.mark.parametrize("sql", WRITES_IN_DISGUISE)
def test_no_audit_statement_changes_the_store(tmp_path: Path, sql: str) -> None:
    store, _ = _store_with_rows(tmp_path)
    try:
        before = _state(store)
        with pytest.raises(Exception) as refused:
            store.query(sql)
        assert isinstance(refused.value, (ValueError, duckdb.Error))
        assert _state(store) == before
        assert store.query("SELECT count(*) FROM events").rows == [[5]]
    finally:
        store.close()


def test_the_guard_holds_on_a_writable_connection_too(tmp_path: Path) -> None:
    """run_query is the guard, whatever connection it is given."""
    db = tmp_path / "events.duckdb"
    EventStore(db).close()
    con = duckdb.connect(str(db))
    try:
        con.execute("INSERT INTO rejected_events VALUES (1, 's', 'r', 'x'::BLOB, NULL, NULL, NULL, now())")
        with pytest.raises(Exception, match="read-only"):
            run_query(con, "WITH d AS (DELETE FROM rejected_events RETURNING *) SELECT count(*) FROM d")
        assert con.execute("SELECT count(*) FROM rejected_events").fetchall() == [(1,)]
    finally:
        con.close()


def test_the_read_only_file_path_is_guarded_and_locked(tmp_path: Path) -> None:
    store, _ = _store_with_rows(tmp_path)
    store.close()
    con = open_read_only(tmp_path / "events.duckdb")
    try:
        for sql in ("SELECT * FROM checkpoint()", "SELECT * FROM duckdb_secrets()",
                    "WITH d AS (DELETE FROM events RETURNING *) SELECT count(*) FROM d"):
            with pytest.raises(Exception, match="refused|read-only"):
                run_query(con, sql)
        assert run_query(con, "SELECT count(*) FROM events").rows == [[6]]
        with pytest.raises(duckdb.Error, match="locked"):
            con.execute("SET enable_external_access = true")  # nothing can turn file access back on
    finally:
        con.close()


def test_an_unknown_operator_or_table_function_is_refused_by_name(tmp_path: Path) -> None:
    store, _ = _store_with_rows(tmp_path)
    try:
        with pytest.raises(ValueError, match="checkpoint"):
            store.query("SELECT * FROM checkpoint()")
        # every view and every shipped audit passes the allow-list
        from replay.audits import QUERIES
        from services.recorder.views import VIEWS

        for name in VIEWS:
            store.query(f"SELECT * FROM {name}")
        for q in QUERIES.values():
            store.query(*q.bound("s-ro"))
        store.query("SELECT * FROM events e, unnest([1, 2]) u(x), json_each(e.payload) j LIMIT 3")
        store.query("SHOW TABLES")
        store.query("SUMMARIZE events")
    finally:
        store.close()


def test_a_slow_audit_is_stopped_at_its_time_limit(tmp_path: Path) -> None:
    store, _ = _store_with_rows(tmp_path)
    try:
        started = time.monotonic()
        with pytest.raises(Exception, match="exceeded 1 s"):
            store.query(SLOW, timeout_s=1.0)
        assert time.monotonic() - started < 10
        assert store.query("SELECT count(*) FROM events").rows == [[5]]  # the store goes on
    finally:
        store.close()


def test_an_audit_cannot_take_the_recorders_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """DuckDB may use 80% of RAM by default: one aggregate of long strings took the
    recorder to 5 GB. The log's instance has a memory limit (AAR_RECORDER_MEMORY; a
    quarter of RAM, at most 4 GiB): such a query fails, and the store goes on."""
    monkeypatch.setenv("AAR_RECORDER_MEMORY", "256MB")
    store, _ = _store_with_rows(tmp_path)
    try:
        with pytest.raises(Exception, match="Out of Memory"):
            store.query("SELECT length(string_agg(repeat('x', 1000000), '')) FROM range(1500)")
        assert store.query("SELECT count(*) FROM events").rows == [[5]]
    finally:
        store.close()
    con = open_read_only(tmp_path / "events.duckdb")  # the read-only path too
    try:
        with pytest.raises(Exception, match="Out of Memory"):
            run_query(con, "SELECT length(string_agg(repeat('x', 1000000), '')) FROM range(1500)")
    finally:
        con.close()


def test_a_huge_result_is_cut_with_the_reason(tmp_path: Path) -> None:
    store, _ = _store_with_rows(tmp_path)
    try:
        result = store.query("SELECT repeat('x', 1000) AS s FROM range(10000)", max_bytes=200_000)
        assert result.truncated and 150 <= len(result.rows) < 200
        assert "200,000 bytes" in (result.truncated_reason or "")
    finally:
        store.close()


def test_functions_planted_in_the_file_are_refused_and_removed(tmp_path: Path) -> None:
    """A macro named like a built-in answers in its place: one planted in the file could make
    any audit (or the chain's check) lie. The read-only path refuses to answer from such a
    file; a recorder opening it removes them."""
    db = tmp_path / "events.duckdb"
    store, _ = _store_with_rows(tmp_path)
    store.close()
    con = duckdb.connect(str(db))
    con.execute("CREATE MACRO count_star() AS 42")
    con.execute("CREATE MACRO sha256(x) AS 'forged'")
    con.close()
    with pytest.raises(ValueError, match="user-defined functions"):
        open_read_only(db)
    store = EventStore(db)
    try:
        assert store.query("SELECT sha256('a')").rows[0][0].startswith("ca978112")
    finally:
        store.close()
    open_read_only(db).close()


# -- through a real recorder ----------------------------------------------------------


async def test_audit_sql_through_the_recorder_cannot_rewrite_the_log(
    admin: Bus, recorder: ServiceProcess, home: AarHome
) -> None:
    events = [sample_event(EventType.SCORE_PUBLISHED, "s-live-ro", n=i) for i in range(3)]
    await admin.publish_many(events)

    async def all_in() -> bool:
        return await recorded_count(admin) == 3

    await wait_until(all_in, what="the events")
    for sql in WRITES_IN_DISGUISE[:4]:
        with pytest.raises(QueryError):
            await admin.request("recorder", "audit", {"sql": sql})
    assert await recorded_count(admin) == 3
    recorder.stop()  # the changes would have outlived the recorder: look at the file itself
    con = duckdb.connect(str(home.events_db), read_only=True)
    try:
        assert sorted(r[0] for r in con.execute("SELECT id FROM events WHERE source = 'test'").fetchall()) == \
            sorted(e.id for e in events)
    finally:
        con.close()


async def test_slow_audits_do_not_stall_recording(admin: Bus, nats_server: NatsServer, home: AarHome) -> None:
    """More slow audits than the recorder has threads for: events keep being recorded with low
    latency, the audits that run end with the time-limit error, the rest are refused at once
    (or wait their turn). Before, they took every thread of the executor the appends use."""
    proc = ServiceProcess("services.recorder", Role.RECORDER, nats_server, home,
                          env={"AAR_AUDIT_TIMEOUT_S": "3"}).start()
    try:
        await wait_until(lambda: _answers(admin), 30, "the recorder")
        slow = [asyncio.create_task(admin.request("recorder", "audit", {"sql": SLOW, "timeout_s": 3}, timeout=60))
                for _ in range(10)]
        await asyncio.sleep(0.5)  # the audits are running
        latencies = []
        for i in range(10):
            event = sample_event(EventType.AGENT_TOOL_CALLED, "s-slow", n=i)
            started = time.monotonic()
            await admin.publish(event)
            while True:
                health = await recorder_health(admin)
                if health and health["events"] >= i + 1:
                    break
                assert time.monotonic() - started < 30, "recording stalled behind the audits"
                await asyncio.sleep(0.02)
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.2)
        print(f"publish -> recorded (s): {[round(x, 3) for x in latencies]}")
        outcomes = await asyncio.gather(*slow, return_exceptions=True)
        errors = [str(o) for o in outcomes]
        assert all(isinstance(o, QueryError) for o in outcomes), errors
        assert any("exceeded 3 s" in e for e in errors), errors
        assert all("exceeded" in e or "busy" in e for e in errors), errors
        assert max(latencies) < 2.0, latencies
        assert proc.proc is not None and proc.proc.poll() is None
    finally:
        proc.stop()


async def test_a_result_too_big_for_one_reply_is_cut_to_fit(admin: Bus, recorder: ServiceProcess) -> None:
    """The server refuses a reply over its max_payload (8 MiB here): a 12 MB result comes
    back cut, saying why, instead of never."""
    result = await admin.request("recorder", "audit", {"sql": "SELECT repeat('x', 1000) AS s FROM range(12000)"},
                                 timeout=30)
    assert result["truncated"] is True
    assert 4000 < len(result["rows"]) < 8400
    assert "bytes" in result["truncated_reason"]


async def _answers(admin: Bus) -> bool:
    return await recorder_health(admin) is not None
