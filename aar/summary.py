"""The summary printed when a session ends (and by ``aar sessions --detail``):
best ideas with dev, test and held-out PGR, integrity flags, cost, and the honest
winner: by test PGR, with the ideas it is tied with, and the selection optimism (how much
the dev scores that promoted ideas overstate their test scores). Plain SQL over the views
(any ``core.audit.AuditQueries``), the session id bound as ``$1``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from core.audit import AuditQueries, Param
from core.console import data
from services.agents.cheap_tests import DROPPED


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


def promoted_sql(session_id: str) -> tuple[str, list[Param]]:
    """Every promoted idea (one with a test score): dev and test PGR, the test SE."""
    return """
        SELECT d.idea_id, d.agent_id, coalesce(i.builtin_method, 'code:' || left(i.method_artifact, 10)) AS method,
               d.pgr AS dev_pgr, t.pgr AS test_pgr, t.pgr_stderr AS test_se
        FROM scores d
        JOIN scores t ON t.session_id = $1 AND t.idea_id = d.idea_id AND t.purpose = 'score' AND t.split = 'test'
        LEFT JOIN ideas i ON i.session_id = $1 AND i.idea_id = d.idea_id
        WHERE d.session_id = $1 AND d.purpose = 'score' AND d.split = 'dev' AND d.idea_id IS NOT NULL
        ORDER BY t.pgr DESC NULLS LAST, d.idea_id
    """, [session_id]


@dataclass(frozen=True, slots=True)
class Promoted:
    idea_id: str
    agent_id: str | None
    method: str | None
    dev_pgr: float | None
    test_pgr: float | None
    test_se: float | None


@dataclass(frozen=True, slots=True)
class Honest:
    """The winner by test PGR, the ideas tied with it, and the selection optimism."""

    winner: Promoted | None
    tied: list[Promoted]
    optimism: float | None  # mean(dev PGR - test PGR) over the promoted ideas with both
    optimism_se: float | None  # its standard error (the spread of the differences; None under 2 ideas)
    n: int  # promoted ideas with both a dev and a test PGR
    rivals: int  # other promoted ideas with a test PGR


Z95 = 1.96


def honest(promoted: list[Promoted]) -> Honest:
    """Who won on the test split, and how much the dev scores overstated.

    Promoted ideas were picked for a high dev PGR, so their dev PGR is biased upwards
    (selection on noise); the test split was never used to pick them. The optimism is
    ``mean(dev - test)`` with ``sd / sqrt(n)`` as its standard error. Another idea is
    *tied* with the winner when the two test PGRs differ by less than 1.96 standard
    errors of their difference, ``sqrt(se_w^2 + se_i^2)`` (unpaired: conservative, as the
    two are scored on the same rows; trainer/paired.py gives the paired one)."""
    both = [p for p in promoted if p.dev_pgr is not None and p.test_pgr is not None]
    diffs = [p.dev_pgr - p.test_pgr for p in both]  # type: ignore[operator]  # both set: filtered above
    optimism = sum(diffs) / len(diffs) if diffs else None
    optimism_se = None
    if len(diffs) >= 2 and optimism is not None:
        var = sum((d - optimism) ** 2 for d in diffs) / (len(diffs) - 1)
        optimism_se = math.sqrt(var / len(diffs))
    scored = sorted((p for p in promoted if p.test_pgr is not None), key=lambda p: (-(p.test_pgr or 0.0), p.idea_id))
    winner = scored[0] if scored else None
    tied: list[Promoted] = []
    if winner is not None and winner.test_se is not None:
        for other in scored[1:]:
            if other.test_se is None:
                continue
            gap = (winner.test_pgr or 0.0) - (other.test_pgr or 0.0)
            if gap < Z95 * math.sqrt(winner.test_se ** 2 + other.test_se ** 2):
                tied.append(other)
    return Honest(winner, tied, optimism, optimism_se, len(diffs), max(0, len(scored) - 1))


def honest_lines(result: Honest) -> list[str]:
    """The summary's lines about the winner and the optimism (plain text: ids are data)."""
    if result.winner is None:
        return ["no promoted idea has a test score yet: no winner"]
    w = result.winner
    se = f" ± {w.test_se:.3f}" if w.test_se is not None else ""
    dev = "none" if w.dev_pgr is None else f"{w.dev_pgr:.3f}"
    lines = [f"winner by test PGR: {w.idea_id} ({w.agent_id}, {w.method}) {w.test_pgr:.3f}{se} (dev {dev})"]
    if result.tied:
        names = ", ".join(f"{p.idea_id} ({p.test_pgr:.3f})" for p in result.tied)
        lines.append(f"  tied with (test PGR within 1.96 SE of the difference): {names}")
    elif result.rivals:
        lines.append(f"  ahead of the {result.rivals} other promoted idea(s) by more than 1.96 SE")
    else:
        lines.append("  the only promoted idea with a test score")
    if result.optimism is not None:
        se = f" ± {result.optimism_se:.3f}" if result.optimism_se is not None else " (one idea: no SE)"
        lines.append(f"selection optimism (dev - test PGR over {result.n} promoted idea(s)): {result.optimism:+.3f}{se}")
    return lines


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
          (SELECT arg_max(payload->>'reason', (time, id)) FROM events WHERE session_id = $1 AND type = 'session.ended') AS end_reason,
          (SELECT count(*) FROM events WHERE session_id = $1 AND type = 'session.resumed') AS resumed,
          (SELECT count(*) FROM events WHERE session_id = $1 AND type = 'idea.duplicate') AS duplicates,
          (SELECT count(*) FROM ideas WHERE session_id = $1 AND method_artifact IS NOT NULL) AS code_ideas,
          (SELECT count(*) FROM ideas WHERE session_id = $1 AND builtin_method IS NOT NULL) AS builtin_ideas,
          (SELECT count(*) FROM tool_calls WHERE session_id = $1 AND tool = 'note'
             AND starts_with(arguments->>'text', $2)) AS dropped,
          (SELECT count(DISTINCT payload->>'experiment_id') FROM events WHERE session_id = $1
             AND type = 'experiment.finished' AND json_array_length(payload->'imports') > 0) AS runs_importing
    """, [session_id, f"{DROPPED}:"]


def code_vs_builtin_sql(session_id: str) -> tuple[str, list[Param]]:
    """The best code idea and the best built-in one (by dev PGR), with their test and
    held-out PGR, and how many of each kind were scored."""
    return """
        WITH dev AS (
            SELECT idea_id, arg_min(pgr, time) AS pgr, arg_min(pgr_stderr, time) AS se FROM scores
            WHERE session_id = $1 AND purpose = 'score' AND split = 'dev' AND idea_id IS NOT NULL GROUP BY 1
        ), other AS (
            SELECT idea_id, max(pgr) FILTER (WHERE split = 'test') AS test_pgr,
                   max(pgr) FILTER (WHERE split = 'heldout') AS heldout_pgr
            FROM scores WHERE session_id = $1 AND purpose = 'score' GROUP BY 1
        ), ranked AS (
            SELECT CASE WHEN i.method_artifact IS NOT NULL THEN 'code' ELSE 'built-in' END AS kind, i.idea_id,
                   i.agent_id, coalesce(i.builtin_method, 'code:' || left(i.method_artifact, 10)) AS method,
                   dev.pgr, dev.se, other.test_pgr, other.heldout_pgr,
                   count(*) OVER (PARTITION BY i.method_artifact IS NOT NULL) AS scored,
                   row_number() OVER (PARTITION BY i.method_artifact IS NOT NULL
                                      ORDER BY dev.pgr DESC NULLS LAST, i.idea_id) AS rank
            FROM dev JOIN ideas i ON i.session_id = $1 AND i.idea_id = dev.idea_id
            LEFT JOIN other ON other.idea_id = dev.idea_id
        )
        SELECT kind, scored, idea_id, agent_id, method, round(pgr, 3) AS dev_pgr, round(se, 3) AS dev_se,
               round(test_pgr, 3) AS test_pgr, round(heldout_pgr, 3) AS heldout_pgr
        FROM ranked WHERE rank = 1 ORDER BY kind DESC
    """, [session_id]


def print_summary(audit: AuditQueries, session_id: str, console: Console) -> None:
    totals = audit.query(*totals_sql(session_id))
    if totals.rows:
        row = dict(zip(totals.columns, totals.rows[0], strict=True))
        console.print(
            f"[bold]{row['ideas']}[/bold] ideas ({row['duplicates']} duplicates answered without a run), "
            f"{row['experiments']} experiments ({row['failed']} failed), "
            f"{row['posts']} forum posts, {row['built_on_others']} ideas built on earlier ones, "
            f"{row['integrity_flags']} integrity flag(s), ${row['cost_usd']} LLM cost; ended: {row['end_reason']}"
            + (f" (resumed {row['resumed']} time(s))" if row.get("resumed") else "")
        )
        console.print(
            f"ideas as code: {row['code_ideas']}, built-in methods: {row['builtin_ideas']}; "
            f"{row['dropped']} candidate(s) dropped by cheap tests before scoring, {row['duplicates']} duplicate(s); "
            f"{row['runs_importing']} run(s) imported another idea's code", highlight=False)
    best = audit.query(*best_ideas_sql(session_id))
    if not best.rows:
        console.print("no scored ideas")
        return
    table = Table(*[str(c) for c in best.columns], title="best ideas (dev PGR; test / held-out for promoted ones)")
    for r in best.rows:
        table.add_row(*[data(v) for v in r])
    console.print(table)
    kinds = audit.query(*code_vs_builtin_sql(session_id))
    if kinds.rows:
        vs = Table(*[str(c) for c in kinds.columns], title="best code idea against best built-in (by dev PGR)")
        for r in kinds.rows:
            vs.add_row(*[data(v) for v in r])
        console.print(vs)
    promoted = [Promoted(*row) for row in audit.query(*promoted_sql(session_id)).rows]
    for line in honest_lines(honest(promoted)):
        console.print(line, markup=False, highlight=False)
