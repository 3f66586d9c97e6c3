"""EventStore on a real DuckDB file: row group size, WAL size and checkpoints."""

from __future__ import annotations

from pathlib import Path

import duckdb

from schemas import EventType
from services.recorder.store import ROW_GROUP_SIZE, EventStore, Recorded

from .factories import sample_event


def test_small_row_groups_and_checkpoint_empties_the_wal(tmp_path: Path) -> None:
    db = tmp_path / "events.duckdb"
    store = EventStore(db)
    n = 2 * ROW_GROUP_SIZE + 100
    events = [sample_event(EventType.AGENT_TOOL_CALLED, "s-rg", n=i) for i in range(n)]
    try:
        for start in range(0, n, 1000):
            store.append([Recorded(e, start + k + 1) for k, e in enumerate(events[start:start + 1000])])
        assert store.wal_bytes() > 100_000  # everything so far is only in the WAL
        store.checkpoint()
        assert store.wal_bytes() == 0
        # queries on a fresh cursor see the log (not the in-memory catalog it starts in)
        assert store.counts() == {"events": n, "rejected": 0}
        assert store.query("SELECT count(*) AS n FROM events WHERE type = 'agent.tool_called'").rows == [[n]]
    finally:
        store.close()
    con = duckdb.connect(str(db), read_only=True)
    try:
        groups = con.execute(
            "SELECT row_group_id, max(count) FROM pragma_storage_info('events') GROUP BY ALL"
        ).fetchall()
        # a plain read-only open sees the views the store created
        assert con.execute("SELECT events FROM sessions").fetchone() == (n,)
    finally:
        con.close()
    assert len(groups) >= 3
    assert max(rows for _, rows in groups) <= ROW_GROUP_SIZE
