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

from .audit import AuditResult, run_query
from .views import TABLES, create_views_sql

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

    def __init__(self, path: Path, *, checkpoint_threshold: str = "1GB") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # SQL may never read or write files: audits cannot exfiltrate anything.
        self.con = duckdb.connect(str(self.path), config={"enable_external_access": False})
        # DuckDB checkpoints inside a commit every 16 MB of WAL by default, which stalls
        # that batch for up to a second; the recorder checkpoints when idle instead.
        self.con.execute(f"SET checkpoint_threshold = '{checkpoint_threshold}'")
        self.con.execute(TABLES)
        self.con.execute(create_views_sql())
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
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
            cur = self.con.cursor()
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

    def checkpoint(self) -> None:
        """Fold the WAL into the database file (the recorder calls it when idle)."""
        with self._lock:
            self.con.execute("CHECKPOINT")

    def query(self, sql: str, *, max_rows: int | None = None) -> AuditResult:
        """Read-only audit SQL (refuses anything but a SELECT)."""
        cur = self.con.cursor()
        try:
            return run_query(cur, sql) if max_rows is None else run_query(cur, sql, max_rows=max_rows)
        finally:
            cur.close()

    def counts(self) -> dict[str, int]:
        cur = self.con.cursor()
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
