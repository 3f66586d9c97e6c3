"""Typed projections of the event log: the payload fields the views read, as columns.

Parsing JSON is most of what a view costs (1M events: 150-400 ms per view even when
each payload is parsed once, and the named audits read several views). So the
recorder keeps, per event kind, a table ``proj_<name>`` with the fields already
extracted. It is derived data only: rebuilt from ``events`` at any time, never
written anywhere else.

- The recorder appends what is new (``refresh``) when it is idle, right before
  it checkpoints; ``projection_state`` holds how far (the ``events`` rowid) each
  projection has got. ``events`` is append-only, so its rowids only grow.
- A view reads ``proj_<name>`` UNION ALL the events past that mark, parsed on the
  fly (DuckDB prunes the row groups below the mark). So a view is always complete
  and exact, whether the recorder has caught up or not, and on a file opened
  read-only too; a caught-up projection just makes it fast.
- A projection whose definition changed (its spec is stored) is dropped and
  rebuilt from the log when the store opens.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import duckdb

from core.audit import code_identifier, code_literal

V, D, B, I, BI, J = "VARCHAR", "DOUBLE", "BOOLEAN", "INTEGER", "BIGINT", "JSON"  # noqa: E741 - SQL type shorthands (I: INTEGER)
LIST_V: list[str] = [V]
# Columns of the envelope every projection keeps (besides ``rid``, the events rowid).
_ENVELOPE_TYPES = {"session_id": "VARCHAR", "id": "VARCHAR", "time": "TIMESTAMPTZ", "type": "VARCHAR",
                   "correlation_id": "VARCHAR"}
ENVELOPE = tuple(_ENVELOPE_TYPES)


@dataclass(frozen=True)
class Projection:
    name: str
    types: tuple[str, ...]
    fields: dict[str, str | list[str]] = field(default_factory=dict)

    @property
    def table(self) -> str:
        return code_identifier(f"proj_{self.name}")

    @property
    def spec(self) -> str:
        """The ``from_json`` structure: field -> DuckDB type (a list type as ``["T"]``)."""
        return json.dumps(self.fields)

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps([self.types, self.fields, ENVELOPE]).encode()).hexdigest()[:16]

    def type_filter(self) -> str:
        # Spliced, not bound: this text is part of the views' definitions (CREATE VIEW
        # takes no parameters). The types are constants of this module, and
        # ``code_literal`` refuses anything but letters, digits, ``_``, ``.``, ``-``.
        return "type IN (" + ", ".join(map(code_literal, self.types)) + ")"

    def create_sql(self) -> str:
        cols = ["rid BIGINT NOT NULL"] + [f'"{c}" {_ENVELOPE_TYPES[c]}' for c in ENVELOPE]
        cols += [f'"{name}" {_column_type(t)}' for name, t in self.fields.items()]
        return f"CREATE TABLE IF NOT EXISTS {self.table} ({', '.join(cols)})"

    def _parsed(self, above: str, upto: str | None = None, db: str = "") -> str:
        """Events of this kind with ``rowid`` above ``above`` (and at most ``upto``), parsed
        (``db``: a prefix for the log's tables). ``above`` and ``upto`` are SQL
        expressions: ``?`` (bound by the caller), or a subquery / constant of this module
        in the view definitions, which cannot take parameters."""
        fields = ", ".join(f'p."{name}" AS "{name}"' for name in self.fields)
        bound = f" AND rowid <= {upto}" if upto is not None else ""
        db = code_identifier(db) if db else ""
        envelope = ", ".join(ENVELOPE)
        spec = self.spec  # JSON of this module's field names and DuckDB types: nothing to quote
        if "'" in spec or "\\" in spec:
            raise ValueError(f"projection {self.name}: a quote or backslash in its spec")
        return (f"SELECT rid, {envelope}, {fields} FROM (SELECT rowid AS rid, {envelope}, "
                f"from_json(payload, '{spec}') AS p FROM {db}events "
                f"WHERE {self.type_filter()} AND rowid > {above}{bound})")

    def source_sql(self) -> str:
        """What a view reads: the projection, then the events it has not reached yet."""
        columns = ", ".join(f'"{c}"' for c in (*ENVELOPE, *self.fields))
        mark = f"(SELECT rid FROM projection_state WHERE name = {code_literal(self.name)})"  # (a view: no binding)
        return (f"(SELECT {columns} FROM {self.table} UNION ALL "
                f"SELECT {columns} FROM ({self._parsed(mark)}))")


def _column_type(t: str | list[str]) -> str:
    return f"{t[0]}[]" if isinstance(t, list) else t


PROJECTIONS: dict[str, Projection] = {p.name: p for p in (
    Projection("session_started", ("session.started",), {"name": V, "backend": V, "dataset": V}),
    Projection("session_ended", ("session.ended",), {"reason": V}),
    Projection("agent_started", ("agent.started",), {"agent_id": V, "direction": V, "backend": V, "model": V}),
    Projection("agent_stopped", ("agent.stopped",), {"agent_id": V, "reason": V}),
    Projection("llm_called", ("agent.llm_called",), {
        "agent_id": V, "model": V, "idea_id": V, "input_tokens": BI, "output_tokens": BI,
        "cache_read_tokens": BI, "cache_write_tokens": BI, "cost_usd": D, "latency_s": D, "stop_reason": V}),
    Projection("tool_called", ("agent.tool_called",), {
        "agent_id": V, "tool": V, "ok": B, "error": V, "latency_s": D, "result_summary": V, "arguments": J}),
    Projection("idea_proposed", ("idea.proposed",), {
        "idea_id": V, "agent_id": V, "title": V, "hypothesis": V, "why": V, "parent_ideas": LIST_V,
        "cites_posts": LIST_V, "method_artifact": V, "builtin_method": V, "params": J}),
    Projection("experiment_requested", ("experiment.requested",), {
        "experiment_id": V, "idea_id": V, "agent_id": V, "purpose": V, "split": V, "dataset": V,
        "seeds": [I], "method_artifact": V, "builtin_method": V, "shuffle_weak_labels": B}),
    Projection("experiment_status", ("experiment.started", "experiment.finished", "experiment.failed"), {
        "experiment_id": V, "trainer_id": V, "runtime_s": D, "peak_rss_mb": D, "predictions_artifact": V,
        "error_class": V, "message": V}),
    Projection("score", ("score.published", "score.withheld"), {
        "experiment_id": V, "idea_id": V, "agent_id": V, "purpose": V, "dataset": V, "split": V,
        "n_seeds": I, "accuracy": D, "accuracy_stderr": D, "weak_accuracy": D, "ceiling_accuracy": D,
        "pgr": D, "pgr_stderr": D, "method_artifact": V, "builtin_method": V}),
    Projection("forum_posted", ("forum.posted",), {
        "post_id": V, "agent_id": V, "title": V, "body": V, "reply_to": V, "idea_ids": LIST_V,
        "experiment_ids": LIST_V, "tags": LIST_V}),
    Projection("forum_voted", ("forum.voted",), {"post_id": V, "agent_id": V, "value": I}),
    Projection("forum_moderated", ("forum.moderated",), {"post_id": V, "action": V}),
    Projection("integrity_flagged", ("integrity.flagged",), {
        "check": V, "severity": V, "detail": V, "idea_id": V, "experiment_id": V, "agent_id": V}),
)}

STATE_SQL = """
CREATE TABLE IF NOT EXISTS projection_state (
    name VARCHAR PRIMARY KEY,
    digest VARCHAR NOT NULL,
    rid BIGINT NOT NULL  -- the last events rowid this projection holds (-1: none)
);
"""


def source(name: str) -> str:
    """The SQL a view selects from for projection ``name`` (see the module doc)."""
    return PROJECTIONS[name].source_sql()


def ensure(con: duckdb.DuckDBPyConnection) -> None:
    """Create the projection tables; drop and restart any whose definition changed."""
    con.execute(STATE_SQL)
    known = dict(con.execute("SELECT name, digest FROM projection_state").fetchall())
    for p in PROJECTIONS.values():
        if known.get(p.name) != p.digest:
            con.execute(f"DROP TABLE IF EXISTS {p.table}")
            con.execute("INSERT OR REPLACE INTO projection_state VALUES (?, ?, -1)", [p.name, p.digest])
        con.execute(p.create_sql())


def refresh(con: duckdb.DuckDBPyConnection) -> int:
    """Append every event past each projection's mark, in one transaction. Returns how
    many rows were added (0 when all are caught up: then nothing is written)."""
    top = con.execute("SELECT coalesce(max(rowid), -1) FROM events").fetchall()[0][0]
    marks = dict(con.execute("SELECT name, rid FROM projection_state").fetchall())
    behind = [p for p in PROJECTIONS.values() if marks.get(p.name, -1) < top]
    if not behind:
        return 0
    added = 0
    con.execute("BEGIN TRANSACTION")
    try:
        for p in behind:
            added += con.execute(f"INSERT INTO {p.table} {p._parsed('?', '?')}",
                                 [int(marks.get(p.name, -1)), int(top)]).fetchall()[0][0]
            con.execute("UPDATE projection_state SET rid = ? WHERE name = ?", [top, p.name])
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return int(added)


def check_sql(db: str = "") -> str:
    """SQL: for each projection, the rows that differ from what the events they were
    built from give (``extra``: in the projection only, ``missing``: only in the events
    up to its mark), and the first events rowid concerned. All zero: the projections
    (which the views read) say what the log says. ``db``: a prefix for the log's tables
    (an identifier from code). The names are this module's constants, checked by
    ``code_literal`` (the SQL is one audit statement without parameters)."""
    db = code_identifier(db) if db else ""
    parts = []
    for p in PROJECTIONS.values():
        cols = ", ".join(f'"{c}"' for c in ("rid", *ENVELOPE, *p.fields))
        mark = f"coalesce((SELECT rid FROM {db}projection_state WHERE name = {code_literal(p.name)}), -1)"
        parsed = p._parsed("-1", mark, db)
        parts.append(
            f"SELECT {code_literal(p.name)} AS projection, coalesce(sum(greatest(a - b, 0)), 0) AS extra, "
            f"coalesce(sum(greatest(b - a, 0)), 0) AS missing, min(rid) AS first_rid FROM ("
            f"SELECT rid, count(*) FILTER (WHERE src = 0) AS a, count(*) FILTER (WHERE src = 1) AS b FROM ("
            f"SELECT {cols}, 0 AS src FROM {db}{p.table} UNION ALL SELECT {cols}, 1 AS src FROM ({parsed})"
            f") GROUP BY {cols}) WHERE a <> b")
    return " UNION ALL ".join(parts) + " ORDER BY projection"
