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

from . import inbox, projections
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
class Moved:
    """What one ``move`` folded into the log: new events and rejections (redeliveries
    not counted), the last inbox_seq moved (0: nothing) and the latest ``recorded_at``
    among the rows moved."""

    events: int
    rejected: int
    upto: int
    recorded_upto: datetime | None


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
        create_schema(self.con)
        self.inboxes = inbox.Inboxes(self.path)
        self.inboxes.attach(self.con)
        # SQL may never read or write files from now on: audits cannot exfiltrate anything.
        self.con.execute("SET enable_external_access = false")
        # DuckDB checkpoints inside a commit every 16 MB of WAL by default; the recorder
        # checkpoints itself instead (when idle, and once the WAL passes its cap), off
        # the path of the acks (see ``inbox``).
        self.con.execute(f"SET checkpoint_threshold = '{checkpoint_threshold}'")
        # ``self.con`` only makes cursors (DuckDB refuses a second call on a connection
        # that is busy, even ``cursor()``): writes, checkpoints and audit queries each
        # run on their own cursor. ``_lock``: writes to the log and the idle inbox
        # (moves, projections, checkpoints), one at a time; ``_inbox_lock``: appends to
        # the active inbox, and the inbox bookkeeping. An append never takes ``_lock``:
        # it never waits for the log.
        self._lock = threading.Lock()
        self._inbox_lock = threading.Lock()
        self._factory = threading.Lock()
        # One long-lived cursor for each kind of write (fewer calls into DuckDB: each
        # is a wait for the GIL when the event loop is busy).
        self._log_cur = self._cursor()  # under ``_lock``
        self._append_cur = self._cursor()  # under ``_inbox_lock``
        # What a stopped or crashed recorder committed but never folded in.
        self.move()
        self.recycle(all_files=True)

    @property
    def inbox_paths(self) -> list[Path]:
        return list(self.inboxes.paths)

    def close(self) -> None:
        try:
            self.move()
            self.recycle(all_files=True)  # a clean stop leaves the inboxes empty
        finally:
            with self._lock, self._inbox_lock, self._factory:
                self._log_cur.close()
                self._append_cur.close()
                self.con.close()

    def append(self, events: Sequence[Recorded], rejected: Sequence[RejectedRecord] = ()) -> int:
        """Commit one batch to the active inbox, in one transaction; once this returns
        the batch is durable (acknowledge it). ``move`` folds it into the log. Returns
        the rows written (redeliveries included: the log's keys drop them when moved).
        ``recorded_at`` is when the batch's write began (the commit follows within ms)."""
        now = datetime.now(UTC)
        unique: dict[str, Recorded] = {}
        for rec in events:
            unique.setdefault(rec.event.id, rec)
        rows = [
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
        ]
        bad_rows = [
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
        ]
        if not rows and not bad_rows:
            return 0
        with self._inbox_lock:
            boxes = self.inboxes
            first = boxes.seq + 1
            batch = _with_seq(pa.Table.from_pylist(rows, schema=EVENTS_SCHEMA), first)
            bad = _with_seq(pa.Table.from_pylist(bad_rows, schema=REJECTED_SCHEMA), first + len(rows))
            target, cur = boxes.target(), self._append_cur
            if not bad.num_rows:
                # The common case: one auto-committed statement.
                cur.from_arrow(batch).insert_into(f"{target}.events")
            else:
                cur.execute("BEGIN TRANSACTION")
                try:
                    if batch.num_rows:
                        cur.from_arrow(batch).insert_into(f"{target}.events")
                    cur.from_arrow(bad).insert_into(f"{target}.rejected_events")
                    cur.execute("COMMIT")
                except Exception:
                    cur.execute("ROLLBACK")
                    raise
            boxes.appended(first + len(rows) + len(bad_rows) - 1, rejected=bool(bad_rows), recorded_at=now)
        return len(rows) + len(bad_rows)

    def record(self, events: Sequence[Recorded], rejected: Sequence[RejectedRecord] = ()) -> Moved:
        """``append`` then ``move``: the batch is in the log when this returns (for
        tools and tests that write a log directly; the recorder moves on its own)."""
        self.append(events, rejected)
        return self.move()

    def move(self) -> Moved:
        """Fold everything committed to the inboxes so far into the log, in one
        transaction of the log (waits while the log checkpoints; appends never wait
        for this)."""
        with self._lock:
            with self._inbox_lock:  # a consistent view of what is committed
                top, recorded = self.inboxes.seq, self.inboxes.recorded_upto
            if top <= self.inboxes.moved:
                return Moved(0, 0, 0, None)
            try:
                counts = self._move(self._log_cur, top, ignore=False)
            except duckdb.ConstraintException:
                # A key already in the log or twice in the inboxes (a redelivery after a
                # crash, a re-publish past JetStream's duplicate window): again, first
                # copies only, skipping what is stored. The plain INSERT is tried first:
                # it costs about half of that.
                counts = self._move(self._log_cur, top, ignore=True)
            self.inboxes.moved = top
        return Moved(counts.get("events", 0), counts.get("rejected_events", 0), top, recorded)

    def _move(self, cur: duckdb.DuckDBPyConnection, top: int, *, ignore: bool) -> dict[str, int]:
        statements = self.inboxes.move_statements(top, verb="INSERT OR IGNORE" if ignore else "INSERT", dedupe=ignore)
        counts: dict[str, int] = {}
        cur.execute("BEGIN TRANSACTION")
        try:
            for table, sql in statements:
                counts[table] = int(cur.execute(sql).fetchall()[0][0])
            cur.execute(f"UPDATE {inbox.STATE} SET seq = {int(top)}")
            cur.execute("COMMIT")
        except Exception:
            cur.execute("ROLLBACK")
            raise
        return counts

    def recycle(self, *, all_files: bool = False) -> int:
        """Empty and checkpoint the idle inbox once the log holds all of it (``all_files``:
        every inbox, when nothing appends). Returns how many were recycled."""
        done = 0
        with self._lock:
            with self._inbox_lock:
                ready = self.inboxes.recyclable(all_files=all_files)
            for k in ready:
                if inbox.recycle(self._log_cur, k):
                    with self._inbox_lock:
                        self.inboxes.files[k].clean = True
                    done += 1
        return done

    def pending(self) -> int:
        """Rows committed to the inboxes and not yet folded into the log. Lock-free (the
        recorder's health handler calls it on the event loop): two int reads, each
        updated only after its commit."""
        return max(0, self.inboxes.seq - self.inboxes.moved)

    def refresh_projections(self) -> int:
        """Bring the typed projections up to the log's end (the views are exact either
        way; this makes them fast). Returns the rows added."""
        with self._lock:
            return projections.refresh(self._log_cur)

    def checkpoint(self) -> bool:
        """Fold the log's WAL into its file (the recorder calls it when idle and when
        the WAL has grown past its limit); appends to the inbox go on meanwhile.
        False when DuckDB declined because another transaction (an audit query) was
        open at that moment: try again later."""
        with self._lock:
            return self._checkpoint(CATALOG)

    def _checkpoint(self, catalog: str) -> bool:
        try:
            self._log_cur.execute(f"CHECKPOINT {catalog}")
            return True
        except duckdb.TransactionException:
            return False

    def wal_bytes(self) -> int:
        """Size of the log's write-ahead log not yet checkpointed (0 when there is none)."""
        return inbox.wal_bytes(self.path)

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


def _with_seq(rows: pa.Table, first: int) -> pa.Table:
    """``rows`` numbered ``first``, ``first + 1``, ... in an ``inbox_seq`` column."""
    return rows.append_column("inbox_seq", pa.array(range(first, first + rows.num_rows), pa.int64()))
