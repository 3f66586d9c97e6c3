"""The audit-query interface: read-only SQL over the event log, with bound parameters.

Two implementations answer it, and every caller (``aar audit``, ``aar lineage``, the
session summary, ``aar replay``, ``aar verify-log``) is written against this
interface only, so none of them knows or cares which one it got:

- ``services.recorder.audit.FileAudit``: the log file opened read-only, behind every
  layer of ``services.recorder.guard`` (when no stack runs);
- ``services.recorder.remote.RecorderAudit``: the running recorder, asked over NATS
  as admin on ``aarq.recorder.audit`` with an :class:`AuditRequest` (the recorder
  holds the file, so nobody else may open it).

Both pass one shared contract test (``tests/test_audit_queries.py``).

Why parameters: ids, titles and session names in the log are written by agents, so
they are untrusted text. No such value is ever spliced into SQL: it travels as a
bound parameter (``?`` or ``$1``), which DuckDB does not parse as SQL, whatever quotes,
``--``, ``;`` or NUL it holds (the guard refuses ``query()`` and ``query_table()``, the two
table functions that would run a string as SQL). Where DuckDB cannot bind (``CREATE VIEW`` text,
identifiers, catalog names), the value comes from AAR's own code, never from data,
and :func:`code_identifier` / :func:`code_literal` check that it does look like it.

This module is on the ground floor (``core``): it imports nothing of AAR's, so a
client can catch :class:`AuditRefused` without importing any service.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, Protocol, TypeAlias, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "MAX_LIST_ITEMS",
    "MAX_PARAMS",
    "MAX_PARAM_BYTES",
    "MAX_PARAM_CHARS",
    "MAX_SQL_CHARS",
    "AuditFailed",
    "AuditParamError",
    "AuditQueries",
    "AuditRefused",
    "AuditRequest",
    "AuditResult",
    "AuditTimeout",
    "Param",
    "Scalar",
    "check_params",
    "code_identifier",
    "code_literal",
    "is_text",
]

Scalar: TypeAlias = str | int | float | bool | None
# One bound value: a scalar, or a list of scalars of one kind (bound as one DuckDB
# list: ``list_contains(?, post_id)``, ``post_id = ANY(?)``).
Param: TypeAlias = Scalar | list[str] | list[int] | list[float] | list[bool] | list[Scalar]

# Caps on what one request may bind (the recorder's request travels in one NATS
# message, 1 MiB by default; lineage binds at most 50 ids in a list).
MAX_PARAMS = 1_000
MAX_LIST_ITEMS = 10_000
MAX_PARAM_CHARS = 100_000  # characters of one string
MAX_PARAM_BYTES = 512 * 1024  # about the JSON bytes of all parameters together
MAX_SQL_CHARS = 200_000
_INT_MIN, _INT_MAX = -(2**63), 2**63 - 1  # DuckDB BIGINT, and exact in every JSON reader that matters


class AuditRefused(ValueError):
    """The audit request is refused before it runs: the statement is not a read-only
    query (or not one the guard can vouch for), or the request is malformed."""


class AuditParamError(AuditRefused):
    """A bound parameter is not one an audit accepts (its type, its size, text that is
    not valid Unicode), or the statement and the parameters do not agree in number."""


class AuditTimeout(RuntimeError):
    """The statement ran past its time limit and was interrupted."""


class AuditFailed(RuntimeError):
    """The statement was allowed but the database could not answer it: an unknown
    column or table, a bad cast, a syntax DuckDB binds but cannot run. The message
    starts with DuckDB's error class (``BinderException: ...``)."""


