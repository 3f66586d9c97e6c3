"""The summary printed when a session ends (and by ``aar sessions --detail``):
best ideas with dev, test and held-out PGR, integrity flags, cost. Plain SQL over the views
(any ``core.audit.AuditQueries``), the session id bound as ``$1``."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from core.audit import AuditQueries, Param
from core.console import data


def best_ideas_sql(session_id: str, limit: int = 8) -> tuple[str, list[Param]]:
    """The best ideas of ``session_id``: SQL and its parameters."""
    return """
        WITH dev AS (
            SELECT idea_id, agent_id, pgr, pgr_stderr, accuracy FROM scores
            WHERE session_id = $1 AND purpose = 'score' AND split = 'dev' AND idea_id IS NOT NULL
        ), other AS (
            SELECT idea_id,
                   max(pgr) FILTER (WHERE purpose = 'score' AND split = 'test') AS test_pgr,
                   max(pgr) FILTER (WHERE purpose = 'score' AND split = 'heldout') AS heldout_pgr,
                   max(accuracy) FILTER (WHERE purpose = 'ablation') AS shuffled_acc
            FROM scores WHERE session_id = $1 GROUP BY idea_id
        ), flags AS (
            SELECT payload->>'idea_id' AS idea_id, string_agg(DISTINCT payload->>'check', ',') AS flags
            FROM events WHERE session_id = $1 AND type = 'integrity.flagged' GROUP BY 1
        )
        SELECT dev.agent_id, coalesce(i.builtin_method, 'code:' || left(i.method_artifact, 10)) AS method,
               i.params::VARCHAR AS params, round(dev.pgr, 3) AS dev_pgr, round(dev.pgr_stderr, 3) AS se,
               round(other.test_pgr, 3) AS test_pgr, round(other.heldout_pgr, 3) AS heldout_pgr,
               round(other.shuffled_acc, 3) AS shuffled_acc,
               len(i.parent_ideas) > 0 AS builds_on, coalesce(flags.flags, '') AS flags, dev.idea_id
        FROM dev JOIN ideas i ON i.idea_id = dev.idea_id AND i.session_id = $1
        LEFT JOIN other ON other.idea_id = dev.idea_id
        LEFT JOIN flags ON flags.idea_id = dev.idea_id
        ORDER BY dev.pgr DESC NULLS LAST LIMIT $2
    """, [session_id, int(limit)]


def totals_sql(session_id: str) -> tuple[str, list[Param]]:
    """Counts and cost of ``session_id``: SQL and its parameters."""
    return """
        SELECT
          (SELECT count(*) FROM ideas WHERE session_id = $1) AS ideas,
          (SELECT count(*) FROM experiments WHERE session_id = $1) AS experiments,
          (SELECT count(*) FROM experiments WHERE session_id = $1 AND status = 'failed') AS failed,
          (SELECT count(*) FROM forum_posts WHERE session_id = $1) AS posts,
          (SELECT count(*) FROM ideas WHERE session_id = $1 AND len(parent_ideas) > 0) AS built_on_others,
          (SELECT count(*) FROM integrity_flags WHERE session_id = $1) AS integrity_flags,
          (SELECT round(coalesce(sum(cost_usd), 0), 4) FROM llm_calls WHERE session_id = $1) AS cost_usd,
          (SELECT max(payload->>'reason') FROM events WHERE session_id = $1 AND type = 'session.ended') AS end_reason
    """, [session_id]


def print_summary(audit: AuditQueries, session_id: str, console: Console) -> None:
    totals = audit.query(*totals_sql(session_id))
    if totals.rows:
        row = dict(zip(totals.columns, totals.rows[0], strict=True))
        console.print(
            f"[bold]{row['ideas']}[/bold] ideas, {row['experiments']} experiments ({row['failed']} failed), "
            f"{row['posts']} forum posts, {row['built_on_others']} ideas built on earlier ones, "
            f"{row['integrity_flags']} integrity flag(s), ${row['cost_usd']} LLM cost; ended: {row['end_reason']}"
        )
    best = audit.query(*best_ideas_sql(session_id))
    if not best.rows:
        console.print("no scored ideas")
        return
    table = Table(*[str(c) for c in best.columns], title="best ideas (dev PGR; test / held-out for promoted ones)")
    for r in best.rows:
        table.add_row(*[data(v) for v in r])
    console.print(table)
