"""Reading one session's events back from the log, in order.

Rows are plain tuples (see :data:`COLUMNS`), not pydantic models: a rebuild of a
million events must stay within seconds, and the log was validated when it was
recorded. Order is ``(time, id)``: the order the events were created in (ids
are ULIDs), which is also how the SQL views break ties.

Two sources, chosen like ``aar audit``: the DuckDB file opened read-only when no
stack runs, else the recorder over NATS (``core.audit.AuditQueries``, paged, keyset
on ``(time, id)``). Session and event ids are bound parameters in both.
"""

from __future__ import annotations

import contextlib
import gc
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from core.audit import AuditQueries, Param, is_text
from core.paths import AarHome

COLUMNS = ("id", "type", "session_id", "time_us", "correlation_id", "causation_id", "payload", "source",
           "schema_version", "stream_seq")
_SELECT = (
    "SELECT id, type, session_id, epoch_us(time) AS time_us, correlation_id, causation_id, "
    "{payload} AS payload, source, schema_version, stream_seq FROM events"
)


def _select(skip_payloads: frozenset[str] = frozenset()) -> tuple[str, list[Param]]:
    """The SELECT of every column and its parameters (the skipped types, bound as one list)."""
    payload = "CAST(payload AS VARCHAR)"
    if not skip_payloads:
        return _SELECT.format(payload=payload), []
    return (_SELECT.format(payload=f"CASE WHEN list_contains(?::VARCHAR[], type) THEN 'null' ELSE {payload} END"),
            [sorted(skip_payloads)])
PAGE = 50_000


class Row(NamedTuple):
    id: str
    type: str
    session_id: str
    time_us: int
    correlation_id: str | None
    causation_id: str | None
    payload: str  # the payload JSON text as recorded ("null" where the load skipped it, see skip_payloads)
    source: str
    schema_version: int
    stream_seq: int | None


def us_to_datetime(us: int) -> datetime:
    return datetime.fromtimestamp(us // 1_000_000, UTC).replace(microsecond=us % 1_000_000)


def datetime_to_us(t: datetime) -> int:
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    delta = t - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic garbage collection inside: building a million rows (or read-model
    dicts) would otherwise trigger full collections over everything already built,
    ~40% of a rebuild. Nothing built here forms reference cycles."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class UnknownSession(LookupError):
    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True, slots=True)
class Until:
    """Where a replay stops: an event id (inclusive) or a time (inclusive)."""

    event_id: str | None = None
    time_us: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> Until | None:
        if text is None:
            return None
        try:
            t = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return cls(event_id=text)
        return cls(time_us=datetime_to_us(t))


def _unknown_event(event_id: str) -> UnknownSession:
    return UnknownSession(f"no event with id {event_id!r}")


def rows_from_connection(con: Any, session_id: str | None, *, until: Until | None = None,
                         skip_payloads: frozenset[str] = frozenset()) -> list[Row]:
    """All rows of a session (every session when None) from a DuckDB connection, ordered.
    Rows of the types in ``skip_payloads`` come without their payload (``"null"``): a rebuild
    passes ``replay.timeline.UNREAD_FOLDED`` and saves reading what it would never parse."""
    select, params = _select(skip_payloads)
    where: list[str] = []
    if session_id is not None:
        if not is_text(session_id):
            return []  # (a lone surrogate: no session id holds one, and it cannot be bound)
        where.append("session_id = ?")
        params.append(session_id)
    if until is not None and until.time_us is not None:
        where.append("epoch_us(time) <= ?")
        params.append(int(until.time_us))
    elif until is not None and until.event_id is not None:
        if not is_text(until.event_id):
            raise _unknown_event(until.event_id)
        found = con.execute("SELECT epoch_us(time) FROM events WHERE id = ?", [until.event_id]).fetchall()
        if not found:
            raise _unknown_event(until.event_id)
        where.append("(epoch_us(time), id) <= (?, ?)")
        params += [int(found[0][0]), until.event_id]
    sql = select + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY time, id"
    table = con.sql(sql, params=params or None).to_arrow_table()
    with gc_paused():
        cols = [table.column(name).to_pylist() for name in COLUMNS]
        del table
        return list(map(Row._make, zip(*cols, strict=True)))


def rows_from_audit(audit: AuditQueries, session_id: str, *, until: Until | None = None, page: int = PAGE,
                    skip_payloads: frozenset[str] = frozenset()) -> list[Row]:
    """The same rows through read-only audit SQL (the recorder while a stack runs), paged."""
    if not is_text(session_id):
        return []
    select, first = _select(skip_payloads)
    where, params = "session_id = ?", [*first, session_id]
    if until is not None and until.time_us is not None:
        where += " AND epoch_us(time) <= ?"
        params.append(int(until.time_us))
    elif until is not None and until.event_id is not None:
        if not is_text(until.event_id):
            raise _unknown_event(until.event_id)
        found = audit.query("SELECT epoch_us(time) FROM events WHERE id = ?", [until.event_id]).rows
        if not found:
            raise _unknown_event(until.event_id)
        where += " AND (epoch_us(time), id) <= (?, ?)"
        params += [int(found[0][0]), until.event_id]
    out: list[Row] = []
    after, keyset = "", list[Param]()
    while True:
        result = audit.query(f"{select} WHERE {where}{after} ORDER BY time, id LIMIT ?",
                             [*params, *keyset, int(page)], max_rows=page)
        rows = [Row._make(r) for r in result.rows]
        out += rows
        if len(rows) < page and not result.truncated:
            return out
        if not rows:
            raise RuntimeError(f"the audit returned no rows of a page: {result.truncated_reason}")
        last = rows[-1]
        after, keyset = " AND (epoch_us(time), id) > (?, ?)", [int(last.time_us), last.id]


def load_session(session_id: str, *, until: Until | None = None, home: AarHome | None = None,
                 skip_payloads: frozenset[str] = frozenset()) -> list[Row]:
    """A session's rows: through the recorder while a stack runs on ``home``, else from the file."""
    home = home or AarHome.from_env()
    from bus.settings import admin_settings_from_home

    settings = admin_settings_from_home(home)
    if settings is not None:
        from services.recorder.remote import RecorderAudit

        with contextlib.closing(RecorderAudit(settings, name="aar-replay")) as audit:
            rows = rows_from_audit(audit, session_id, until=until, skip_payloads=skip_payloads)
    else:
        from services.recorder.audit import open_read_only

        con = open_read_only(home.events_db)
        try:
            rows = rows_from_connection(con, session_id, until=until, skip_payloads=skip_payloads)
        finally:
            con.close()
    if not rows and until is None:
        raise UnknownSession(f"no events for session {session_id!r} in the log (see `aar sessions`)")
    return rows


def payload(row: Row) -> dict[str, Any]:
    return json.loads(row.payload)


def iter_types(rows: Sequence[Row], *types: str) -> Iterator[tuple[Row, dict[str, Any]]]:
    wanted = set(types)
    for row in rows:
        if row.type in wanted:
            yield row, json.loads(row.payload)


def db_path(home: AarHome | None = None) -> Path:
    return (home or AarHome.from_env()).events_db
