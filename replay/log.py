"""Reading one session's events back from the log, in order.

Rows are plain tuples (see :data:`COLUMNS`), not pydantic models: a rebuild of a
million events must stay within seconds, and the log was validated when it was
recorded. Order is ``(time, id)``: the order the events were created in (ids
are ULIDs), which is also how the SQL views break ties.

Two sources, chosen like ``aar audit``: the DuckDB file opened read-only when no
stack runs, else the recorder over NATS (paged, keyset on ``(time, id)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from core.paths import AarHome
from services.recorder.audit import sql_literal

COLUMNS = ("id", "type", "session_id", "time_us", "correlation_id", "causation_id", "payload", "source",
           "schema_version", "stream_seq")
_SELECT = (
    "SELECT id, type, session_id, epoch_us(time) AS time_us, correlation_id, causation_id, "
    "{payload} AS payload, source, schema_version, stream_seq FROM events"
)


def _select(skip_payloads: frozenset[str] = frozenset()) -> str:
    payload = "CAST(payload AS VARCHAR)"
    if skip_payloads:
        payload = (f"CASE WHEN type IN ({', '.join(sql_literal(t) for t in sorted(skip_payloads))}) "
                   f"THEN 'null' ELSE {payload} END")
    return _SELECT.format(payload=payload)
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
    def parse(cls, text: str | None) -> "Until | None":
        if text is None:
            return None
        try:
            t = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            return cls(event_id=text)
        return cls(time_us=datetime_to_us(t))


def rows_from_connection(con: Any, session_id: str | None, *, until: Until | None = None,
                         skip_payloads: frozenset[str] = frozenset()) -> list[Row]:
    """All rows of a session (every session when None) from a DuckDB connection, ordered.
    Rows of the types in ``skip_payloads`` come without their payload (``"null"``): a rebuild
    passes ``replay.timeline.UNREAD_FOLDED`` and saves reading what it would never parse."""
    where = [] if session_id is None else [f"session_id = {sql_literal(session_id)}"]
    if until is not None and until.time_us is not None:
        where.append(f"epoch_us(time) <= {int(until.time_us)}")
    elif until is not None and until.event_id is not None:
        found = con.execute(f"SELECT epoch_us(time) FROM events WHERE id = {sql_literal(until.event_id)}").fetchall()
        if not found:
            raise UnknownSession(f"no event with id {until.event_id!r}")
        where.append(f"(epoch_us(time), id) <= ({int(found[0][0])}, {sql_literal(until.event_id)})")
    sql = _select(skip_payloads) + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY time, id"
    table = con.sql(sql).to_arrow_table()
    with gc_paused():
        cols = [table.column(name).to_pylist() for name in COLUMNS]
        del table
        return list(map(Row._make, zip(*cols)))


Query = Callable[[str], dict[str, Any]]


def rows_from_audit(query: Query, session_id: str, *, until: Until | None = None, page: int = PAGE,
                    skip_payloads: frozenset[str] = frozenset()) -> list[Row]:
    """The same rows through read-only audit SQL (the recorder while a stack runs), paged."""
    where = f"session_id = {sql_literal(session_id)}"
    if until is not None and until.time_us is not None:
        where += f" AND epoch_us(time) <= {int(until.time_us)}"
    elif until is not None and until.event_id is not None:
        found = query(f"SELECT epoch_us(time) FROM events WHERE id = {sql_literal(until.event_id)}")["rows"]
        if not found:
            raise UnknownSession(f"no event with id {until.event_id!r}")
        where += f" AND (epoch_us(time), id) <= ({int(found[0][0])}, {sql_literal(until.event_id)})"
    out: list[Row] = []
    after = ""
    while True:
        result = query(f"{_select(skip_payloads)} WHERE {where}{after} ORDER BY time, id LIMIT {int(page)}")
        rows = [Row._make(r) for r in result["rows"]]
        out += rows
        if len(rows) < page:
            return out
        last = rows[-1]
        after = f" AND (epoch_us(time), id) > ({int(last.time_us)}, {sql_literal(last.id)})"


def load_session(session_id: str, *, until: Until | None = None, home: AarHome | None = None,
                 skip_payloads: frozenset[str] = frozenset()) -> list[Row]:
    """A session's rows: through the recorder while a stack runs on ``home``, else from the file."""
    home = home or AarHome.from_env()
    from bus.settings import admin_settings_from_home

    settings = admin_settings_from_home(home)
    if settings is not None:
        from bus import Bus

        async def collect() -> list[Row]:
            bus = await Bus.connect(settings, name="aar-replay")
            try:
                loop = asyncio.get_running_loop()

                def query(sql: str) -> dict[str, Any]:
                    return asyncio.run_coroutine_threadsafe(
                        bus.request("recorder", "audit", {"sql": sql}, timeout=60), loop).result()

                return await asyncio.to_thread(rows_from_audit, query, session_id, until=until,
                                               skip_payloads=skip_payloads)
            finally:
                await bus.close()

        rows = asyncio.run(collect())
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
    return json.loads(row.payload)  # type: ignore[no-any-return]


def iter_types(rows: Sequence[Row], *types: str) -> Iterator[tuple[Row, dict[str, Any]]]:
    wanted = set(types)
    for row in rows:
        if row.type in wanted:
            yield row, json.loads(row.payload)


def db_path(home: AarHome | None = None) -> Path:
    return (home or AarHome.from_env()).events_db