class AuditResult(BaseModel):
    columns: list[str]
    rows: list[list[Any]]
    truncated: bool = False
    truncated_reason: str | None = None  # why ``rows`` stops short (row or byte cap)

    def dicts(self) -> list[dict[str, Any]]:
        """The rows as ``{column: value}`` (a repeated column name keeps its last value)."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


def is_text(value: str) -> bool:
    """Whether ``value`` can be encoded as UTF-8: not so when it holds a lone surrogate
    (e.g. a command-line argument with invalid bytes). No value in the log can equal
    such a string (the schemas refuse it), and DuckDB cannot bind it."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return "str"


def _check_scalar(value: Any, where: str) -> int:
    """``value`` checked; returns about the JSON bytes it takes."""
    if value is None:
        return 4
    if isinstance(value, bool):
        return 5
    if isinstance(value, int):
        if not _INT_MIN <= value <= _INT_MAX:
            raise AuditParamError(f"{where} is an integer outside 64 bits ({value})")
        return 20
    if isinstance(value, float):
        if not math.isfinite(value):
            raise AuditParamError(f"{where} is {value!r}: only finite numbers can be bound")
        return 24
    if isinstance(value, str):
        if len(value) > MAX_PARAM_CHARS:
            raise AuditParamError(f"{where} is a string of {len(value):,} characters (at most {MAX_PARAM_CHARS:,})")
        if not is_text(value):
            bad = next(i for i, c in enumerate(value) if 0xD800 <= ord(c) <= 0xDFFF)
            raise AuditParamError(
                f"{where} is not valid Unicode text (a lone surrogate at position {bad}): it cannot be bound, "
                "and no value in the log can equal it")
        return len(value) + 2 + value.count('"') + value.count("\\")
    raise AuditParamError(
        f"{where} is a {type(value).__name__}: a parameter is a string, a number, a boolean, null, "
        "or a list of one kind of those")


def check_params(params: Any) -> list[Param]:
    """``params`` as a list of bound values, or :class:`AuditParamError` (a ValueError)
    saying which one is wrong and why. Accepted: str, int (64-bit), finite float, bool,
    None, and lists (or tuples) of those, all of one kind (None aside), not nested."""
    if params is None:
        return []
    if isinstance(params, (str, bytes, dict)) or not isinstance(params, (list, tuple)):
        raise AuditParamError(f"params must be a list of values, not a {type(params).__name__}")
    if len(params) > MAX_PARAMS:
        raise AuditParamError(f"{len(params):,} parameters given (at most {MAX_PARAMS:,})")
    out: list[Param] = []
    size = 2
    for i, value in enumerate(params, 1):
        where = f"parameter {i}"
        if isinstance(value, (list, tuple)):
            if len(value) > MAX_LIST_ITEMS:
                raise AuditParamError(f"{where} is a list of {len(value):,} items (at most {MAX_LIST_ITEMS:,})")
            kinds = set()
            for j, item in enumerate(value, 1):
                if isinstance(item, (list, tuple, dict)):
                    raise AuditParamError(f"{where} holds a nested {type(item).__name__} (item {j}): "
                                          "a list parameter holds scalars only")
                size += _check_scalar(item, f"{where}, item {j},") + 1
                if item is not None:
                    kinds.add(_kind(item))
            if len(kinds) > 1:
                raise AuditParamError(f"{where} mixes {' and '.join(sorted(kinds))} items: a list parameter "
                                      "holds one kind of value")
            out.append(list(value))
        else:
            size += _check_scalar(value, where) + 1
            out.append(value)
        if size > MAX_PARAM_BYTES:
            raise AuditParamError(f"the parameters pass {MAX_PARAM_BYTES:,} bytes (at {where})")
    return out


