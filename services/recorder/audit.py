"""Read-only SQL over the event log: the statement guard and result shaping.

Used by the recorder (answering ``aarq.recorder.audit`` while a session runs)
and by ``aar audit`` on the file directly when no session runs."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from pathlib import Path
from typing import Any

import duckdb
import structlog
from pydantic import BaseModel

MAX_ROWS = 100_000


class AuditRefused(ValueError):
    """The statement is not a read-only query."""


class AuditResult(BaseModel):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = False


def sql_literal(value: str) -> str:
    """``value`` as a SQL string literal (quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def check_read_only(sql: str) -> str:
    """Return the single SELECT statement in ``sql`` or raise :class:`AuditRefused`."""
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise AuditRefused(f"cannot parse the query: {exc}") from None
    if not statements:
        raise AuditRefused("empty query")
    if len(statements) > 1:
        raise AuditRefused(f"one statement at a time please ({len(statements)} given)")
    statement = statements[0]
    if statement.type != duckdb.StatementType.SELECT:
        kind = statement.type.name.replace("_", " ")
        raise AuditRefused(
            f"refused: audit queries are read-only, and this is a {kind} statement. "
            "Only SELECT (including WITH ..., DESCRIBE, SHOW, SUMMARIZE) is allowed."
        )
    return sql


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (decimal.Decimal, uuid.UUID)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return str(value)


def run_query(con: duckdb.DuckDBPyConnection, sql: str, *, max_rows: int = MAX_ROWS) -> AuditResult:
    check_read_only(sql)
    rel = con.execute(sql)
    description = rel.description or []
    columns = [d[0] for d in description]
    is_json = [str(d[1]) == "JSON" for d in description]
    rows = rel.fetchmany(max_rows + 1)
    truncated = len(rows) > max_rows
    return AuditResult(
        columns=columns,
        rows=[
            [json.loads(v) if j and isinstance(v, str) else _jsonable(v) for v, j in zip(row, is_json)]
            for row in rows[:max_rows]
        ],
        truncated=truncated,
    )


def open_read_only(path: Path) -> duckdb.DuckDBPyConnection:
    """Open the log read-only, with file access from SQL disabled."""
    if not path.exists():
        raise FileNotFoundError(f"no event log at {path}: run `aar up` first (or set AAR_HOME)")
    from .inbox import unfolded  # (inbox imports this module)

    if waiting := unfolded(path):
        structlog.get_logger("audit").warning(
            "events_not_folded", rows=waiting, log=str(path),
            hint="a recorder stopped before moving these from its inbox into the log; "
                 "they are safe, and the next `aar up` folds them in")
    return duckdb.connect(str(path), read_only=True, config={"enable_external_access": False})
