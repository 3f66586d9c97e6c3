"""Read-only SQL over the event log: running a guarded statement and shaping its result.

Used by the recorder (answering ``aarq.recorder.audit`` while a session runs, on its
own thread pool: ``audit_pool``) and by ``aar audit`` on the file directly when no
session runs (:class:`FileAudit`, one of the two implementations of
``core.audit.AuditQueries``). Both go through :func:`run_query`, so both get every
layer of ``guard`` (one SELECT; a read-only transaction; a plan of allow-listed
operators; no file access, locked), a time limit and a cap on the bytes of the
result. Values are bound (``params``), never spliced into the text."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import os
import threading
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import duckdb
import structlog

from core.audit import AuditFailed, AuditParamError, AuditRefused, AuditResult, AuditTimeout, Param, check_params

from .guard import check_plan, check_read_only, refuse_planted
from .inbox import unfolded

__all__ = [
    "AuditFailed",
    "AuditParamError",
    "AuditRefused",
    "AuditResult",
    "AuditTimeout",
    "FileAudit",
    "check_read_only",
    "default_timeout_s",
    "open_read_only",
    "run_query",
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


def default_timeout_s() -> float:
    """``AAR_AUDIT_TIMEOUT_S`` if set to a positive number, else DEFAULT_TIMEOUT_S."""
    try:
        value = float(os.environ.get(TIMEOUT_ENV, ""))
    except ValueError:
        return DEFAULT_TIMEOUT_S
    return value if math.isfinite(value) and value > 0 else DEFAULT_TIMEOUT_S


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
    params: Sequence[Param] = (),
    *,
    max_rows: int = MAX_ROWS,
    max_bytes: int = MAX_BYTES,
    timeout_s: float | None = None,
) -> AuditResult:
    """Run one read-only audit statement on ``con`` (see ``guard``) with ``params``
    bound to its ``?`` / ``$n`` placeholders: in a read-only transaction, after its
    plan (made with the same values bound) passed the allow-list, interrupted after
    ``timeout_s`` (default: ``default_timeout_s()``), with at most ``max_rows`` rows and
    about ``max_bytes`` bytes of them (``truncated`` then says so, and why)."""
    values = check_params(params)
    statement = check_read_only(sql, len(values))
    limit = default_timeout_s() if timeout_s is None else float(timeout_s)
    if not math.isfinite(limit) or limit <= 0:
        raise AuditRefused(f"the time limit must be a positive number of seconds, not {timeout_s!r}")
    try:
        con.execute("BEGIN TRANSACTION READ ONLY")
    except duckdb.TransactionException as exc:
        raise AuditRefused(f"cannot start a read-only transaction for the audit: {exc}") from None
    timer = _Deadline(con, limit)
    try:
        check_plan(con, statement, values)
        rel = con.execute(statement, values or None)
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
                row = [json.loads(v) if j and isinstance(v, str) else _jsonable(v) for v, j in zip(raw, is_json, strict=True)]
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
    if waiting := unfolded(path):
        structlog.get_logger("audit").warning(
            "events_not_folded", rows=waiting, log=str(path),
            hint="a recorder stopped before moving these from its inbox into the log; "
                 "they are safe, and the next `aar up` folds them in")
    con = duckdb.connect(str(path), read_only=True,
                         config={"enable_external_access": False, "memory_limit": memory_limit()})
    try:
        _lock_configuration(con)
        refuse_planted(con)
        _current_views(con, path)
    except BaseException:
        con.close()
        raise
    return con


def _current_views(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """This version's read models over the file, as temporary views (they shadow the file's
    own, which the recorder that wrote it defined): a log written before a view was added
    or changed reads the same as a new one. A view whose projection the file does not
    have yet keeps the file's definition; the next ``aar up`` brings the file up to date."""
    from .views import VIEWS

    for name, sql in VIEWS.items():
        try:
            con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {sql.strip()}")
        except duckdb.Error as exc:
            structlog.get_logger("audit").warning("view_from_the_file", view=name, log=str(path), reason=str(exc)[:200])


def _lock_configuration(con: duckdb.DuckDBPyConnection) -> None:
    """Lock the configuration. A second read-only connection to the same file in this
    process shares the first one's database instance, already locked: fine if file
    access is off there too, refused otherwise."""
    try:
        con.execute("SET lock_configuration = true")
    except duckdb.InvalidInputException as exc:
        if "locked" not in str(exc):
            raise
        external = con.execute("SELECT current_setting('enable_external_access')").fetchall()[0][0]
        if str(external).lower() not in ("false", "0"):
            raise AuditRefused("the log is open in this process with file access enabled (an export?): "
                               "not auditing through that connection") from None


class FileAudit:
    """``core.audit.AuditQueries`` on the log file (no stack running): the file opened
    read-only by :func:`open_read_only`, each statement through :func:`run_query`
    (every guard layer, values bound). DuckDB errors come out as
    :class:`AuditFailed`. One statement at a time (a connection runs one)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, *, timeout_s: float | None = None,
                 max_bytes: int = MAX_BYTES, owned: bool = True) -> None:
        self._con: duckdb.DuckDBPyConnection | None = con
        self._lock = threading.Lock()
        self.timeout_s = timeout_s
        self.max_bytes = max_bytes
        self._owned = owned

    @classmethod
    def open(cls, path: Path, *, timeout_s: float | None = None) -> FileAudit:
        """The log at ``path`` (FileNotFoundError when there is none; AuditRefused when
        it holds planted functions, see ``open_read_only``)."""
        return cls(open_read_only(Path(path)), timeout_s=timeout_s)

    def query(self, sql: str, params: Sequence[Param] = (), *, max_rows: int | None = None) -> AuditResult:
        rows = MAX_ROWS if max_rows is None else max_rows
        if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
            raise AuditRefused(f"max_rows must be a positive integer, not {max_rows!r}")
        with self._lock:
            if self._con is None:
                raise AuditRefused("this audit connection is closed")
            try:
                return run_query(self._con, sql, params, max_rows=min(rows, MAX_ROWS), max_bytes=self.max_bytes,
                                 timeout_s=self.timeout_s)
            except duckdb.Error as exc:
                raise AuditFailed(f"{type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        with self._lock:
            con, self._con = self._con, None
        if con is not None and self._owned:
            con.close()

    def __enter__(self) -> FileAudit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
