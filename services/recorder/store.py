"""The DuckDB event log. The recorder process is its only writer.

Append-only and tamper-evident: rows are only ever inserted, by moves of the inboxes
into the log (``inbox``, ``moves``), each ending with a link of the hash chain
(``chain``); audit SQL runs in read-only transactions behind ``guard``. No message can
stop it: what cannot be stored as an event is stored as a rejection (``poison``), and
a row the log refuses while moving is isolated and kept as a rejection too."""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import structlog

from core.audit import Param, code_identifier
from schemas import Event, Rejection

from . import chain, guard, inbox, moves, poison, projections
from .audit import MAX_BYTES, MAX_ROWS, AuditResult, memory_limit, run_query
from .views import create_schema

log = structlog.get_logger("recorder.store")
# Errors a move raises because of the rows it moves (not of the disk or the process):
# the rows are then isolated, and the one that fails is kept as a rejection.
ROW_ERRORS: tuple[type[Exception], ...] = (duckdb.DataError, duckdb.IntegrityError, duckdb.InvalidInputException)

CATALOG = code_identifier("aar")  # the log's catalog (an identifier: spliced, so checked)
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
    """An event with where it came from on the stream (and, from the recorder, the bytes
    it came as: kept if it has to be stored as a rejection)."""

    event: Event[Any]
    stream_seq: int | None = None
    raw: bytes | None = None


@dataclass(frozen=True, slots=True)
class NewRejection:
    """A rejection the store made itself (an unstorable event, a conflict, a row the log
    refused): to be announced like the decoder's."""

    stream_seq: int
    subject: str | None
    reason: str
    raw_size: int


@dataclass(frozen=True, slots=True)
class Moved:
    """What one ``move`` folded into the log: new events and rejections (redeliveries
    not counted; conflicts count as rejections), the last inbox_seq moved (0: nothing),
    the latest ``recorded_at`` among the rows moved, the rejections the move made
    (conflicts, isolated rows) and the chain's head after it."""

    events: int
    rejected: int
    upto: int
    recorded_upto: datetime | None
    made: tuple[NewRejection, ...] = ()
    chain_batch: int = 0
    chain_head: str | None = None


@dataclass(frozen=True, slots=True)
class Appended:
    """What one ``append_batch`` committed: rows (redeliveries included) and the events
    it had to store as rejections instead."""

    rows: int
    made: tuple[NewRejection, ...] = ()


@dataclass(frozen=True, slots=True)
class RejectedRecord:
    rejection: Rejection
    stream_seq: int | None  # None: unreadable metadata (as for Recorded)
    stream_time: datetime | None = None  # when the stream stored the message (None: unknown)


