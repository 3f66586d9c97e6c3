"""What audit SQL may be: the checks made before a statement runs.

Audit SQL is untrusted (any role with audit access, and anything pasted into
``aar audit``). Layers, each enough to stop a class on its own:

1. ``check_read_only``: the text must parse as exactly one statement of type
   SELECT (``WITH``, ``DESCRIBE``, ``SHOW``, ``SUMMARIZE`` included). Stops
   ``DELETE``, ``DROP``, ``COPY``, ``ATTACH``, ``SET``, ``CALL``, ``PRAGMA``, a
   second statement after a ``;``...
2. The statement runs inside ``BEGIN TRANSACTION READ ONLY`` (``audit.run_query``):
   DuckDB refuses any write there, wherever it hides: a ``DELETE ... RETURNING``
   in a CTE, ``nextval``, a write to an attached inbox file.
3. ``check_plan``: the physical plan (``EXPLAIN (FORMAT JSON)``) may hold only
   read-only operators and table functions on an allow-list; anything unknown is
   refused with its name. Stops what a read-only transaction still lets through
   (``FROM checkpoint()``) and whatever a future DuckDB adds.
4. The connection has ``enable_external_access = false`` with ``lock_configuration
   = true``: no file can be read or written from SQL, and that cannot be undone.
5. ``audit.run_query`` interrupts a statement past its time limit and cuts the
   result at a byte cap.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from typing import Any

import duckdb

from core.audit import MAX_SQL_CHARS, AuditParamError, AuditRefused

__all__ = ["AuditParamError", "AuditRefused", "check_operator", "check_plan", "check_read_only", "explain_sql",
           "planted_functions", "refuse_planted"]


# Physical operators that only read (DuckDB 2.0 names, as EXPLAIN (FORMAT JSON) spells them).
READ_OPERATORS = frozenset({
    "PROJECTION", "FILTER", "SEQ_SCAN", "TABLE_SCAN", "INDEX_SCAN", "DUMMY_SCAN", "EMPTY_RESULT",
    "COLUMN_DATA_SCAN", "CHUNK_SCAN", "EXPRESSION_SCAN", "DELIM_SCAN", "POSITIONAL_SCAN",
    "CTE", "CTE_SCAN", "REC_CTE", "REC_CTE_SCAN", "REC_KEY_CTE", "RECURSIVE_CTE", "RECURSIVE_CTE_SCAN",
    "RECURSIVE_RECURRING_CTE_SCAN",
    "HASH_JOIN", "NESTED_LOOP_JOIN", "BLOCKWISE_NL_JOIN", "PIECEWISE_MERGE_JOIN", "IE_JOIN", "ASOF_JOIN",
    "CROSS_PRODUCT", "POSITIONAL_JOIN", "LEFT_DELIM_JOIN", "RIGHT_DELIM_JOIN", "DELIM_JOIN",
    "UNION", "UNNEST",
    "HASH_GROUP_BY", "PERFECT_HASH_GROUP_BY", "PARTITIONED_AGGREGATE", "UNGROUPED_AGGREGATE",
    "SIMPLE_AGGREGATE", "WINDOW", "STREAMING_WINDOW",
    "ORDER_BY", "TOP_N", "LIMIT", "STREAMING_LIMIT", "LIMIT_PERCENT",
    "RESERVOIR_SAMPLE", "STREAMING_SAMPLE", "PIVOT",
})
# Table functions that only read the catalog or compute rows (upper case, as in the plan).
READ_TABLE_FUNCTIONS = frozenset({
    "SEQ_SCAN", "RANGE", "GENERATE_SERIES", "UNNEST", "REPEAT", "REPEAT_ROW",
    "JSON_EACH", "JSON_TREE", "SUMMARY",
    "DUCKDB_TABLES", "DUCKDB_VIEWS", "DUCKDB_COLUMNS", "DUCKDB_SCHEMAS", "DUCKDB_DATABASES",
    "DUCKDB_TYPES", "DUCKDB_FUNCTIONS", "DUCKDB_CONSTRAINTS", "DUCKDB_INDEXES", "DUCKDB_KEYWORDS",
    "DUCKDB_SEQUENCES", "DUCKDB_DEPENDENCIES", "DUCKDB_SETTINGS",
    "PRAGMA_TABLE_INFO", "PRAGMA_SHOW", "PRAGMA_STORAGE_INFO",
})


def check_read_only(sql: str, n_params: int | None = None) -> str:
    """The one SELECT statement in ``sql`` (its text, as parsed), or :class:`AuditRefused`.
    ``n_params``: how many values will be bound to it; the statement's placeholders
    (``?`` or ``$1``..``$n``; not ``$name``) must take exactly that many
    (:class:`AuditParamError` otherwise)."""
    if not isinstance(sql, str):
        raise AuditRefused(f"the query must be a string, not {type(sql).__name__}")
    if len(sql) > MAX_SQL_CHARS:
        raise AuditRefused(f"the query is {len(sql):,} characters long (at most {MAX_SQL_CHARS:,})")
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
    if n_params is not None:
        check_placeholders(set(statement.named_parameters), n_params)
    text = str(statement.query)
    refuse_sql_from_values(text)
    return text


# Table functions that run a string as SQL: with them a bound value would be SQL again.
SQL_FROM_VALUES = frozenset({"query", "query_table"})
_SQL_FROM_VALUES_TEXT = re.compile(r"\bquery(_table)?\s*\(", re.IGNORECASE)
_parser = threading.local()


def refuse_sql_from_values(statement: str) -> None:
    """Refuse a statement that calls ``query()`` or ``query_table()``: they run a string
    (a bound value too) as SQL or name a table by it, so a value could be code again.
    Read from the statement's syntax tree (``json_serialize_sql``); a statement DuckDB
    cannot serialize (DESCRIBE, SHOW, ...) is searched as text instead."""
    con = getattr(_parser, "con", None)
    if con is None:
        con = _parser.con = duckdb.connect(":memory:")
    row = con.execute("SELECT json_serialize_sql(?)", [statement]).fetchone()
    tree = json.loads(row[0]) if row else {"error": True}
    if tree.get("error"):
        found = {"query"} if _SQL_FROM_VALUES_TEXT.search(statement) else set()
    else:
        found = {str(n).lower() for n in _function_names(tree)} & SQL_FROM_VALUES
    if found:
        raise AuditRefused(f"refused: {', '.join(sorted(found))}() runs a string as SQL; "
                           "write the statement itself and bind only values")


def _function_names(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        name = node.get("function_name")
        if isinstance(name, str):
            yield name
        for value in node.values():
            yield from _function_names(value)
    elif isinstance(node, list):
        for value in node:
            yield from _function_names(value)


def check_placeholders(names: set[str], n_params: int) -> None:
    """The placeholders of a statement (DuckDB numbers ``?`` as ``1``, ``2``, ...) against
    the number of values given."""
    named = sorted(n for n in names if not (n.isascii() and n.isdigit()))
    if named:
        raise AuditParamError(f"named placeholders (${', $'.join(named)}) are not supported: use ? or $1, $2, ...")
    wanted = max((int(n) for n in names), default=0)
    if names != {str(i) for i in range(1, wanted + 1)}:
        missing = sorted(set(range(1, wanted + 1)) - {int(n) for n in names})
        raise AuditParamError(f"the placeholders skip ${', $'.join(map(str, missing))}: number them $1 .. ${wanted}")
    if wanted != n_params:
        raise AuditParamError(
            f"the query takes {wanted} parameter(s) and {n_params} value(s) were given"
            + (" (bind every value with ? or $n; none is spliced into the text)" if wanted == 0 else ""))


def explain_sql(statement: str) -> str:
    """``EXPLAIN (FORMAT JSON)`` of a statement ``check_read_only`` returned; checked to
    parse as one EXPLAIN, so that the plan checked is the plan of that statement."""
    explain = f"EXPLAIN (FORMAT JSON) {statement}"
    try:
        parsed = duckdb.extract_statements(explain)
    except duckdb.Error as exc:
        raise AuditRefused(f"cannot plan the query: {exc}") from None
    if len(parsed) != 1 or parsed[0].type != duckdb.StatementType.EXPLAIN:
        raise AuditRefused("cannot plan the query: it does not read as one statement once explained")
    return explain


def check_plan(con: duckdb.DuckDBPyConnection, statement: str, params: list[Any] | None = None) -> None:
    """Refuse ``statement`` unless every operator of its physical plan, and every table
    function it calls, is on the read-only allow-lists. ``params``: the values the
    statement will run with (its plan is made with them bound)."""
    rows = con.execute(explain_sql(statement), params or None).fetchall()
    for row in rows:
        try:
            plan = json.loads(row[1])
        except (IndexError, TypeError, ValueError):
            raise AuditRefused("refused: the query plan could not be read, so it cannot be checked") from None
        for node in _nodes(plan):
            check_operator(node)


def check_operator(node: dict[str, Any]) -> None:
    name = str(node.get("name", "")).strip().upper()
    extra = node.get("extra_info")
    if not isinstance(extra, dict):
        extra = {}
    function = extra.get("Function")
    if name == "INOUT_FUNCTION":  # a table function fed row by row (LATERAL): named under "Name"
        function = extra.get("Name") or "(unnamed)"
    if function is not None:
        fn = str(function).strip().upper()
        if fn not in READ_TABLE_FUNCTIONS:
            raise AuditRefused(
                f"refused: the query calls the table function {fn.lower()}(), which audit queries may not use "
                f"(allowed: {', '.join(sorted(f.lower() for f in READ_TABLE_FUNCTIONS))})"
            )
        return
    if name not in READ_OPERATORS and name not in READ_TABLE_FUNCTIONS:
        raise AuditRefused(
            f"refused: the query plan holds a {name or 'nameless'} operator, which is not on the audit "
            "allow-list of read-only operators"
        )


def _nodes(plan: Any) -> Iterator[dict[str, Any]]:
    stack = [plan]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            yield item
            stack.extend(item.get("children") or [])


# -- functions planted in the log -------------------------------------------------------

# Qualified, so that a table macro of the same name in the log cannot answer instead.
_PLANTED_SQL = ("SELECT DISTINCT database_name, schema_name, function_name, function_type "
                "FROM system.main.duckdb_functions() WHERE NOT internal AND database_name NOT IN ('system', 'temp') "
                "ORDER BY ALL")


def planted_functions(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str, str, str]]:
    """User-defined functions (macros) in the attached databases: (database, schema,
    name, type). AAR never creates any, and one named like a built-in (``sha256``,
    ``count``, a table function) takes its place in every query on that database: one
    found in the log was put there by someone editing the file."""
    return [tuple(map(str, r)) for r in con.execute(_PLANTED_SQL).fetchall()]  # type: ignore[misc]  # rows of two columns, as the query says


def refuse_planted(con: duckdb.DuckDBPyConnection) -> None:
    """:class:`AuditRefused` if the log holds user-defined functions (see ``planted_functions``)."""
    if found := planted_functions(con):
        names = ", ".join(f"{name} ({kind})" for _, _, name, kind in found[:10])
        raise AuditRefused(
            f"the log holds user-defined functions ({names}), which AAR never creates: the file was edited "
            "outside the recorder, and such a function can change what any query answers. Not answering from "
            "it; `aar verify-log` checks the rest (a recorder removes them when it next opens the log)")
