"""Field-by-field comparison of the replayed read models with the recorder's SQL views.

``audit`` is any ``core.audit.AuditQueries`` (``aar audit``'s: the file or the
recorder, or a DuckDB connection wrapped by :func:`connection_query`); the session
id is a bound parameter. Returns a list of differences (empty: the two
implementations agree).
"""

from __future__ import annotations

import json
import math
from typing import Any

from core.audit import AuditQueries, code_identifier

from .models import ReadModels


def connection_query(con: Any) -> AuditQueries:
    """Audit queries on an open DuckDB connection (guarded like any audit; the
    connection stays the caller's to close)."""
    from services.recorder.audit import FileAudit

    return FileAudit(con, owned=False)


# view -> (key column, columns to compare; times as epoch_us under the replay's *_us name)
VIEW_COLUMNS: dict[str, tuple[str, list[str]]] = {
    "ideas": ("event_id", ["idea_id", "session_id", "event_id", "epoch_us(time) AS time_us", "agent_id", "title",
                           "hypothesis", "why", "parent_ideas", "cites_posts", "method_artifact", "builtin_method",
                           "params"]),
    "experiments": ("event_id", ["experiment_id", "session_id", "event_id", "epoch_us(requested_at) AS requested_at_us",
                                 "idea_id", "agent_id", "purpose", "split", "dataset", "seeds", "method_artifact",
                                 "builtin_method", "shuffle_weak_labels", "status",
                                 "epoch_us(status_at) AS status_at_us", "trainer_id", "runtime_s", "peak_rss_mb",
                                 "predictions_artifact", "error_class", "error_message", "attempts"]),
    "scores": ("event_id", ["experiment_id", "session_id", "event_id", "epoch_us(time) AS time_us", "idea_id",
                            "agent_id", "purpose", "dataset", "split", "n_seeds", "accuracy", "accuracy_stderr",
                            "weak_accuracy", "ceiling_accuracy", "pgr", "pgr_stderr", "method_artifact",
                            "builtin_method"]),
    "forum_posts": ("event_id", ["post_id", "session_id", "event_id", "epoch_us(time) AS time_us", "agent_id", "title",
                                 "body", "reply_to", "idea_ids", "experiment_ids", "tags", "vote_score", "votes",
                                 "hidden"]),
    "integrity_flags": ("event_id", ["event_id", "session_id", "epoch_us(time) AS time_us", '"check"', "severity",
                                     "detail", "idea_id", "experiment_id", "agent_id"]),
    "agents": ("agent_id", ["session_id", "agent_id", "direction", "backend", "model",
                            "epoch_us(started_at) AS started_at_us", "epoch_us(stopped_at) AS stopped_at_us",
                            "stop_reason", "ideas", "llm_calls", "cost_usd", "input_tokens", "output_tokens"]),
}


def _name(col: str) -> str:
    return col.split(" AS ")[-1].strip('"')


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(float(a), float(b), rel_tol=1e-12, abs_tol=1e-12)
    if isinstance(a, str) and isinstance(b, dict | list):
        a = json.loads(a)
    if isinstance(b, str) and isinstance(a, dict | list):
        b = json.loads(b)
    return bool(a == b)


def view_rows(audit: AuditQueries, view: str, session_id: str) -> list[dict[str, Any]]:
    """The rows of ``view`` (a key of VIEW_COLUMNS: its name and columns are this module's) for a session."""
    _, cols = VIEW_COLUMNS[view]
    return audit.query(f"SELECT {', '.join(cols)} FROM {code_identifier(view)} WHERE session_id = ?",
                       [session_id]).dicts()


def replayed_rows(models: ReadModels, view: str) -> list[dict[str, Any]]:
    return {
        "ideas": lambda: list(models.ideas.values()),
        "experiments": models.experiment_rows,
        "scores": lambda: list(models.scores.values()),
        "forum_posts": models.post_rows,
        "integrity_flags": lambda: list(models.flags.values()),
        "agents": models.agent_rows,
    }[view]()


def compare(models: ReadModels, audit: AuditQueries, session_id: str) -> list[str]:
    """Differences between the replay and the views of ``session_id`` (empty when equal)."""
    diffs: list[str] = []
    for view, (key, cols) in VIEW_COLUMNS.items():
        live_rows = view_rows(audit, view, session_id)
        live = {r[key]: r for r in live_rows}
        if len(live) != len(live_rows):
            diffs.append(f"{view}: the view has {len(live_rows)} rows for {len(live)} distinct {key}s")
        mine = {r[key]: r for r in replayed_rows(models, view)}
        for k in sorted(live.keys() - mine.keys()):
            diffs.append(f"{view}: {key}={k} is in the view but not in the replay")
        for k in sorted(mine.keys() - live.keys()):
            diffs.append(f"{view}: {key}={k} is in the replay but not in the view")
        for k in sorted(live.keys() & mine.keys()):
            for col in map(_name, cols):
                if not _same(live[k][col], mine[k][col]):
                    diffs.append(f"{view}: {key}={k} field {col}: view {live[k][col]!r} != replay {mine[k][col]!r}")
    # sessions (one row)
    s = audit.query("""SELECT session_id, epoch_us(first_event) AS first_event_us, epoch_us(last_event) AS last_event_us,
                  events, name, backend, dataset, end_reason, scores, resumed FROM sessions WHERE session_id = ?""", [session_id])
    live_s = dict(zip(s.columns, s.rows[0], strict=True)) if s.rows else {}
    mine_s = models.session_row()
    for col in live_s:
        if not _same(live_s[col], mine_s.get(col)):
            diffs.append(f"sessions: field {col}: view {live_s[col]!r} != replay {mine_s.get(col)!r}")
    # cost per agent and per idea (llm_calls view)
    for by, table in (("agent_id", models.cost_by_agent), ("idea_id", models.cost_by_idea)):
        r = audit.query(f"""SELECT {code_identifier(by)} AS k, count(*) AS calls, sum(input_tokens) AS input_tokens,
                      sum(output_tokens) AS output_tokens, sum(cache_read_tokens) AS cache_read_tokens,
                      sum(cache_write_tokens) AS cache_write_tokens, sum(cost_usd) AS cost_usd
                      FROM llm_calls WHERE session_id = ? GROUP BY 1""", [session_id])
        live_c = {row[0]: dict(zip(r.columns[1:], row[1:], strict=True)) for row in r.rows}
        if set(live_c) != set(table):
            diffs.append(f"cost by {by}: keys differ: view {sorted(map(str, live_c))} != replay {sorted(map(str, table))}")
        for k in set(live_c) & set(table):
            for col, v in live_c[k].items():
                if not math.isclose(float(v or 0), float(table[k][col]), rel_tol=1e-9, abs_tol=1e-12):
                    diffs.append(f"cost by {by}={k} field {col}: view {v!r} != replay {table[k][col]!r}")
    return diffs
