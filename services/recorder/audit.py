"""Read-only SQL over the event log: running a guarded statement and shaping its result.

Used by the recorder (answering ``aarq.recorder.audit`` while a session runs, on its
own thread pool: ``audit_pool``) and by ``aar audit`` on the file directly when no
session runs. Both go through :func:`run_query`, so both get every layer of
``guard`` (one SELECT; a read-only transaction; a plan of allow-listed operators;
no file access, locked), a time limit and a cap on the bytes of the result."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import os
import threading
import uuid
from pathlib import Path
from typing import Any

import duckdb
import structlog
from pydantic import BaseModel

from .guard import AuditRefused, check_plan, check_read_only, refuse_planted

__all__ = [
    "AuditRefused",
    "AuditResult",
    "AuditTimeout",
    "check_read_only",
    "default_timeout_s",
    "open_read_only",
    "run_query",
    "sql_literal",
]

MAX_ROWS = 100_000
# Bytes of result rows (as JSON) one audit may return. The recorder lowers it to fit a
# NATS reply (the server's max_payload); ``aar audit`` on the file uses this.
MAX_BYTES = 64 * 1024 * 1024
# A statement running longer is interrupted (the recorder's limit; a request may ask
# for less). Below the 60 s ``aar audit`` waits for the recorder's answer.
DEFAULT_TIMEOUT_S = 30.0
TIMEOUT_ENV = "AAR_AUDIT_TIMEOUT_S"
FETCH_CHUNK = 2048


class AuditTimeout(RuntimeError):
    """The statement ran past its time limit and was interrupted."""


class AuditResult(BaseModel):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = False
    truncated_reason: str | None = None  # why ``rows`` stops short (row or byte cap)


def default_timeout_s() -> float:
    """``AAR_AUDIT_TIMEOUT_S`` if set to a positive number, else DEFAULT_TIMEOUT_S."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV, ""))
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if math.isfinite(value) and value > 0 else DEFAULT_TIMEOUT_S


def sql_literal(value: str) -> str:
    """``value`` as a SQL string literal (quotes doubled)."""
    return "'" + value.replace("'", "''") + "'"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)  # NaN/inf are not JSON
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


def _row_bytes(row: list[Any]) -> int:
    """About the bytes ``row`` takes in the JSON reply (a little over, never under)."""
    return len(json.dumps(row, default=str, ensure_ascii=False).encode("utf-8", "backslashreplace")) + 1


def run_query(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    *,
    max_rows: int = MAX_ROWS,
    max_bytes: int = MAX_BYTES,
    timeout_s: float | None = None,
) -> AuditResult:
    """Run one read-only audit statement on ``con`` (see ``guard``): in a read-only
    transaction, after its plan passed the allow-list, interrupted after ``timeout_s``
    (default: ``default_timeout_s()``), with at most ``max_rows`` rows and about
    ``max_bytes`` bytes of them (``truncated`` then says so, and why)."""
    statement = check_read_only(sql)
    limit = default_timeout_s() if timeout_s is None else float(timeout_s)
    if not math.isfinite(limit) or limit <= 0:
        raise AuditRefused(f"the time limit must be a positive number of seconds, not {timeout_s!r}")
    try:
        con.execute("BEGIN TRANSACTION READ ONLY")
    except duckdb.TransactionException as exc:
        raise AuditRefused(f"cannot start a read-only transaction for the audit: {exc}") from None
    timer = _Deadline(con, limit)
    try:
        check_plan(con, statement)
        rel = con.execute(statement)
        description = rel.description or []
        columns = [d[0] for d in description]
        is_json = [str(d[1]) == "JSON" for d in description]
        rows: list[list[Any]] = []
        size = 0
        reason: str | None = None
        while reason is None:
            chunk = rel.fetchmany(FETCH_CHUNK)
            if not chunk:
                break
            for raw in chunk:
                if len(rows) >= max_rows:
                    reason = f"more than {max_rows:,} rows: only the first {max_rows:,} are returned"
                    break
                row = [json.loads(v) if j and isinstance(v, str) else _jsonable(v) for v, j in zip(raw, is_json)]
                size += _row_bytes(row)
                if size > max_bytes:
                    reason = (f"the result passed {max_bytes:,} bytes: only the first {len(rows):,} rows are "
                              "returned (select fewer columns or rows, or aggregate)")
                    break
                rows.append(row)
        return AuditResult(columns=columns, rows=rows, truncated=reason is not None, truncated_reason=reason)
    except duckdb.InterruptException:
        if timer.fired:
            raise AuditTimeout(f"audit query exceeded {limit:g} s and was stopped") from None
        raise AuditTimeout("audit query was stopped (the recorder is shutting down)") from None
    except (duckdb.TransactionException, duckdb.InvalidInputException) as exc:
        if "read-only" in str(exc):
            raise AuditRefused(f"refused: audit queries are read-only, and this one writes ({exc})") from None
        raise
    finally:
        timer.cancel()
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass  # interrupted or already closed: nothing was written either way


class _Deadline:
    """Interrupts ``con`` once ``seconds`` have passed (unless cancelled first)."""

    __slots__ = ("_con", "_done", "_lock", "_timer", "fired")

    def __init__(self, con: duckdb.DuckDBPyConnection, seconds: float) -> None:
        self._con = con
        self._lock = threading.Lock()
        self._done = False
        self.fired = False
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.fired = True
            try:
                self._con.interrupt()
            except duckdb.Error:
                pass

    def cancel(self) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()


MEMORY_ENV = "AAR_RECORDER_MEMORY"  # a DuckDB size ("4GB"); default: a quarter of RAM, at most 4 GiB


def memory_limit() -> str:
    """The memory DuckDB may use for the log (the recorder's, or a read-only audit's)."""
    if given := os.environ.get(MEMORY_ENV):
        return given
    import psutil

    return f"{min(4 << 30, psutil.virtual_memory().total // 4) >> 20}MB"


def open_read_only(path: Path) -> duckdb.DuckDBPyConnection:
    """Open the log read-only, with file access from SQL disabled and the configuration
    locked (no statement can turn file access back on). Refused (:class:`AuditRefused`)
    when someone planted functions in the file (see ``guard.planted_functions``)."""
    if not path.exists():
        raise FileNotFoundError(f"no event log at {path}: run `aar up` first (or set AAR_HOME)")
    from .inbox import unfolded  # (inbox imports this module)

    if waiting := unfolded(path):
        structlog.get_logger("audit").warning(
            "events_not_folded", rows=waiting, log=str(path),
            hint="a recorder stopped before moving these from its inbox into the log; "
                 "they are safe, and the next `aar up` folds them in")
    con = duckdb.connect(str(path), read_only=True,
                         config={"enable_external_access": False, "memory_limit": memory_limit()})
    try:
        con.execute("SET lock_configuration = true")
        refuse_planted(con)
    except BaseException:
        con.close()
        raise
    return con
