"""The DuckDB event log. The recorder process is its only writer."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from schemas import Event, Rejection

from . import projections
from .audit import AuditResult, run_query, sql_literal
from .views import create_schema

CATALOG = "aar"
# DuckDB compresses and writes a row group when it is full, inside the checkpoint that
# follows, and every write waits for a checkpoint. With the default 122,880 rows that
# is a 0.5-1.3 s stall once per ~120k events; with 8,192 rows the longest checkpoint
# measured was under 0.1 s (2 cores, ~9 MB of WAL each). Scans lose little: the
# events table is filtered by type and session, and zone maps get finer.
ROW_GROUP_SIZE = 8192

EVENTS_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("type", pa.string()),
        ("schema_version", pa.int32()),
        ("session_id", pa.string()),
        ("source", pa.string()),
        ("time", pa.timestamp("us", tz="UTC")),
        ("correlation_id", pa.string()),
        ("causation_id", pa.string()),
        ("payload", pa.string()),
        ("subject", pa.string()),
        ("stream_seq", pa.int64()),
        ("recorded_at", pa.timestamp("us", tz="UTC")),
    ]
)
REJECTED_SCHEMA = pa.schema(
    [
        ("stream_seq", pa.int64()),
        ("subject", pa.string()),
        ("reason", pa.string()),
        ("raw", pa.binary()),
        ("event_id", pa.string()),
        ("event_type", pa.string()),
        ("session_id", pa.string()),
        ("recorded_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass(frozen=True, slots=True)
class Recorded:
    """An event with where it came from on the stream."""

    event: Event[Any]
    stream_seq: int | None = None


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    rejection: Rejection
    stream_seq: int


class EventStore:
    """Append-only, idempotent (on event id / stream sequence) DuckDB log."""

    def __init__(self, path: Path, *, checkpoint_threshold: str = "1GB", row_group_size: int = ROW_GROUP_SIZE) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Attached (not opened directly) to choose the row group size, see ROW_GROUP_SIZE.
        self.con = duckdb.connect(":memory:")
        self.con.execute(f"ATTACH {sql_literal(str(self.path))} AS {CATALOG} (ROW_GROUP_SIZE {int(row_group_size)})")
        self.con.execute(f"USE {CATALOG}")
        # SQL may never read or write files from now on: audits cannot exfiltrate anything.
        self.con.execute("SET enable_external_access = false")
        # DuckDB checkpoints inside a commit every 16 MB of WAL by default. A checkpoint
        # blocks every write while it runs and its cost grows with the WAL (~10 ms for
        # 1.5 MB, ~0.3-1.4 s for 36 MB on 2 cores), so the recorder checkpoints itself:
        # when idle, and between batches once the WAL passes its cap (see ``wal_bytes``).
        self.con.execute(f"SET checkpoint_threshold = '{checkpoint_threshold}'")
        create_schema(self.con)
        # ``self.con`` only makes cursors (DuckDB refuses a second call on a connection
        # that is busy, even ``cursor()``): writes, checkpoints and audit queries each
        # run on their own cursor. ``_lock`` makes this process's writes one at a time.
        self._lock = threading.Lock()
        self._factory = threading.Lock()

    def close(self) -> None:
        with self._lock, self._factory:
            self.con.close()

    def append(self, events: Sequence[Recorded], rejected: Sequence[RejectedRecord] = ()) -> tuple[int, int]:
        """Write one batch in one transaction. Returns how many events and rejections
        were new (the rest were already stored: redeliveries).
        ``recorded_at`` is when the batch's write began (the commit follows within ms)."""
        now = datetime.now(UTC)
        unique: dict[str, Recorded] = {}
        for rec in events:
            unique.setdefault(rec.event.id, rec)
        batch = pa.Table.from_pylist(
            [
                {
                    "id": r.event.id,
                    "type": r.event.type.value,
                    "schema_version": r.event.schema_version,
                    "session_id": r.event.session_id,
                    "source": r.event.source,
                    "time": r.event.time,
                    "correlation_id": r.event.correlation_id,
                    "causation_id": r.event.causation_id,
                    "payload": r.event.payload.model_dump_json(),
                    "subject": r.event.subject,
                    "stream_seq": r.stream_seq,
                    "recorded_at": now,
                }
                for r in unique.values()
            ],
            schema=EVENTS_SCHEMA,
        )
        bad = pa.Table.from_pylist(
            [
                {
                    "stream_seq": r.stream_seq,
                    "subject": r.rejection.subject,
                    "reason": r.rejection.reason,
                    "raw": r.rejection.raw,
                    "event_id": r.rejection.event_id,
                    "event_type": r.rejection.event_type,
                    "session_id": r.rejection.session_id,
                    "recorded_at": now,
                }
                for r in {r.stream_seq: r for r in rejected}.values()
            ],
            schema=REJECTED_SCHEMA,
        )
        if not batch.num_rows and not bad.num_rows:
            return 0, 0
        with self._lock:
            cur = self._cursor()
            try:
                if not bad.num_rows:
                    # The common case: one auto-committed statement. Fewer calls into
                    # DuckDB also mean fewer waits for the GIL when this runs in a worker
                    # thread while the event loop is busy.
                    return _insert(cur, "events", batch), 0
                cur.execute("BEGIN TRANSACTION")
                try:
                    new = _insert(cur, "events", batch, ignore=True) if batch.num_rows else 0
                    new_rejected = _insert(cur, "rejected_events", bad, ignore=True)
                    cur.execute("COMMIT")
                except Exception:
                    cur.execute("ROLLBACK")
                    raise
            finally:
                cur.close()
        return int(new), int(new_rejected)

    def refresh_projections(self) -> int:
        """Bring the typed projections up to the log's end (the views are exact either
        way; this makes them fast). Returns the rows added."""
        with self._lock:
            cur = self._cursor()
            try:
                return projections.refresh(cur)
            finally:
                cur.close()

    def checkpoint(self) -> bool:
        """Fold the WAL into the database file (the recorder calls it when idle and
        when the WAL has grown past its limit). False when DuckDB declined because
        another transaction (an audit query) was open at that moment: try again later."""
        with self._lock:
            cur = self._cursor()
            try:
                cur.execute("CHECKPOINT")
                return True
            except duckdb.TransactionException:
                return False
            finally:
                cur.close()

    def wal_bytes(self) -> int:
        """Size of the write-ahead log not yet checkpointed (0 when there is none)."""
        try:
            return self.path.with_name(self.path.name + ".wal").stat().st_size
        except FileNotFoundError:
            return 0

    def _cursor(self) -> duckdb.DuckDBPyConnection:
        """A cursor on the event log (a new cursor starts in the in-memory catalog)."""
        with self._factory:
            cur = self.con.cursor()
        cur.execute(f"USE {CATALOG}")
        return cur

    def query(self, sql: str, *, max_rows: int | None = None) -> AuditResult:
        """Read-only audit SQL (refuses anything but a SELECT)."""
        cur = self._cursor()
        try:
            return run_query(cur, sql) if max_rows is None else run_query(cur, sql, max_rows=max_rows)
        finally:
            cur.close()

    def counts(self) -> dict[str, int]:
        cur = self._cursor()
        try:
            events = cur.execute("SELECT count(*) FROM events").fetchall()[0][0]
            rejected = cur.execute("SELECT count(*) FROM rejected_events").fetchall()[0][0]
        finally:
            cur.close()
        return {"events": int(events), "rejected": int(rejected)}


def _insert(cur: duckdb.DuckDBPyConnection, table: str, rows: pa.Table, *, ignore: bool = False) -> int:
    """Insert an Arrow table; returns how many rows were new. A plain INSERT is tried
    first: it costs about half of INSERT OR IGNORE, whose conflict handling adds
    ~2-3 ms per statement. Only a batch holding an already stored key (a redelivery
    after a crash, a re-publish past JetStream's duplicate window) fails it and is
    inserted again with OR IGNORE. Outside an explicit transaction the failed
    statement has rolled itself back; inside one, ``ignore`` goes straight to OR IGNORE."""
    cur.register("incoming", rows)
    try:
        if not ignore:
            try:
                cur.execute(f"INSERT INTO {table} SELECT * FROM incoming")
                return rows.num_rows
            except duckdb.ConstraintException:
                pass
        # The row count of INSERT OR IGNORE is the number actually inserted.
        return int(cur.execute(f"INSERT OR IGNORE INTO {table} SELECT * FROM incoming").fetchall()[0][0])
    finally:
        cur.unregister("incoming")
