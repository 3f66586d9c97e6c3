"""Tables of the event log and the SQL views (read models) built on them."""

from __future__ import annotations

import duckdb

from . import projections
from .projections import source

TABLES = """
CREATE TABLE IF NOT EXISTS events (
    id VARCHAR PRIMARY KEY,
    type VARCHAR NOT NULL,
    schema_version INTEGER NOT NULL,
    session_id VARCHAR NOT NULL,
    source VARCHAR NOT NULL,
    time TIMESTAMPTZ NOT NULL,
    correlation_id VARCHAR,
    causation_id VARCHAR,
    payload JSON NOT NULL,
    subject VARCHAR,
    stream_seq BIGINT,
    recorded_at TIMESTAMPTZ NOT NULL
);
CREATE TABLE IF NOT EXISTS rejected_events (
    stream_seq BIGINT PRIMARY KEY,
    subject VARCHAR,
    reason VARCHAR NOT NULL,
    raw BLOB NOT NULL,
    event_id VARCHAR,
    event_type VARCHAR,
    session_id VARCHAR,
    recorded_at TIMESTAMPTZ NOT NULL
);
"""

# Each view is plain SQL over ``events``. Payload fields come from the typed
# projections (``projections.source``: always complete, see that module).
S = source

VIEWS: dict[str, str] = {
    "sessions": f"""
        WITH ev AS (
            SELECT session_id, min(time) AS first_event, max(time) AS last_event, count(*) AS events,
                   count(*) FILTER (WHERE type = 'score.published') AS scores,
                   count(*) FILTER (WHERE type = 'session.resumed') AS resumed
            FROM events GROUP BY session_id
        ), started AS (
            SELECT session_id, max(name) AS name, max(backend) AS backend, max(dataset) AS dataset
            FROM {S("session_started")} GROUP BY session_id
        ), ended AS (  -- the latest end: a session interrupted, then resumed, ends again
            SELECT session_id, arg_max(reason, (time, id)) AS end_reason FROM {S("session_ended")} GROUP BY session_id
        )
        SELECT ev.session_id, ev.first_event, ev.last_event, ev.events, started.name, started.backend,
               started.dataset, ended.end_reason, ev.scores, ev.resumed
        FROM ev LEFT JOIN started USING (session_id) LEFT JOIN ended USING (session_id)
    """,
    "agents": f"""
        WITH started AS (  -- one row per agent: its first start (a resumed agent starts again)
            SELECT session_id, agent_id, arg_min(direction, (time, id)) AS direction,
                   arg_min(backend, (time, id)) AS backend, arg_min(model, (time, id)) AS model,
                   min(time) AS started_at, count(*) AS starts
            FROM {S("agent_started")} GROUP BY ALL
        ), stopped AS (  -- and its latest stop
            SELECT session_id, agent_id, arg_max(reason, (time, id)) AS stop_reason, max(time) AS stopped_at
            FROM {S("agent_stopped")} GROUP BY ALL
        ), llm AS (
            SELECT session_id, agent_id, count(*) AS llm_calls, sum(cost_usd) AS cost_usd,
                   sum(input_tokens) AS input_tokens, sum(output_tokens) AS output_tokens
            FROM {S("llm_called")} GROUP BY ALL
        ), ideas AS (
            SELECT session_id, agent_id, count(*) AS ideas FROM {S("idea_proposed")} GROUP BY ALL
        )
        SELECT s.session_id, s.agent_id, s.direction, s.backend, s.model, s.started_at,
               t.stopped_at, t.stop_reason,
               coalesce(i.ideas, 0) AS ideas,
               coalesce(l.llm_calls, 0) AS llm_calls,
               coalesce(l.cost_usd, 0) AS cost_usd,
               coalesce(l.input_tokens, 0) AS input_tokens,
               coalesce(l.output_tokens, 0) AS output_tokens
        FROM started s
        LEFT JOIN stopped t USING (session_id, agent_id)
        LEFT JOIN llm l USING (session_id, agent_id)
        LEFT JOIN ideas i USING (session_id, agent_id)
    """,
    "ideas": f"""
        SELECT idea_id, session_id, id AS event_id, time, agent_id, title, hypothesis, why,
               parent_ideas, cites_posts, method_artifact, builtin_method, params
        FROM {S("idea_proposed")}
    """,
    "experiments": f"""
        WITH req AS (
            SELECT experiment_id, session_id, id AS event_id, time AS requested_at, idea_id, agent_id,
                   purpose, split, dataset, seeds, method_artifact, builtin_method, shuffle_weak_labels
            FROM {S("experiment_requested")}
        ), status AS (
            SELECT *, row_number() OVER (PARTITION BY session_id, experiment_id ORDER BY time DESC, id DESC) AS rn
            FROM {S("experiment_status")}
        ), attempts AS (
            SELECT session_id, experiment_id, count(*) AS attempts
            FROM {S("experiment_status")} WHERE type = 'experiment.started' GROUP BY ALL
        )
        SELECT req.*,
               coalesce(replace(status.type, 'experiment.', ''), 'requested') AS status,
               status.time AS status_at,
               status.trainer_id,
               status.runtime_s,
               status.peak_rss_mb,
               status.predictions_artifact,
               status.error_class,
               status.message AS error_message,
               coalesce(attempts.attempts, 0) AS attempts
        FROM req
        LEFT JOIN status ON status.session_id = req.session_id AND status.experiment_id = req.experiment_id
                         AND status.rn = 1
        LEFT JOIN attempts ON attempts.session_id = req.session_id AND attempts.experiment_id = req.experiment_id
    """,
    "scores": f"""
        SELECT experiment_id, session_id, id AS event_id, time, idea_id, agent_id,
               coalesce(purpose, 'score') AS purpose, dataset, split, n_seeds, accuracy,
               accuracy_stderr, weak_accuracy, ceiling_accuracy, pgr, pgr_stderr,
               method_artifact, builtin_method
        FROM {S("score")}
    """,
    "forum_posts": f"""
        WITH ballots AS (  -- one vote per agent per post: the latest counts (as in the forum service)
            SELECT session_id, post_id, agent_id AS voter, arg_max(value, (time, id)) AS value
            FROM {S("forum_voted")} GROUP BY ALL
        ), votes AS (
            SELECT session_id, post_id, sum(value) AS score, count(*) AS votes FROM ballots GROUP BY ALL
        ), moderation AS (
            SELECT session_id, post_id, arg_max(action, (time, id)) AS action
            FROM {S("forum_moderated")} GROUP BY ALL
        ), posts AS (
            SELECT * FROM {S("forum_posted")}
        )
        SELECT posts.post_id, posts.session_id, posts.id AS event_id, posts.time, posts.agent_id, posts.title,
               posts.body, posts.reply_to, posts.idea_ids, posts.experiment_ids, posts.tags,
               coalesce(votes.score, 0) AS vote_score, coalesce(votes.votes, 0) AS votes,
               coalesce(moderation.action, 'visible') = 'hide' AS hidden
        FROM posts
        LEFT JOIN votes ON votes.session_id = posts.session_id AND votes.post_id = posts.post_id
        LEFT JOIN moderation ON moderation.session_id = posts.session_id AND moderation.post_id = posts.post_id
    """,
    "llm_calls": f"""
        SELECT id AS event_id, session_id, time, correlation_id, agent_id, model, idea_id,
               input_tokens, output_tokens, cache_read_tokens, cache_write_tokens, cost_usd,
               latency_s, stop_reason
        FROM {S("llm_called")}
    """,
    "tool_calls": f"""
        SELECT id AS event_id, session_id, time, correlation_id, agent_id, tool, ok, error,
               latency_s, result_summary, arguments
        FROM {S("tool_called")}
    """,
    "agent_runs": f"""
        SELECT id AS event_id, session_id, time, type, agent_id, direction, backend, model, NULL AS reason
        FROM {S("agent_started")}
        UNION ALL
        SELECT id, session_id, time, type, agent_id, NULL, NULL, NULL, reason FROM {S("agent_stopped")}
    """,
    "integrity_flags": f"""
        SELECT id AS event_id, session_id, time, "check", severity, detail, idea_id, experiment_id, agent_id
        FROM {S("integrity_flagged")}
    """,
}


def create_views_sql() -> str:
    return "\n".join(f"CREATE OR REPLACE VIEW {name} AS {sql.strip()};" for name, sql in VIEWS.items())


def create_schema(con: duckdb.DuckDBPyConnection) -> None:
    """The log's tables, its typed projections and the views, in the current catalog."""
    con.execute(TABLES)
    projections.ensure(con)
    con.execute(create_views_sql())
