"""The recorder's inboxes (services/recorder/inbox.py) on real DuckDB files: appends
that never wait for the log, moves that are all-or-nothing, crash recovery, dedup."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import duckdb
import pytest
import structlog

from schemas import EventType, Rejection
from services.recorder import inbox
from services.recorder.audit import open_read_only
from services.recorder.store import EventStore, Recorded, RejectedRecord

from .factories import sample_event

ROOT = Path(__file__).resolve().parents[1]


def _events(n: int, session: str = "s-inbox", start: int = 0) -> list[Recorded]:
    return [Recorded(sample_event(EventType.AGENT_TOOL_CALLED, session, n=start + i), start + i + 1) for i in range(n)]


def _log_ids(db: Path) -> list[str]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return [r[0] for r in con.execute("SELECT id FROM events").fetchall()]
    finally:
        con.close()


def _inbox_rows(store: EventStore, k: int) -> int:
    cur = store._cursor()
    try:
        return int(cur.execute(f"SELECT count(*) FROM {inbox.catalog(k)}.events").fetchall()[0][0])
    finally:
        cur.close()


def test_appends_do_not_wait_for_the_log(tmp_path: Path) -> None:
    """While the log is busy (its lock held, as during a checkpoint or a move), a batch
    still commits to the inbox; it reaches the log with the next move."""
    store = EventStore(tmp_path / "events.duckdb")
    batch = _events(50)
    try:
        with store._lock:  # the log is "checkpointing"
            done = threading.Event()
            def append() -> None:
                store.append(batch)
                done.set()

            appender = threading.Thread(target=append)
            appender.start()
            assert done.wait(30), "append waited for the log"
            appender.join()
            assert store.pending() == 50
        assert store.counts()["events"] == 0  # committed, not yet in the log
        moved = store.move()
        assert (moved.events, moved.rejected, moved.upto) == (50, 0, 50)
        assert moved.recorded_upto is not None
        assert store.counts()["events"] == 50 and store.pending() == 0
    finally:
        store.close()


def test_redeliveries_and_repeats_are_stored_once(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.duckdb")
    first = _events(30)
    rejection = RejectedRecord(Rejection(subject="aar.s-inbox.x", reason="not JSON", raw=b"{"), 7)
    try:
        store.record(first[:20], [rejection])
        # a crash before the ack: the same events and rejection come again, with new ones,
        # and one event twice in the same unmoved stretch of the inbox
        store.append(first, [rejection])
        store.append(first[25:])
        moved = store.move()
        assert (moved.events, moved.rejected) == (10, 0)
        counts = store.counts()
        assert counts == {"events": 30, "rejected": 1}
        assert store.query("SELECT count(DISTINCT id) AS n, count(*) AS m FROM events").rows == [[30, 30]]
    finally:
        store.close()


def test_inbox_files_take_turns_and_are_emptied(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(inbox, "WAL_BYTES", 1)  # swap after every append
    store = EventStore(tmp_path / "events.duckdb")
    try:
        assert store.inboxes.active == 0
        store.append(_events(10, start=0))
        assert store.inboxes.active == 1 and _inbox_rows(store, 0) == 10
        store.append(_events(10, start=10))
        # inbox 0 is not emptied yet (its rows are not in the log), so appends stay on 1
        assert store.inboxes.active == 1 and _inbox_rows(store, 1) == 10
        assert store.recycle() == 0
        store.move()
        assert store.recycle() == 1  # the idle one: 0
        assert _inbox_rows(store, 0) == 0 and inbox.wal_bytes(store.inbox_paths[0]) == 0
        store.append(_events(10, start=20))
        assert store.inboxes.active == 0  # swapped to the emptied file
        store.move()
        assert store.recycle() == 1 and _inbox_rows(store, 1) == 0
        assert store.counts()["events"] == 30
    finally:
        store.close()
    assert len(_log_ids(tmp_path / "events.duckdb")) == 30


CRASH = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from schemas import EventType
    from services.recorder import store as st
    from tests.factories import sample_event
    from services.recorder.store import EventStore, Recorded
    events = [Recorded(sample_event(EventType.AGENT_TOOL_CALLED, "s-crash", n=i), i + 1) for i in range(300)]
    store = EventStore(Path({db!r}))
    store.record(events[:100])          # in the log
    store.append(events[100:200])       # committed to the inbox, never moved
    if {fail_delete}:
        # the move's transaction commits, then the process dies before the inbox is emptied
        store.move()
    store.append(events[150:300])       # a redelivery overlapping the unmoved rows
    print(",".join(r.event.id for r in events))
    sys.stdout.flush()
    os._exit(0)                         # no close: what a crash leaves behind
""")


@pytest.mark.parametrize("moved_before_crash", [False, True])
def test_a_crash_loses_nothing_and_stores_nothing_twice(tmp_path: Path, moved_before_crash: bool) -> None:
    db = tmp_path / "events.duckdb"
    script = CRASH.format(root=str(ROOT), db=str(db), fail_delete=moved_before_crash)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    ids = out.stdout.strip().split(",")
    assert len(ids) == 300
    # read-only readers are told what waits in the inboxes (unmoved rows, repeats included)
    assert inbox.unfolded(db) == (150 if moved_before_crash else 250)
    with structlog.testing.capture_logs() as logs:
        open_read_only(db).close()
    assert [e for e in logs if e["event"] == "events_not_folded"][0]["rows"] == inbox.unfolded(db)
    store = EventStore(db)  # a new recorder folds them in first
    try:
        assert store.pending() == 0
        assert store.counts()["events"] == 300
        assert all(_inbox_rows(store, k) == 0 for k in range(inbox.FILES))
    finally:
        store.close()
    stored = _log_ids(db)
    assert len(stored) == 300 and set(stored) == set(ids)
    assert inbox.unfolded(db) == 0