class EventStore:
    """Append-only, idempotent (on event id / stream sequence), hash-chained DuckDB log."""

    def __init__(self, path: Path, *, checkpoint_threshold: str = "1GB", row_group_size: int = ROW_GROUP_SIZE) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Attached (not opened directly) to choose the row group size, see ROW_GROUP_SIZE.
        self.con = duckdb.connect(":memory:")
        self.con.execute(f"ATTACH ? AS {CATALOG} (ROW_GROUP_SIZE ?)", [str(self.path), int(row_group_size)])
        self._drop_planted()
        self.con.execute(f"USE {CATALOG}")
        create_schema(self.con)
        chain.ensure(self.con)
        self.inboxes = inbox.Inboxes(self.path)
        self.inboxes.attach(self.con)
        # SQL may never read or write files from now on: audits cannot exfiltrate anything.
        self.con.execute("SET enable_external_access = false")
        # DuckDB checkpoints inside a commit every 16 MB of WAL by default; the recorder
        # checkpoints itself instead (when idle, and once the WAL passes its cap), off
        # the path of the acks (see ``inbox``).
        self.con.execute("SET checkpoint_threshold = ?", [checkpoint_threshold])
        # A bound on memory (DuckDB's default is 80% of RAM): a query past it spills to disk
        # where it can, else fails with "Out of Memory", instead of taking the recorder down.
        self.con.execute("SET memory_limit = ?", [memory_limit()])
        # And no statement can change a setting from now on (file access stays off).
        self.con.execute("SET lock_configuration = true")
        # ``self.con`` only makes cursors (DuckDB refuses a second call on a connection
        # that is busy, even ``cursor()``): writes, checkpoints and audit queries each
        # run on their own cursor. ``_lock``: writes to the log and the idle inbox
        # (moves, projections, checkpoints), one at a time; ``_inbox_lock``: appends to
        # the active inbox, and the inbox bookkeeping. An append never takes ``_lock``:
        # it never waits for the log.
        self._lock = threading.Lock()
        self._inbox_lock = threading.Lock()
        self._factory = threading.Lock()
        self._audits: set[duckdb.DuckDBPyConnection] = set()  # audit cursors running now
        self._audits_lock = threading.Lock()
        # One long-lived cursor for each kind of write (fewer calls into DuckDB: each
        # is a wait for the GIL when the event loop is busy).
        self._log_cur = self._cursor()  # under ``_lock``
        self._append_cur = self._cursor()  # under ``_inbox_lock``
        # The highest rowids of events / rejected_events seen so far: a move scans for
        # the current ones from there (rows are never deleted, so they only grow).
        self._floors = chain.top_rowids(self._log_cur)
        # A log recorded before the chain existed: start the chain over what it holds.
        if (link := chain.start_over(self._log_cur)) is not None:
            log.warning("chain_started", log=str(self.path), batch=link.batch, events=link.events,
                        rejected=link.rejected, head=link.hash,
                        note="this log had no hash chain: it now covers the rows already there, "
                             "which nothing vouches for before now")
        self.chain_batch, self.chain_head = chain.head(self._log_cur)
        # What a stopped or crashed recorder committed but never folded in.
        self.move()
        self.recycle(all_files=True)

    def _drop_planted(self) -> None:
        """Remove functions someone put in the log's file (AAR creates none; one named
        like a built-in would answer in its place in the views, the moves and the chain)."""
        for database, schema, name, kind in guard.planted_functions(self.con):
            # The one name from the file that reaches SQL text: DuckDB cannot bind an
            # identifier, and this one must be dropped. Quoted as an identifier ("" doubled);
            # a name with a NUL or other control character is not dropped but refused.
            if any(ord(c) < 32 or c == "\x7f" for part in (database, schema, name) for c in part):
                raise RuntimeError(f"the log holds a user-defined function with a control character in its name "
                                   f"({schema!r}.{name!r}): the file was edited outside the recorder; not opening it")
            ident = ".".join('"' + part.replace('"', '""') + '"' for part in (database, schema, name))
            definition = self.con.execute(
                "SELECT list(macro_definition) FROM system.main.duckdb_functions() "
                "WHERE database_name = ? AND schema_name = ? AND function_name = ?", [database, schema, name]).fetchall()
            log.error("planted_function_dropped", log=str(self.path), function=f"{schema}.{name}", kind=kind,
                      definition=str(definition[0][0])[:1000],
                      hint="the file was edited outside the recorder: run `aar verify-log`")
            self.con.execute(f"DROP MACRO {'TABLE ' if kind == 'table_macro' else ''}IF EXISTS {ident}")

    @property
    def inbox_paths(self) -> list[Path]:
        return list(self.inboxes.paths)

    def close(self) -> None:
        self.interrupt_audits()
        try:
            self.move()
            self.recycle(all_files=True)  # a clean stop leaves the inboxes empty
        finally:
            with self._lock, self._inbox_lock, self._factory:
                self._log_cur.close()
                self._append_cur.close()
                self.con.close()

    # -- append: batches into the inbox ------------------------------------------------

    def append(self, events: Sequence[Recorded], rejected: Sequence[RejectedRecord] = ()) -> int:
        """Commit one batch to the active inbox; once this returns the batch is durable
        (acknowledge it). ``move`` folds it into the log. Returns the rows written
        (redeliveries included: the log's keys drop them when moved)."""
        return self.append_batch(events, rejected).rows

    def append_batch(self, events: Sequence[Recorded], rejected: Sequence[RejectedRecord] = ()) -> Appended:
        """``append``, saying which events had to become rejections. Never fails because
        of what the messages hold: an event that cannot be stored as is becomes a
        rejection, a rejection's strings are escaped, and a batch that still fails is
        written one message at a time, each stored as itself or as a minimal rejection
        (raw bytes and the reason). ``recorded_at`` is when the batch's write began."""
        now = datetime.now(UTC)
        rows: list[dict[str, Any]] = []
        bad_rows: list[dict[str, Any]] = []
        made: list[dict[str, Any]] = []
        seen: set[tuple[Any, ...]] = set()
        for rec in events:
            try:
                row = poison.event_row(rec, now)
            except Exception as exc:  # noqa: BLE001 - any event that cannot be stored as is
                bad = poison.unstorable_row(rec, exc, now)
                bad_rows.append(bad)
                made.append(bad)
                continue
            # The same message twice in the batch (same stream sequence; without one, the
            # same body): stored once. Other copies of an id go on to the move, which
            # tells repeats from conflicts (``moves``).
            seq = row["stream_seq"]
            key = (seq, row["id"]) if seq is not None else poison.body_key(row)
            if key in seen:
                continue
            seen.add(key)
            rows.append(row)
        seqs: set[int] = set()
        for r in rejected:
            bad = poison.rejection_row(r, now)
            if bad["stream_seq"] is not None:
                if bad["stream_seq"] in seqs:
                    continue
                seqs.add(bad["stream_seq"])
            bad_rows.append(bad)
        if not rows and not bad_rows:
            return Appended(0)
        with self._inbox_lock:
            try:
                self._insert(rows, bad_rows, now)
            except Exception as exc:  # noqa: BLE001 - isolate: one message at a time
                log.error("append_isolating", error=f"{type(exc).__name__}: {exc}"[:500], rows=len(rows) + len(bad_rows))
                made.extend(self._insert_one_by_one(rows, bad_rows, now))
        return Appended(len(rows) + len(bad_rows), tuple(_announced(r) for r in made))

    def _insert(self, rows: list[dict[str, Any]], bad_rows: list[dict[str, Any]], now: datetime) -> None:
        """One transaction with ``rows`` and ``bad_rows``, numbered next (under ``_inbox_lock``)."""
        boxes = self.inboxes
        first = boxes.seq + 1
        for i, bad in enumerate(bad_rows):  # no stream sequence: keyed by its (negative) inbox number
            if bad["stream_seq"] is None:
                bad["stream_seq"] = -(first + len(rows) + i)
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

    def _insert_one_by_one(self, rows: list[dict[str, Any]], bad_rows: list[dict[str, Any]],
                           now: datetime) -> list[dict[str, Any]]:
        """Each row on its own; an event the inbox refuses becomes a rejection, a
        rejection it refuses a minimal one. Returns the rejections made. Raises only when
        even a minimal rejection cannot be written (the store itself is broken)."""
        made: list[dict[str, Any]] = []
        for row in rows:
            try:
                self._insert([row], [], now)
                continue
            except Exception as exc:  # noqa: BLE001 - whatever stops the row, it becomes a rejection
                bad = {"stream_seq": row.get("stream_seq"), "subject": poison.storable(row.get("subject")),
                       "reason": poison.storable(f"unstorable event: {type(exc).__name__}: {exc}", poison.MAX_REASON),
                       "raw": json.dumps(row, default=str, ensure_ascii=True).encode(),
                       "event_id": poison.storable(row.get("id")), "event_type": poison.storable(row.get("type")),
                       "session_id": poison.storable(row.get("session_id")), "recorded_at": now}
            made.append(self._insert_rejection(bad, now))
        for bad in bad_rows:
            self._insert_rejection(bad, now)
        return made

    def _insert_rejection(self, bad: dict[str, Any], now: datetime) -> dict[str, Any]:
        try:
            self._insert([], [bad], now)
            return bad
        except Exception as exc:  # noqa: BLE001 - the last resort: key, ASCII reason, raw bytes
            minimal = poison.minimal_row(bad, exc, now)
            self._insert([], [minimal], now)
            return minimal

    def record(self, events: Sequence[Recorded], rejected: Sequence[RejectedRecord] = ()) -> Moved:
        """``append`` then ``move``: the batch is in the log when this returns (for
        tools and tests that write a log directly; the recorder moves on its own)."""
        self.append(events, rejected)
        return self.move()

    # -- move: the inbox into the log ------------------------------------------------

    def move(self) -> Moved:
        """Fold everything committed to the inboxes so far into the log, in one
        transaction of the log with its chain link (waits while the log checkpoints;
        appends never wait for this). If the log refuses some row, the stretch is split
        until that row is alone, and it is kept as a rejection: nothing stops the rows
        after it."""
        with self._lock:
            with self._inbox_lock:  # a consistent view of what is committed
                top, recorded = self.inboxes.seq, self.inboxes.recorded_upto
            lo = self.inboxes.moved
            if top <= lo:
                return Moved(0, 0, 0, None, chain_batch=self.chain_batch, chain_head=self.chain_head)
            events, rejected, made = self._move_range(lo, top)
        return Moved(events, rejected, top, recorded, tuple(made), self.chain_batch, self.chain_head)

    def _move_range(self, lo: int, hi: int) -> tuple[int, int, list[NewRejection]]:
        try:
            return self._move_once(lo, hi)
        except ROW_ERRORS as exc:
            if hi - lo <= 1:
                return self._quarantine(hi, exc)
            log.warning("move_isolating", lo=lo, hi=hi, error=f"{type(exc).__name__}: {exc}"[:500])
            mid = (lo + hi) // 2
            e1, r1, m1 = self._move_range(lo, mid)
            e2, r2, m2 = self._move_range(mid, hi)
            return e1 + e2, r1 + r2, m1 + m2

    def _move_once(self, lo: int, hi: int) -> tuple[int, int, list[NewRejection]]:
        """Rows in ``(lo, hi]`` into the log, with their link and the mark, in one
        transaction: the plain inserts, or the dedupe path when a key repeats."""
        cur = self._log_cur
        sources = {t: self.inboxes.source(t, lo, hi) for t in inbox.MOVED}
        cur.execute("BEGIN TRANSACTION")
        try:
            tops = chain.top_rowids(cur, self._floors)
            try:
                made: list[NewRejection] = []
                counts = self._plain(cur, sources)
            except duckdb.ConstraintException:
                # A key already in the log or twice in the stretch (a redelivery after a
                # crash, a re-publish past JetStream's duplicate window, a conflict):
                # classify each copy. The plain INSERT is tried first: it costs about half.
                cur.execute("ROLLBACK")
                cur.execute("BEGIN TRANSACTION")
                tops = chain.top_rowids(cur, self._floors)
                counts, made = self._dedupe(cur, sources, tops)
            link = chain.append(cur, tops, events=counts[0] > 0, rejected=counts[1] > 0) \
                if counts[0] or counts[1] else None
            cur.execute(f"UPDATE {inbox.STATE} SET seq = ?", [int(hi)])
            cur.execute("COMMIT")
        except Exception:
            cur.execute("ROLLBACK")
            raise
        self._moved(hi, tops, link)
        return counts[0], counts[1], made

    def _moved(self, hi: int, tops: tuple[int, int], link: chain.Link | None) -> None:
        self.inboxes.moved = hi
        self._floors = tops
        if link is not None:
            self.chain_batch, self.chain_head = link.batch, link.hash

    @staticmethod
    def _plain(cur: duckdb.DuckDBPyConnection, sources: dict[str, tuple[str, list[int]] | None]) -> tuple[int, int]:
        counts = []
        for table in inbox.MOVED:
            src = sources[table]
            counts.append(int(cur.execute(moves.plain_insert(table, src[0]), src[1]).fetchall()[0][0]) if src else 0)
        return counts[0], counts[1]

    @staticmethod
    def _dedupe(cur: duckdb.DuckDBPyConnection, sources: dict[str, tuple[str, list[int]] | None],
                tops: tuple[int, int]) -> tuple[tuple[int, int], list[NewRejection]]:
        ev, rj = sources["events"], sources["rejected_events"]
        if ev is None:  # only rejections repeat: classify an empty stretch
            ev = (f"SELECT * FROM {inbox.catalog(0)}.events LIMIT 0", [])
        cur.execute(moves.classify(ev[0]), ev[1])
        events = int(cur.execute(moves.INSERT_NEW).fetchall()[0][0])
        conflicts = int(cur.execute(moves.COUNT_CONFLICTS).fetchall()[0][0])
        rejected = 0
        if rj is not None or conflicts:
            rejected = int(cur.execute(moves.insert_rejected(rj[0] if rj else None), rj[1] if rj else []).fetchall()[0][0])
        made = []
        if conflicts:
            made = [NewRejection(int(s), subj, reason, int(size))
                    for s, subj, reason, size in cur.execute(moves.STORED_CONFLICTS, [tops[1]]).fetchall()]
        cur.execute(f"DROP TABLE IF EXISTS {moves.TEMP}")
        return (events, rejected), made

    def _quarantine(self, seq: int, error: BaseException) -> tuple[int, int, list[NewRejection]]:
        """Inbox row ``seq``, which the log refused, as a rejection (then, if even that is
        refused, as a minimal one: key, ASCII reason, raw bytes), with its link and the
        mark. Raises only if nothing can be written at all."""
        cur = self._log_cur
        found = self.inboxes.find(cur, seq)
        now = datetime.now(UTC)
        if found is None:
            bad = None
        else:
            table, row = found
            raw = row.get("raw") if table == "rejected_events" else None
            detail = f"this {table} row could not be moved into the log ({type(error).__name__}: {error})"
            bad = {"stream_seq": poison.seq_or_none(row.get("stream_seq")),
                   "subject": poison.storable(row.get("subject")),
                   "reason": poison.storable(f"unstorable: {detail}; its first reason: {row.get('reason')!r}"
                                             if table == "rejected_events" else f"unstorable: {detail}",
                                             poison.MAX_REASON),
                   "raw": poison.raw_bytes(raw) if raw is not None else
                   json.dumps({k: v for k, v in row.items() if k != "inbox_seq"}, default=str).encode(),
                   "event_id": poison.storable(row.get("event_id") if table == "rejected_events" else row.get("id")),
                   "event_type": poison.storable(row.get("event_type") if table == "rejected_events"
                                                 else row.get("type")),
                   "session_id": poison.storable(row.get("session_id")), "recorded_at": now}
            log.error("row_quarantined", inbox_seq=seq, table=table, error=f"{type(error).__name__}: {error}"[:500])
        attempts = [] if bad is None else [bad, poison.minimal_row(bad, error, now)]
        for attempt in attempts:
            key = attempt["stream_seq"]
            if key is None or cur.execute("SELECT count(*) FROM rejected_events WHERE stream_seq = ?",
                                          [key]).fetchall()[0][0]:
                attempt["stream_seq"] = -seq  # taken (or none): keyed by its inbox number
            try:
                return self._store_quarantined(seq, attempt)
            except duckdb.Error as exc:
                error = exc
        # Nothing to keep (the row is gone), or it is stored already: just move past it.
        return self._store_quarantined(seq, None)

    def _store_quarantined(self, seq: int, bad: dict[str, Any] | None) -> tuple[int, int, list[NewRejection]]:
        cur = self._log_cur
        cur.execute("BEGIN TRANSACTION")
        try:
            tops = chain.top_rowids(cur, self._floors)
            link = None
            if bad is not None and not cur.execute("SELECT count(*) FROM rejected_events WHERE stream_seq = ?",
                                                   [bad["stream_seq"]]).fetchall()[0][0]:
                cur.execute("INSERT INTO rejected_events VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                            [bad[c] for c in moves.REJECTED_COLUMNS])
                link = chain.append(cur, tops)
            else:
                bad = None
            cur.execute(f"UPDATE {inbox.STATE} SET seq = ?", [int(seq)])
            cur.execute("COMMIT")
        except Exception:
            cur.execute("ROLLBACK")
            raise
        self._moved(seq, tops, link)
        return (0, 1, [_announced(bad)]) if bad is not None else (0, 0, [])

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

    def query(self, sql: str, params: Sequence[Param] = (), *, max_rows: int | None = None,
              max_bytes: int = MAX_BYTES, timeout_s: float | None = None) -> AuditResult:
        """Read-only audit SQL (see ``guard``) with ``params`` bound, on a cursor of its
        own, in a read-only transaction, interrupted past ``timeout_s``."""
        cur = self._cursor()
        with self._audits_lock:
            self._audits.add(cur)
        try:
            return run_query(cur, sql, params, max_rows=MAX_ROWS if max_rows is None else max_rows,
                             max_bytes=max_bytes, timeout_s=timeout_s)
        finally:
            with self._audits_lock:
                self._audits.discard(cur)
            cur.close()

    def interrupt_audits(self) -> int:
        """Interrupt every audit query running now (at shutdown). Returns how many."""
        with self._audits_lock:
            running = list(self._audits)
        for cur in running:
            try:
                cur.interrupt()
            except duckdb.Error:
                pass
        return len(running)

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


def _announced(row: dict[str, Any]) -> NewRejection:
    return NewRejection(int(row["stream_seq"]), row.get("subject"), str(row["reason"]), len(row.get("raw") or b""))
