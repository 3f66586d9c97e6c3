"""Named audit queries: plain read-only SQL over the recorder's views, shipped with AAR.

``aar audit --list`` shows them, ``aar audit --named NAME [--session ID]`` runs one
(through the recorder while a stack runs, on the file read-only otherwise: the
same guarded path as any ``aar audit`` SQL). ``{where}`` in a query becomes the
session filter: ``session_id = $1`` with the session id bound as ``$1`` (never
spliced: any text is just a session no row has), or ``TRUE`` for every session.

``chain_breaks`` checks the log's hash chain, in SQL (``services.recorder.chain``
holds its formulas, shared with the recorder that writes the chain and with
``aar verify-log``); it covers the whole log, whatever ``--session`` says.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.audit import Param
from services.recorder import chain

SESSION_FILTER = "session_id = $1"


@dataclass(frozen=True, slots=True)
class NamedQuery:
    name: str
    description: str
    sql: str

    def bound(self, session_id: str | None = None) -> tuple[str, list[Param]]:
        """The SQL for one session (None: every session) and its parameters: the session
        id is bound as ``$1``, whatever it holds. A query without ``{where}`` (the whole
        log) takes none."""
        if "{where}" not in self.sql:
            return self.sql, []
        if session_id is None:
            return self.sql.format(where="TRUE"), []
        return self.sql.format(where=SESSION_FILTER), [session_id]


QUERIES: dict[str, NamedQuery] = {q.name: q for q in (
    NamedQuery(
        "best_score_lineage",
        "The best dev-scored idea of each session and its ancestry: every ancestor idea (parent_ideas, "
        "recursively) with its agent, method, dev PGR and the forum posts it cites.",
        """
        WITH RECURSIVE best AS (
            SELECT session_id, idea_id, pgr FROM (
                SELECT session_id, idea_id, pgr,
                       row_number() OVER (PARTITION BY session_id ORDER BY pgr DESC NULLS LAST, time) AS rn
                FROM scores WHERE {where} AND purpose = 'score' AND split = 'dev' AND idea_id IS NOT NULL)
            WHERE rn = 1
        ), chain(session_id, best_idea, idea_id, depth) AS (
            SELECT session_id, idea_id, idea_id, 0 FROM best
            UNION ALL
            SELECT c.session_id, c.best_idea, p.parent_id, c.depth + 1
            FROM chain c JOIN ideas i ON i.session_id = c.session_id AND i.idea_id = c.idea_id,
                 unnest(i.parent_ideas) AS p(parent_id)
            WHERE c.depth < 20
        )
        SELECT c.session_id, c.best_idea, c.depth, c.idea_id, i.agent_id,
               coalesce(i.builtin_method, 'code:' || left(i.method_artifact, 12)) AS method,
               i.params::VARCHAR AS params,
               (SELECT round(max(s.pgr), 4) FROM scores s WHERE s.session_id = c.session_id
                  AND s.idea_id = c.idea_id AND s.purpose = 'score' AND s.split = 'dev') AS dev_pgr,
               (SELECT round(max(s.pgr), 4) FROM scores s WHERE s.session_id = c.session_id
                  AND s.idea_id = c.idea_id AND s.purpose = 'score' AND s.split = 'test') AS test_pgr,
               i.cites_posts
        FROM (SELECT DISTINCT * FROM chain) c
        LEFT JOIN ideas i ON i.session_id = c.session_id AND i.idea_id = c.idea_id
        ORDER BY c.session_id, c.depth, c.idea_id
        """,
    ),
    NamedQuery(
        "cost_per_agent",
        "LLM calls, tokens (input, output, cache read/write) and USD per agent, with ideas proposed, "
        "dev-scored ideas and USD per idea.",
        """
        WITH llm AS (
            SELECT session_id, agent_id, count(*) AS llm_calls, sum(input_tokens) AS input_tokens,
                   sum(output_tokens) AS output_tokens, sum(cache_read_tokens) AS cache_read_tokens,
                   sum(cache_write_tokens) AS cache_write_tokens, sum(cost_usd) AS cost_usd
            FROM llm_calls WHERE {where} GROUP BY ALL
        ), ideas_ AS (
            SELECT session_id, agent_id, count(*) AS ideas FROM ideas WHERE {where} GROUP BY ALL
        ), scored AS (
            SELECT session_id, agent_id, count(DISTINCT idea_id) AS scored_ideas FROM scores
            WHERE {where} AND purpose = 'score' AND split = 'dev' GROUP BY ALL
        )
        SELECT a.session_id, a.agent_id, a.backend, a.model, coalesce(ideas_.ideas, 0) AS ideas,
               coalesce(scored.scored_ideas, 0) AS scored_ideas, coalesce(llm.llm_calls, 0) AS llm_calls,
               coalesce(llm.input_tokens, 0) AS input_tokens, coalesce(llm.output_tokens, 0) AS output_tokens,
               coalesce(llm.cache_read_tokens, 0) AS cache_read_tokens,
               coalesce(llm.cache_write_tokens, 0) AS cache_write_tokens,
               round(coalesce(llm.cost_usd, 0), 6) AS cost_usd,
               round(coalesce(llm.cost_usd, 0) / nullif(ideas_.ideas, 0), 6) AS usd_per_idea
        FROM (SELECT * FROM agents WHERE {where}) a
        LEFT JOIN llm USING (session_id, agent_id)
        LEFT JOIN ideas_ USING (session_id, agent_id)
        LEFT JOIN scored USING (session_id, agent_id)
        ORDER BY a.session_id, cost_usd DESC, a.agent_id
        """,
    ),
    NamedQuery(
        "cost_per_idea",
        "LLM tokens and USD spent on each idea (agent.llm_called with an idea id; calls before any idea "
        "is chosen count under idea_id NULL), with the idea's dev PGR.",
        """
        SELECT l.session_id, l.idea_id, any_value(l.agent_id) AS agent_id, any_value(i.title) AS title,
               count(*) AS llm_calls, sum(l.input_tokens) AS input_tokens, sum(l.output_tokens) AS output_tokens,
               sum(l.cache_read_tokens) AS cache_read_tokens, round(sum(l.cost_usd), 6) AS cost_usd,
               (SELECT round(max(s.pgr), 4) FROM scores s WHERE s.session_id = l.session_id
                  AND s.idea_id = l.idea_id AND s.purpose = 'score' AND s.split = 'dev') AS dev_pgr
        FROM (SELECT * FROM llm_calls WHERE {where}) l
        LEFT JOIN ideas i ON i.session_id = l.session_id AND i.idea_id = l.idea_id
        GROUP BY l.session_id, l.idea_id
        ORDER BY l.session_id, cost_usd DESC
        """,
    ),
    NamedQuery(
        "evaluations_over_time",
        "Evaluation requests per agent per minute (experiment.requested for the agent's ideas, by purpose "
        "and split), with rate-limit flags in the same minute.",
        """
        WITH req AS (
            SELECT session_id, coalesce(agent_id, '(scorer)') AS agent_id, time_bucket(INTERVAL 1 MINUTE, requested_at) AS minute,
                   count(*) FILTER (WHERE purpose = 'score' AND split = 'dev') AS dev,
                   count(*) FILTER (WHERE purpose = 'score' AND split <> 'dev') AS test_heldout,
                   count(*) FILTER (WHERE purpose = 'ablation') AS ablation,
                   count(*) AS requests
            FROM experiments WHERE {where} GROUP BY ALL
        ), limited AS (
            SELECT session_id, agent_id, time_bucket(INTERVAL 1 MINUTE, time) AS minute, count(*) AS rate_limited
            FROM integrity_flags WHERE {where} AND "check" = 'rate_limit' GROUP BY ALL
        )
        SELECT session_id, agent_id, minute, coalesce(dev, 0) AS dev, coalesce(test_heldout, 0) AS test_heldout,
               coalesce(ablation, 0) AS ablation, coalesce(requests, 0) AS requests,
               coalesce(rate_limited, 0) AS rate_limited,
               sum(coalesce(requests, 0)) OVER (PARTITION BY session_id, agent_id ORDER BY minute) AS cumulative
        FROM req FULL JOIN limited USING (session_id, agent_id, minute)
        ORDER BY session_id, agent_id, minute
        """,
    ),
    NamedQuery(
        "flagged_ideas",
        "Ideas with integrity flags (teacher ablation, dev/test gap, rate limit, sandbox, tampering): "
        "check, severity, detail, and the idea's dev and test PGR.",
        """
        SELECT f.session_id, f.idea_id, coalesce(f.agent_id, i.agent_id) AS agent_id, f."check", f.severity,
               f.detail, f.time,
               (SELECT round(max(s.pgr), 4) FROM scores s WHERE s.session_id = f.session_id
                  AND s.idea_id = f.idea_id AND s.purpose = 'score' AND s.split = 'dev') AS dev_pgr,
               (SELECT round(max(s.pgr), 4) FROM scores s WHERE s.session_id = f.session_id
                  AND s.idea_id = f.idea_id AND s.purpose = 'score' AND s.split = 'test') AS test_pgr
        FROM (SELECT * FROM integrity_flags WHERE {where}) f
        LEFT JOIN ideas i ON i.session_id = f.session_id AND i.idea_id = f.idea_id
        ORDER BY f.session_id, f.time
        """,
    ),
    NamedQuery(
        "forum_influence",
        "Which forum posts the winning ideas (top 5 by dev PGR per session) cite, directly or through "
        "their parent ideas: post author, title, votes, and whether the author is another agent.",
        """
        WITH top AS (
            SELECT session_id, idea_id, pgr FROM (
                SELECT session_id, idea_id, max(pgr) AS pgr,
                       row_number() OVER (PARTITION BY session_id ORDER BY max(pgr) DESC NULLS LAST) AS rn
                FROM scores WHERE {where} AND purpose = 'score' AND split = 'dev' AND idea_id IS NOT NULL
                GROUP BY session_id, idea_id)
            WHERE rn <= 5
        ), cited AS (
            SELECT t.session_id, t.idea_id, t.pgr, 'direct' AS via, c.post_id
            FROM top t JOIN ideas i ON i.session_id = t.session_id AND i.idea_id = t.idea_id,
                 unnest(i.cites_posts) AS c(post_id)
            UNION ALL
            SELECT t.session_id, t.idea_id, t.pgr, 'parent ' || p.parent_id, c.post_id
            FROM top t JOIN ideas i ON i.session_id = t.session_id AND i.idea_id = t.idea_id,
                 unnest(i.parent_ideas) AS p(parent_id)
            JOIN ideas pi ON pi.session_id = t.session_id AND pi.idea_id = p.parent_id,
                 unnest(pi.cites_posts) AS c(post_id)
        )
        SELECT c.session_id, c.idea_id, round(c.pgr, 4) AS dev_pgr, i.agent_id AS idea_agent, c.via, c.post_id,
               fp.agent_id AS post_agent, fp.title AS post_title, fp.vote_score,
               fp.agent_id IS DISTINCT FROM i.agent_id AS cross_agent
        FROM cited c
        JOIN ideas i ON i.session_id = c.session_id AND i.idea_id = c.idea_id
        LEFT JOIN forum_posts fp ON fp.session_id = c.session_id AND fp.post_id = c.post_id
        ORDER BY c.session_id, c.pgr DESC, c.idea_id, c.via
        """,
    ),
    NamedQuery(
        "chain_breaks",
        "The first broken link of the log's hash chain (no rows: intact): batch, table, problem, positions, "
        "the event id / stream_seq found where the first difference is, and what differs. Whole log "
        "(--session is ignored); `aar verify-log` also checks projections and views.",
        chain.first_break_sql(),
    ),
    NamedQuery(
        "generalization",
        "One row per promoted idea (one with a test score): dev, test and each held-out PGR with its SE "
        "(held-out: 'dataset PGR ± SE', null where the dataset's gap is within noise), and dev minus test.",
        """
        WITH s AS (
            SELECT session_id, idea_id, agent_id, split, dataset, pgr, pgr_stderr, builtin_method, method_artifact
            FROM scores WHERE {where} AND purpose = 'score' AND idea_id IS NOT NULL
        ), promoted AS (
            SELECT DISTINCT session_id, idea_id FROM s WHERE split = 'test'
        )
        SELECT p.session_id, p.idea_id, any_value(s.agent_id) AS agent_id,
               any_value(coalesce(s.builtin_method, 'code:' || left(s.method_artifact, 10))) AS method,
               round(max(s.pgr) FILTER (WHERE s.split = 'dev'), 3) AS dev_pgr,
               round(max(s.pgr_stderr) FILTER (WHERE s.split = 'dev'), 3) AS dev_se,
               round(max(s.pgr) FILTER (WHERE s.split = 'test'), 3) AS test_pgr,
               round(max(s.pgr_stderr) FILTER (WHERE s.split = 'test'), 3) AS test_se,
               round(max(s.pgr) FILTER (WHERE s.split = 'dev') - max(s.pgr) FILTER (WHERE s.split = 'test'), 3)
                   AS dev_minus_test,
               coalesce(string_agg(s.dataset || ' ' || coalesce(CAST(round(s.pgr, 3) AS VARCHAR), 'null') || ' ± '
                                   || coalesce(CAST(round(s.pgr_stderr, 3) AS VARCHAR), '?'), '; '
                                   ORDER BY s.dataset) FILTER (WHERE s.split = 'heldout'), '') AS heldout
        FROM promoted p JOIN s ON s.session_id = p.session_id AND s.idea_id = p.idea_id
        GROUP BY p.session_id, p.idea_id
        ORDER BY p.session_id, test_pgr DESC NULLS LAST, p.idea_id
        """,
    ),
    NamedQuery(
        "tool_usage",
        "Agents' tool calls (agent.tool_called) per agent and tool: calls, failures, mean and max latency.",
        """
        SELECT session_id, agent_id, tool, count(*) AS calls, count(*) FILTER (WHERE NOT ok) AS failed,
               round(avg(latency_s), 4) AS mean_latency_s, round(max(latency_s), 4) AS max_latency_s
        FROM tool_calls WHERE {where}
        GROUP BY ALL ORDER BY session_id, agent_id, calls DESC
        """,
    ),
)}