class AuditRequest(BaseModel):
    """What ``aarq.recorder.audit`` takes: one read-only statement and the values bound
    to its ``?`` / ``$n`` placeholders (``params``), optionally a shorter time limit
    than the recorder's and a row cap."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sql: str = Field(max_length=MAX_SQL_CHARS)
    params: list[Any] = Field(default_factory=list)
    # strict: a bool, a string or a float is not a row count (the file path refuses them too)
    timeout_s: float | None = Field(default=None, gt=0, allow_inf_nan=False, strict=True)
    max_rows: int | None = Field(default=None, ge=1, strict=True)

    @field_validator("params", mode="before")
    @classmethod
    def _params(cls, value: Any) -> list[Param]:
        return check_params(value)

    @field_validator("sql")
    @classmethod
    def _sql(cls, value: str) -> str:
        if not is_text(value):
            raise AuditRefused("the query is not valid Unicode text (a lone surrogate): bind odd values as params")
        return value

    @classmethod
    def parse(cls, data: Any) -> AuditRequest:
        """A request from its JSON bytes (or an already decoded object), or
        :class:`AuditRefused` / :class:`AuditParamError` naming what is wrong (the
        recorder's error reply)."""
        import json

        from pydantic import ValidationError

        if isinstance(data, (bytes, bytearray, str)):
            try:
                data = json.loads(data)
            except (ValueError, RecursionError):
                raise AuditRefused('the audit request must be JSON: {"sql": "SELECT ...", "params": [...]}') from None
        if not isinstance(data, dict):
            raise AuditRefused('the audit request must be a JSON object: {"sql": "SELECT ...", "params": [...]}')
        try:
            return cls.model_validate(data)
        except RecursionError:
            raise AuditRefused("bad audit request: nested too deeply") from None
        except ValidationError as exc:
            problems = []
            for e in exc.errors(include_url=False, include_input=False):
                where = ".".join(str(part) for part in e.get("loc", ())) or "request"
                problems.append(f"{where}: {str(e.get('msg', '')).removeprefix('Value error, ')}")
            kind = AuditParamError if any(p.startswith("params") for p in problems) else AuditRefused
            raise kind("bad audit request: " + "; ".join(problems)) from None


@runtime_checkable
class AuditQueries(Protocol):
    """Read-only SQL over the event log, values bound, not spliced.

    ``query`` is synchronous because its callers are (the CLI, ``aar replay``). Every
    implementation: runs one SELECT (``WITH``, ``DESCRIBE``, ``SHOW``, ``SUMMARIZE``)
    behind the recorder's guard, else raises :class:`AuditRefused`; binds ``params``
    positionally to ``?`` / ``$1`` (checked by :func:`check_params`: a bad one is
    :class:`AuditParamError`); returns at most ``max_rows`` rows (``truncated`` and
    ``truncated_reason`` then say so); raises :class:`AuditTimeout` past its time
    limit and :class:`AuditFailed` when the database cannot answer (an unknown
    column). ``close`` releases the file or the connection; a closed one answers no
    more queries."""

    def query(self, sql: str, params: Sequence[Param] = (), *, max_rows: int | None = None) -> AuditResult: ...

    def close(self) -> None: ...


# -- values that cannot be bound ----------------------------------------------------------

_IDENTIFIER = re.compile(r"^[a-z_][a-z0-9_.]*$")
_CODE_LITERAL = re.compile(r"^[A-Za-z0-9_.-]*$")


def code_identifier(name: str) -> str:
    """``name`` unchanged, once checked to be an identifier AAR's code chose (a catalog,
    a table, a ``log.`` prefix): where SQL needs an identifier DuckDB cannot bind one.
    Anything else (a quote, a space, a capital) is a ValueError: data never gets here."""
    if not isinstance(name, str) or not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"not an identifier from AAR's code: {name!r}")
    return name


def code_literal(value: str) -> str:
    """``value`` as a SQL string literal, for constants of AAR's code (event types,
    projection names, the chain's version) in SQL that cannot take parameters (view
    definitions, the chain's formulas). Only letters, digits, ``_``, ``.`` and ``-`` are
    allowed, so there is nothing to quote: data never gets here."""
    if not isinstance(value, str) or not _CODE_LITERAL.fullmatch(value):
        raise ValueError(f"not a constant from AAR's code: {value!r}")
    return f"'{value}'"
