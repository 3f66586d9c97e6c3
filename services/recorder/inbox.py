"""The recorder's inbox: two small DuckDB files that batches are committed to.

A DuckDB checkpoint blocks every write to its database while it runs (measured with
DuckDB 2.0: an insert into *any* table of the file waits for the whole checkpoint,
indexed or not), and at 2,000 events/s the event log needs one every ~10-20 s. A
write to *another* attached database does not wait. So:

- the recorder commits each batch into the active inbox file
  (``events.inbox-0.duckdb`` or ``-1``; tables without indexes) and acknowledges it
  from there: the event is durable, in DuckDB, and a checkpoint of the log never
  delays the ack;
- a mover folds the inboxes into the log (``events`` / ``rejected_events``, where
  the primary keys deduplicate; see ``moves``) when the log is not checkpointing, a
  few times a second; the same transaction appends the move's link to the log's hash
  chain (``chain``) and advances ``inbox_state.seq`` in the log, so a move is
  all-or-nothing and never repeated;
- an inbox file has a WAL of its own, which must be checkpointed too, and that
  would block appends again. So there are two: appends go to one until its WAL
  passes ``WAL_BYTES``, then to the other; the mover empties and checkpoints the
  idle one once everything in it is in the log (``recycle``);
- a store opening a log folds what a stopped or crashed recorder left in the
  inboxes before anything else.

The views read only the log: an event appears in them once moved, a fraction of a
second after its ack (plus, at most, one checkpoint of the log).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import duckdb

from core.audit import code_identifier

FILES = 2
STATE = code_identifier("inbox_state")  # in the log: how far (inbox_seq) the inboxes have been folded in
# The active file is swapped for the other (if that one is empty) past this much WAL:
# at 2k events/s every ~3 s.
WAL_BYTES = 4_000_000

# The inbox tables are the log's tables as ``CREATE TABLE AS`` copies them: same
# columns and types, no keys (so no index to maintain), then ``inbox_seq``. The payload
# is plain text there: it is validated as JSON once, when moved into the log.
_COPY = {"events": "* REPLACE (payload::VARCHAR AS payload)", "rejected_events": "*"}
# table -> the key the log deduplicates on
MOVED = {"events": "id", "rejected_events": "stream_seq"}


def path_for(log: Path, k: int) -> Path:
    """``events.duckdb`` -> ``events.inbox-<k>.duckdb`` (next to the log)."""
    return log.with_name(f"{log.stem}.inbox-{k}{log.suffix or '.duckdb'}")


def catalog(k: int) -> str:
    """The catalog an inbox file is attached as (an identifier: it cannot be bound)."""
    return code_identifier(f"inbox{int(k)}")


def wal_bytes(db: Path) -> int:
    try:
        return db.with_name(db.name + ".wal").stat().st_size
    except FileNotFoundError:
        return 0


@dataclass
class _File:
    top: int = 0  # highest inbox_seq written to it since it was last emptied (0: none)
    clean: bool = True  # empty and checkpointed: may become the active file


class Inboxes:
    """The two inbox files of a log and what the store knows of them. The store is
    their only writer; it calls the append side under its inbox lock and the move
    side under its log lock (see ``EventStore``)."""

    def __init__(self, log: Path) -> None:
        self.paths = [path_for(log, k) for k in range(FILES)]
        self.files = [_File() for _ in range(FILES)]
        self.active = 0
        self.seq = 0  # the last inbox_seq handed out
        self.moved = 0  # the log's mark: everything up to it is in the log
        self.rejected_top = 0  # the last inbox_seq of a rejection
        self.recorded_upto: datetime | None = None  # recorded_at of the latest append

    def attach(self, con: duckdb.DuckDBPyConnection) -> None:
        """Attach both files and create their tables, and the mark in the log (the log
        must be the connection's current database); then read where things stand."""
        for k, path in enumerate(self.paths):
            con.execute(f"ATTACH ? AS {catalog(k)}", [str(path)])
            for table, columns in _COPY.items():
                con.execute(f"CREATE TABLE IF NOT EXISTS {catalog(k)}.{table} AS "
                            f"SELECT {columns}, NULL::BIGINT AS inbox_seq FROM {table} LIMIT 0")
        con.execute(f"CREATE TABLE IF NOT EXISTS {STATE} (seq BIGINT NOT NULL)")
        if not con.execute(f"SELECT count(*) FROM {STATE}").fetchall()[0][0]:
            con.execute(f"INSERT INTO {STATE} VALUES (0)")
        self.moved = int(con.execute(f"SELECT seq FROM {STATE}").fetchall()[0][0])
        for k, f in enumerate(self.files):
            f.top, rejected_top = (int(v) for v in con.execute(
                f"SELECT (SELECT coalesce(max(inbox_seq), 0) FROM {catalog(k)}.events), "
                f"(SELECT coalesce(max(inbox_seq), 0) FROM {catalog(k)}.rejected_events)").fetchall()[0])
            f.top = max(f.top, rejected_top)
            f.clean = f.top == 0 and wal_bytes(self.paths[k]) == 0
            self.rejected_top = max(self.rejected_top, rejected_top)
        self.seq = max([self.moved] + [f.top for f in self.files])

    # -- append side ---------------------------------------------------------------

    def target(self) -> str:
        return catalog(self.active)

    def appended(self, last: int, *, rejected: bool, recorded_at: datetime) -> None:
        """Note a committed append of rows up to ``last``, and swap files if due."""
        self.seq = last
        f = self.files[self.active]
        f.top, f.clean = last, False
        if rejected:
            self.rejected_top = last
        self.recorded_upto = recorded_at
        other = (self.active + 1) % FILES
        if self.files[other].clean and wal_bytes(self.paths[self.active]) >= WAL_BYTES:
            self.active = other

    # -- move side -----------------------------------------------------------------

    def source(self, table: str, lo: int, hi: int) -> tuple[str, list[int]] | None:
        """SQL (and its parameters) for the rows of ``table`` with ``lo < inbox_seq <= hi``
        in both files; None when no file can hold any."""
        if table == "rejected_events" and self.rejected_top <= lo:
            return None  # no rejection to move: skip the statement
        parts, params = [], []
        for k, f in enumerate(self.files):
            if f.top > lo:
                parts.append(f"SELECT * FROM {catalog(k)}.{table} WHERE inbox_seq > ? AND inbox_seq <= ?")
                params += [int(lo), int(hi)]
        if not parts:
            return None
        return " UNION ALL ".join(parts), params

    def find(self, con: duckdb.DuckDBPyConnection, seq: int) -> tuple[str, dict[str, object]] | None:
        """The inbox row numbered ``seq`` (its table and its columns), if any."""
        for k in range(FILES):
            for table in MOVED:
                cur = con.execute(f"SELECT * FROM {catalog(k)}.{table} WHERE inbox_seq = ? LIMIT 1", [int(seq)])
                row = cur.fetchone()
                if row is not None:
                    return table, dict(zip([d[0] for d in cur.description], row, strict=True))
        return None

    def recyclable(self, *, all_files: bool = False) -> list[int]:
        """Files that hold only rows already in the log and are not clean: the idle one
        (or every one, when nothing appends)."""
        return [k for k, f in enumerate(self.files)
                if (all_files or k != self.active) and not f.clean and f.top <= self.moved]


def recycle(con: duckdb.DuckDBPyConnection, k: int) -> bool:
    """Empty inbox file ``k`` and checkpoint it; False if DuckDB declined the checkpoint
    (try again later)."""
    for table in MOVED:
        con.execute(f"DELETE FROM {catalog(k)}.{table}")
    try:
        con.execute(f"CHECKPOINT {catalog(k)}")
    except duckdb.TransactionException:
        return False
    return True


def unfolded(log: Path) -> int:
    """For read-only readers: how many rows a recorder committed to the inboxes of
    ``log`` and never folded into it (it was stopped by a crash); 0 when there are
    none. The next recorder to open the log folds them in."""
    boxes = [(k, p) for k in range(FILES) if (p := path_for(log, k)).exists()]
    if not boxes or not log.exists():
        return 0
    con = duckdb.connect(":memory:")
    try:
        con.execute("ATTACH ? AS aar (READ_ONLY)", [str(log)])
        has_state = con.execute("SELECT count(*) FROM duckdb_tables() WHERE database_name = 'aar' "
                                "AND table_name = ?", [STATE]).fetchall()[0][0]
        mark = int(con.execute(f"SELECT seq FROM aar.{STATE}").fetchall()[0][0]) if has_state else 0
        total = 0
        for k, path in boxes:
            con.execute(f"ATTACH ? AS {catalog(k)} (READ_ONLY)", [str(path)])
            tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ?",
                                                [catalog(k)]).fetchall()}
            total += sum(int(con.execute(f"SELECT count(*) FROM {catalog(k)}.{t} WHERE inbox_seq > ?", [mark])
                             .fetchall()[0][0]) for t in MOVED if t in tables)
        return total
    except duckdb.Error:
        return 0  # held by a running recorder, or not an inbox: nothing to say
    finally:
        con.close()
