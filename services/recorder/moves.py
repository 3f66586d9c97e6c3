"""The SQL of one move: inbox rows in ``(lo, hi]`` into the log, in inbox order.

Two paths (``store.EventStore.move`` runs them in one transaction with the chain link):

- **plain**: no key of the stretch is in the log or twice in it (nearly always): an
  ``INSERT`` per table. A duplicate key makes it fail (``ConstraintException``); then
- **dedupe**: each event of the stretch is classified against the copy that wins its
  id: the one already in the log, else the stretch's first (by inbox order):

  - ``new``: the winner, not yet in the log: inserted;
  - ``redelivery``: the same stream sequence as the winner (the same message again):
    dropped;
  - ``repeat``: another message with the *same body* (every envelope field, ``id``
    ``type`` ``schema_version`` ``session_id`` ``source`` ``time`` ``correlation_id``
    ``causation_id``, and the payload as stored; not ``subject``, which follows from
    them, nor ``stream_seq`` / ``recorded_at``): a retried publish: dropped;
  - ``conflict``: a *different body* under an id already taken: a row in
    ``rejected_events`` (reason ``conflict: ...`` naming the id, the stored copy's
    stream sequence and the fields that differ; ``raw`` the copy's JSON), announced
    like any rejection.

  Rejections (and conflicts) keep the first row per stream sequence not already in
  the log.
"""

from __future__ import annotations

from core.audit import code_identifier, code_literal

from .chain import COLUMNS

EVENT_COLUMNS = tuple(c for c, _ in COLUMNS["events"])
REJECTED_COLUMNS = tuple(c for c, _ in COLUMNS["rejected_events"])
BODY = ("type", "schema_version", "session_id", "source", "time", "correlation_id", "causation_id", "payload")
TEMP = code_identifier("move_events")  # the classified stretch (dedupe path), on the mover's own cursor


def _cols(columns: tuple[str, ...], alias: str = "") -> str:
    p = f"{alias}." if alias else ""
    return ", ".join(f'{p}"{c}"' for c in columns)


def plain_insert(table: str, source: str) -> str:
    columns = EVENT_COLUMNS if table == "events" else REJECTED_COLUMNS
    return f"INSERT INTO {table} SELECT {_cols(columns)} FROM ({source}) ORDER BY inbox_seq"


def classify(source: str) -> str:
    """``CREATE TEMP TABLE move_events``: every event of the stretch with its verdict."""
    text = ", ".join(f'"{c}"' if c != "payload" else 'payload::VARCHAR AS payload' for c in EVENT_COLUMNS)
    differs = ", ".join(f"CASE WHEN r.\"{c}\" IS DISTINCT FROM w.\"{c}\" THEN {code_literal(c)} END" for c in BODY)
    same = " AND ".join(f'r."{c}" IS NOT DISTINCT FROM w."{c}"' for c in BODY)
    return f"""
CREATE OR REPLACE TEMP TABLE {TEMP} AS
WITH cand AS (SELECT {text}, inbox_seq, 1 AS origin FROM ({source})),
stored AS (SELECT {text}, NULL::BIGINT AS inbox_seq, 0 AS origin FROM events
           WHERE id IN (SELECT id FROM cand)),
ranked AS (
    SELECT *, row_number() OVER (PARTITION BY id ORDER BY origin, inbox_seq) AS rn
    FROM (SELECT * FROM stored UNION ALL SELECT * FROM cand)
),
w AS (SELECT * FROM ranked WHERE rn = 1)
SELECT {_cols(EVENT_COLUMNS, "r")}, r.inbox_seq, r.origin,
       CASE WHEN r.rn = 1 THEN (CASE WHEN r.origin = 1 THEN 'new' ELSE 'stored' END)
            WHEN r.stream_seq IS NOT NULL AND r.stream_seq = w.stream_seq THEN 'redelivery'
            WHEN {same} THEN 'repeat'
            ELSE 'conflict' END AS verdict,
       w.stream_seq AS winner_seq, w.origin AS winner_origin,
       concat_ws(', ', {differs}) AS differs
FROM ranked r JOIN w USING (id)
"""


INSERT_NEW = f"INSERT INTO events SELECT {_cols(EVENT_COLUMNS)} FROM {TEMP} WHERE verdict = 'new' ORDER BY inbox_seq"

# A conflicting copy as a rejection: a faithful JSON of the row as raw.
_CONFLICTS = f"""
SELECT coalesce(stream_seq, -inbox_seq) AS stream_seq, subject,
       'conflict: event id ' || id || ' was already recorded with a different body (stored copy: stream_seq '
       || coalesce(winner_seq::VARCHAR, 'none') || CASE WHEN winner_origin = 1 THEN ', stored in this same move'
       ELSE '' END || '); this copy (stream_seq ' || coalesce(stream_seq::VARCHAR, 'none')
       || ') differs in ' || differs || '. The first copy stays in events; this one is kept here' AS reason,
       encode(to_json({{
           'id': id, 'type': type, 'schema_version': schema_version, 'session_id': session_id,
           'source': source, 'time': strftime(time AT TIME ZONE 'UTC', '%Y-%m-%dT%H:%M:%S.%fZ'),
           'correlation_id': correlation_id, 'causation_id': causation_id, 'payload': payload::JSON
       }})::VARCHAR) AS raw,
       id AS event_id, type AS event_type, session_id, recorded_at, inbox_seq
FROM {TEMP} WHERE verdict = 'conflict'
"""


def insert_rejected(source: str | None) -> str:
    """Rejections of the stretch and its conflicts, first copy per stream sequence, none
    already in the log."""
    parts = [_CONFLICTS]
    if source is not None:
        parts.insert(0, f"SELECT {_cols(REJECTED_COLUMNS)}, inbox_seq FROM ({source})")
    return f"""
INSERT INTO rejected_events
SELECT {_cols(REJECTED_COLUMNS)} FROM ({" UNION ALL ".join(parts)}) c
WHERE NOT EXISTS (SELECT 1 FROM rejected_events x WHERE x.stream_seq = c.stream_seq)
QUALIFY row_number() OVER (PARTITION BY stream_seq ORDER BY inbox_seq) = 1
ORDER BY inbox_seq
"""


# The conflicts a move stored (to announce), among the rejections above a rowid.
STORED_CONFLICTS = f"""
SELECT stream_seq, subject, reason, octet_length(raw) FROM rejected_events
WHERE rowid > ? AND stream_seq IN (SELECT coalesce(stream_seq, -inbox_seq) FROM {TEMP} WHERE verdict = 'conflict')
ORDER BY rowid
"""
COUNT_CONFLICTS = f"SELECT count(*) FROM {TEMP} WHERE verdict = 'conflict'"
