"""Tables of the event log and the SQL views (read models) built on them."""

from __future__ import annotations

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

# Each view is plain SQL over ``events``; payload fields come out of the JSON.
VIEWS: dict[str, str] = {
    "sessions": """
        SELECT session_id,
               min(time) AS first_event,
               max(time) AS last_event,
               count(*) AS events,
               max(CASE WHEN type = 'session.started' THEN payload->>'name' END) AS name,
               max(CASE WHEN type = 'session.started' THEN payload->>'backend' END) AS backend,
               max(CASE WHEN type = 'session.started' THEN payload->>'dataset' END) AS dataset,
               max(CASE WHEN type = 'session.ended' THEN payload->>'reason' END) AS end_reason,
               count(*) FILTER (WHERE type = 'score.published') AS scores
        FROM events GROUP BY session_id
    """,
    "agents": """
        WITH started AS (
            SELECT session_id, payload->>'agent_id' AS agent_id, payload->>'direction' AS direction,
                   payload->>'backend' AS backend, payload->>'model' AS model, time AS started_at
            FROM events WHERE type = 'agent.started'
        ), stopped AS (
            SELECT session_id, payload->>'agent_id' AS agent_id, payload->>'reason' AS stop_reason,
                   time AS stopped_at
            FROM events WHERE type = 'agent.stopped'
        ), llm AS (
            SELECT session_id, payload->>'agent_id' AS agent_id, count(*) AS llm_calls,
                   sum(CAST(payload->>'cost_usd' AS DOUBLE)) AS cost_usd,
                   sum(CAST(payload->>'input_tokens' AS BIGINT)) AS input_tokens,
                   sum(CAST(payload->>'output_tokens' AS BIGINT)) AS output_tokens
            FROM events WHERE type = 'agent.llm_called' GROUP BY ALL
        ), ideas AS (
            SELECT session_id, payload->>'agent_id' AS agent_id, count(*) AS ideas
            FROM events WHERE type = 'idea.proposed' GROUP BY ALL
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
    "ideas": """
        SELECT payload->>'idea_id' AS idea_id, session_id, id AS event_id, time,
               payload->>'agent_id' AS agent_id, payload->>'title' AS title,
               payload->>'hypothesis' AS hypothesis, payload->>'why' AS why,
               from_json(payload->'parent_ideas', '["VARCHAR"]') AS parent_ideas,
               from_json(payload->'cites_posts', '["VARCHAR"]') AS cites_posts,
               payload->>'method_artifact' AS method_artifact,
               payload->>'builtin_method' AS builtin_method,
               payload->'params' AS params
        FROM events WHERE type = 'idea.proposed'
    """,
    "experiments": """
        WITH req AS (
            SELECT payload->>'experiment_id' AS experiment_id, session_id, id AS event_id,
                   time AS requested_at, payload->>'idea_id' AS idea_id, payload->>'agent_id' AS agent_id,
                   payload->>'purpose' AS purpose, payload->>'split' AS split,
                   payload->>'dataset' AS dataset,
                   from_json(payload->'seeds', '["INTEGER"]') AS seeds,
                   payload->>'method_artifact' AS method_artifact,
                   payload->>'builtin_method' AS builtin_method,
                   CAST(payload->>'shuffle_weak_labels' AS BOOLEAN) AS shuffle_weak_labels
            FROM events WHERE type = 'experiment.requested'
        ), status AS (
            SELECT session_id, payload->>'experiment_id' AS experiment_id, type, time, payload,
                   row_number() OVER (PARTITION BY session_id, payload->>'experiment_id'
                                      ORDER BY time DESC, id DESC) AS rn
            FROM events
            WHERE type IN ('experiment.started', 'experiment.finished', 'experiment.failed')
        ), attempts AS (
            SELECT session_id, payload->>'experiment_id' AS experiment_id, count(*) AS attempts
            FROM events WHERE type = 'experiment.started' GROUP BY ALL
        )
        SELECT req.*,
               coalesce(replace(status.type, 'experiment.', ''), 'requested') AS status,
               status.time AS status_at,
               status.payload->>'trainer_id' AS trainer_id,
               CAST(status.payload->>'runtime_s' AS DOUBLE) AS runtime_s,
               CAST(status.payload->>'peak_rss_mb' AS DOUBLE) AS peak_rss_mb,
               status.payload->>'predictions_artifact' AS predictions_artifact,
               status.payload->>'error_class' AS error_class,
               status.payload->>'message' AS error_message,
               coalesce(attempts.attempts, 0) AS attempts
        FROM req
        LEFT JOIN status ON status.session_id = req.session_id AND status.experiment_id = req.experiment_id
                         AND status.rn = 1
        LEFT JOIN attempts ON attempts.session_id = req.session_id AND attempts.experiment_id = req.experiment_id
    """,
    "scores": """
        SELECT payload->>'experiment_id' AS experiment_id, session_id, id AS event_id, time,
               payload->>'idea_id' AS idea_id, payload->>'agent_id' AS agent_id,
               coalesce(payload->>'purpose', 'score') AS purpose,
               payload->>'dataset' AS dataset, payload->>'split' AS split,
               CAST(payload->>'n_seeds' AS INTEGER) AS n_seeds,
               CAST(payload->>'accuracy' AS DOUBLE) AS accuracy,
               CAST(payload->>'accuracy_stderr' AS DOUBLE) AS accuracy_stderr,
               CAST(payload->>'weak_accuracy' AS DOUBLE) AS weak_accuracy,
               CAST(payload->>'ceiling_accuracy' AS DOUBLE) AS ceiling_accuracy,
               CAST(payload->>'pgr' AS DOUBLE) AS pgr,
               CAST(payload->>'pgr_stderr' AS DOUBLE) AS pgr_stderr,
               payload->>'method_artifact' AS method_artifact,
               payload->>'builtin_method' AS builtin_method
        FROM events WHERE type IN ('score.published', 'score.withheld')
    """,
    "forum_posts": """
        WITH ballots AS (  -- one vote per agent per post: the latest counts (as in the forum service)
            SELECT session_id, payload->>'post_id' AS post_id, payload->>'agent_id' AS voter,
                   arg_max(CAST(payload->>'value' AS INTEGER), (time, id)) AS value
            FROM events WHERE type = 'forum.voted' GROUP BY ALL
        ), votes AS (
            SELECT session_id, post_id, sum(value) AS score, count(*) AS votes FROM ballots GROUP BY ALL
        ), moderation AS (
            SELECT session_id, payload->>'post_id' AS post_id, arg_max(payload->>'action', (time, id)) AS action
            FROM events WHERE type = 'forum.moderated' GROUP BY ALL
        )
        SELECT payload->>'post_id' AS post_id, events.session_id, id AS event_id, time,
               payload->>'agent_id' AS agent_id, payload->>'title' AS title, payload->>'body' AS body,
               payload->>'reply_to' AS reply_to,
               from_json(payload->'idea_ids', '["VARCHAR"]') AS idea_ids,
               from_json(payload->'experiment_ids', '["VARCHAR"]') AS experiment_ids,
               from_json(payload->'tags', '["VARCHAR"]') AS tags,
               coalesce(votes.score, 0) AS vote_score, coalesce(votes.votes, 0) AS votes,
               coalesce(moderation.action, 'visible') = 'hide' AS hidden
        FROM events
        LEFT JOIN votes ON votes.session_id = events.session_id AND votes.post_id = payload->>'post_id'
        LEFT JOIN moderation ON moderation.session_id = events.session_id
                             AND moderation.post_id = payload->>'post_id'
        WHERE type = 'forum.posted'
    """,
    "llm_calls": """
        SELECT id AS event_id, session_id, time, correlation_id,
               payload->>'agent_id' AS agent_id, payload->>'model' AS model,
               payload->>'idea_id' AS idea_id,
               CAST(payload->>'input_tokens' AS BIGINT) AS input_tokens,
               CAST(payload->>'output_tokens' AS BIGINT) AS output_tokens,
               CAST(payload->>'cache_read_tokens' AS BIGINT) AS cache_read_tokens,
               CAST(payload->>'cache_write_tokens' AS BIGINT) AS cache_write_tokens,
               CAST(payload->>'cost_usd' AS DOUBLE) AS cost_usd,
               CAST(payload->>'latency_s' AS DOUBLE) AS latency_s,
               payload->>'stop_reason' AS stop_reason
        FROM events WHERE type = 'agent.llm_called'
    """,
    "integrity_flags": """
        SELECT id AS event_id, session_id, time, payload->>'check' AS "check",
               payload->>'severity' AS severity, payload->>'detail' AS detail,
               payload->>'idea_id' AS idea_id, payload->>'experiment_id' AS experiment_id,
               payload->>'agent_id' AS agent_id
        FROM events WHERE type = 'integrity.flagged'
    """,
}


def create_views_sql() -> str:
    return "\n".join(f"CREATE OR REPLACE VIEW {name} AS {sql.strip()};" for name, sql in VIEWS.items())
