"""Tamper evidence for the event log: a hash chain with one link per move.

Every transaction that adds rows to ``events`` or ``rejected_events`` (a move of
the inboxes into the log, see ``store``) ends by appending one row to ``log_chain``,
computed in SQL from the rows as they are stored, so that the log cannot change
afterwards without notice (``aar verify-log``, the named audit ``chain_breaks``).

Formulas (version ``aar-log-chain-v1``); all of them are in this module, as SQL,
used by the recorder to write a link and by verification to check one:

- A field is encoded without ambiguity: NULL is ``N``; text (VARCHAR, JSON) is
  ``S<bytes>:<text>``; an integer ``I<decimal>;``; a timestamp ``T<epoch µs>;``; a
  blob ``B<bytes>:<sha256 hex>``. ``row_hash(table)`` is the SHA-256 (hex) of the
  table's name, ``|`` and the encodings of all its columns, in a fixed order.
- A row's *position* is its rank in the table by ``rowid`` (0-based): the order rows
  were stored in. Batch ``k`` covers positions ``[events_from, events_from +
  events_count)`` of ``events`` and likewise of ``rejected_events``; batches are
  contiguous, numbered 1, 2, ... .
- ``events_digest`` = SHA-256 of the concatenated row hashes of the batch's rows in
  position order (of the empty string for none); ``events_fingerprints`` = the first
  8 bytes of each row hash, in order (to point at the row that changed); the same
  for ``rejected_*``.
- ``hash`` = SHA-256 of ``aar-log-chain-v1`` and the encodings of ``batch``,
  ``chained_at``, ``note``, ``events_from``, ``events_count``, ``events_digest``,
  ``rejected_from``, ``rejected_count``, ``rejected_digest`` and ``prev_hash``;
  ``prev_hash`` is the previous batch's ``hash`` (64 zeros for batch 1).

A log recorded before the chain existed gets a first batch over everything it holds
(its ``note`` says so): those rows are covered from then on, not before.

What it proves: any change to a stored row, a row added or removed anywhere, and any
edit of ``log_chain`` itself that is not a complete, consistent recomputation, is
found. Someone who rewrites the rows *and* recomputes every later link (the formulas
are public, there is no secret) is only caught by comparing the head (the last
``hash``) with one kept elsewhere: the recorder logs it (``chain_head``), its
``health`` answer carries it, and ``aar verify-log --head HASH`` checks it.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from core.audit import code_identifier, code_literal

VERSION = "aar-log-chain-v1"
TABLE = code_identifier("log_chain")
GENESIS_PREV = "0" * 64
FINGERPRINT_HEX = 16  # hex digits of a row hash kept per row (8 bytes)

# Column kinds: V text, J json, I integer, T timestamp, B blob.
COLUMNS: dict[str, tuple[tuple[str, str], ...]] = {
    "events": (("id", "V"), ("type", "V"), ("schema_version", "I"), ("session_id", "V"), ("source", "V"),
               ("time", "T"), ("correlation_id", "V"), ("causation_id", "V"), ("payload", "J"),
               ("subject", "V"), ("stream_seq", "I"), ("recorded_at", "T")),
    "rejected_events": (("stream_seq", "I"), ("subject", "V"), ("reason", "V"), ("raw", "B"),
                        ("event_id", "V"), ("event_type", "V"), ("session_id", "V"), ("recorded_at", "T")),
}
SHORT = {"events": "events", "rejected_events": "rejected"}  # column prefix in log_chain
# How a row is named in a report: its key.
KEYS = {"events": "id", "rejected_events": "stream_seq::VARCHAR"}

CREATE_SQL = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    batch BIGINT PRIMARY KEY,
    chained_at TIMESTAMPTZ NOT NULL,
    note VARCHAR,
    events_from BIGINT NOT NULL,
    events_count BIGINT NOT NULL,
    events_digest VARCHAR NOT NULL,
    events_fingerprints BLOB NOT NULL,
    rejected_from BIGINT NOT NULL,
    rejected_count BIGINT NOT NULL,
    rejected_digest VARCHAR NOT NULL,
    rejected_fingerprints BLOB NOT NULL,
    prev_hash VARCHAR NOT NULL,
    hash VARCHAR NOT NULL
)
"""


def field(expr: str, kind: str) -> str:
    """The unambiguous encoding of one value (see the module doc)."""
    if kind in ("V", "J"):
        text = f"({expr})::VARCHAR"
        body = f"concat('S', strlen({text}), ':', {text})"
    elif kind == "I":
        body = f"concat('I', ({expr})::VARCHAR, ';')"
    elif kind == "T":
        body = f"concat('T', epoch_us({expr})::VARCHAR, ';')"
    elif kind == "B":
        body = f"concat('B', octet_length({expr}), ':', sha256({expr}))"
    else:
        raise ValueError(f"unknown column kind {kind!r}")
    return f"(CASE WHEN ({expr}) IS NULL THEN 'N' ELSE {body} END)"


def row_hash(table: str, alias: str = "") -> str:
    """SQL: the hex SHA-256 of one row of ``table`` (``alias.`` prefixes its columns)."""
    prefix = f"{alias}." if alias else ""
    parts = ", ".join(field(f'{prefix}"{col}"', kind) for col, kind in COLUMNS[table])
    return f"sha256(concat('{code_identifier(table)}|', {parts}))"


def digest(h: str = "h", order: str = "pos") -> str:
    """SQL aggregate: the digest of a group of row hashes ``h`` in ``order``."""
    return f"sha256(coalesce(string_agg({h}, '' ORDER BY {order}), ''))"


def fingerprints(h: str = "h", order: str = "pos") -> str:
    """SQL aggregate: the first bytes of each row hash, in ``order``, as one BLOB."""
    return f"unhex(coalesce(string_agg(left({h}, {FINGERPRINT_HEX}), '' ORDER BY {order}), ''))"


def link_hash(alias: str = "") -> str:
    """SQL: a batch's ``hash`` from its other columns."""
    p = f"{alias}." if alias else ""
    parts = ", ".join(field(f"{p}{col}", kind) for col, kind in (
        ("batch", "I"), ("chained_at", "T"), ("note", "V"),
        ("events_from", "I"), ("events_count", "I"), ("events_digest", "V"),
        ("rejected_from", "I"), ("rejected_count", "I"), ("rejected_digest", "V"),
        ("prev_hash", "V")))
    return f"sha256(concat({code_literal(VERSION)}, {parts}))"


def _new_rows(table: str, any_rows: bool = True) -> str:
    """The rows of ``table`` above a rowid (bound parameter), hashed, in stored order
    (``any_rows`` False: the caller knows there are none: the same result, computed for free)."""
    if not any_rows:
        return "SELECT 0::BIGINT AS n, sha256('') AS d, ''::BLOB AS fp WHERE ? IS NOT NULL OR TRUE"
    return (f"SELECT count(*) AS n, {digest('h', 'rid')} AS d, {fingerprints('h', 'rid')} AS fp "
            f"FROM (SELECT rowid AS rid, {row_hash(table)} AS h FROM {table} WHERE rowid > ?)")


def append_sql(events: bool = True, rejected: bool = True) -> str:
    """One new link over the rows of each table above the given rowids (parameters:
    events rowid, rejected rowid, note), in the transaction that inserted them.
    ``events`` / ``rejected`` False: that table got no rows (skips hashing nothing)."""
    return f"""
INSERT INTO {TABLE}
WITH prev AS (
    SELECT coalesce(max(batch), 0) AS batch,
           coalesce(arg_max(hash, batch), {code_literal(GENESIS_PREV)}) AS hash,
           coalesce(arg_max(events_from + events_count, batch), 0) AS e_next,
           coalesce(arg_max(rejected_from + rejected_count, batch), 0) AS r_next
    FROM {TABLE}
), e AS ({_new_rows("events", events)}), r AS ({_new_rows("rejected_events", rejected)}),
b AS (
    SELECT prev.batch + 1 AS batch, now()::TIMESTAMPTZ AS chained_at, ?::VARCHAR AS note,
           prev.e_next AS events_from, e.n AS events_count, e.d AS events_digest, e.fp AS events_fingerprints,
           prev.r_next AS rejected_from, r.n AS rejected_count, r.d AS rejected_digest,
           r.fp AS rejected_fingerprints, prev.hash AS prev_hash
    FROM prev, e, r
)
SELECT *, {link_hash("b")} AS hash FROM b
RETURNING batch, hash, events_count, rejected_count
"""


APPEND_SQL = append_sql()
_APPEND = {(e, r): append_sql(e, r) for e in (True, False) for r in (True, False)}


@dataclass(frozen=True, slots=True)
class Link:
    batch: int
    hash: str
    events: int
    rejected: int


def ensure(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(CREATE_SQL)


def top_rowids(con: duckdb.DuckDBPyConnection, floors: tuple[int, int] = (-1, -1)) -> tuple[int, int]:
    """The highest rowid of ``events`` and of ``rejected_events`` (-1: empty), found
    from ``floors`` up (any rowids known not to exceed them: the scan then skips the
    row groups below)."""
    row = con.execute(
        "SELECT (SELECT coalesce(max(rowid), ?) FROM events WHERE rowid >= ?), "
        "(SELECT coalesce(max(rowid), ?) FROM rejected_events WHERE rowid >= ?)",
        [floors[0], floors[0], floors[1], floors[1]]).fetchall()[0]
    return int(row[0]), int(row[1])


def append(con: duckdb.DuckDBPyConnection, above: tuple[int, int], note: str | None = None, *,
           events: bool = True, rejected: bool = True) -> Link:
    """Append the link over the rows above ``above`` (rowids, from ``top_rowids`` before
    they were inserted), in the caller's transaction. ``events`` / ``rejected`` False:
    the caller knows that table got no rows."""
    row = con.execute(_APPEND[(events, rejected)], [above[0], above[1], note]).fetchall()[0]
    return Link(int(row[0]), str(row[1]), int(row[2]), int(row[3]))


def head(con: duckdb.DuckDBPyConnection) -> tuple[int, str | None]:
    """The last batch number and hash (0, None: no chain yet)."""
    row = con.execute(f"SELECT coalesce(max(batch), 0), arg_max(hash, batch) FROM {TABLE}").fetchall()[0]
    return int(row[0]), row[1]


def start_over(con: duckdb.DuckDBPyConnection) -> Link | None:
    """For a log recorded before the chain: a first batch over all it holds (None when the
    chain already has links, or the log is empty). In one transaction."""
    con.execute("BEGIN TRANSACTION")
    try:
        batches = con.execute(f"SELECT count(*) FROM {TABLE}").fetchall()[0][0]
        events, rejected = con.execute(
            "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM rejected_events)").fetchall()[0]
        if batches or not (events or rejected):
            con.execute("ROLLBACK")
            return None
        note = (f"chain started over {events} events and {rejected} rejected events already in the log; "
                "they were recorded before this log had a chain, so nothing vouches for them before now")
        link = append(con, (-1, -1), note)
        con.execute("COMMIT")
        return link
    except Exception:
        con.execute("ROLLBACK")
        raise


# -- verification ----------------------------------------------------------------------

def _positions(table: str, db: str) -> str:
    # (hashed first, so that the window keeps three columns per row, not the whole table)
    return (f"SELECT row_number() OVER (ORDER BY rid) - 1 AS pos, key, h FROM ("
            f"SELECT rowid AS rid, {KEYS[table]} AS key, {row_hash(table)} AS h FROM {db}{table})")


def _placed(table: str, db: str) -> str:
    """Each row of ``table`` with its position and the batch that covers it (NULL: none)."""
    s = SHORT[table]
    return (f"SELECT CASE WHEN r.pos < c.{s}_from + c.{s}_count THEN c.batch END AS batch, "
            f"r.pos - c.{s}_from AS i, r.pos, r.key, r.h "
            f"FROM ({_positions(table, db)}) r ASOF LEFT JOIN "
            f"(SELECT batch, {s}_from, {s}_count FROM chain WHERE {s}_count > 0) c ON r.pos >= c.{s}_from")


def _data_checks(table: str) -> str:
    """Per batch: the rows found where the batch says its rows are, against what it recorded."""
    s = SHORT[table]
    cte = f"placed_{s}"
    return f"""
        SELECT c.batch, {code_literal(table)} AS tbl,
               c.{s}_from AS first_pos, c.{s}_count AS recorded_rows, coalesce(f.n, 0) AS found_rows,
               c.{s}_digest AS recorded, coalesce(f.d, sha256('')) AS found,
               c.{s}_fingerprints AS recorded_fp, coalesce(f.fp, ''::BLOB) AS found_fp
        FROM chain c LEFT JOIN (
            SELECT batch, count(*) AS n, {digest()} AS d, {fingerprints()} AS fp FROM {cte}
            WHERE batch IS NOT NULL GROUP BY batch
        ) f USING (batch)"""


def breaks_sql(db: str = "") -> str:
    """SQL: every broken link of the chain, the first first (ordered by batch; rows
    outside every batch come last). Columns: batch, tbl, problem, first_pos, rows,
    at_pos, at_key, detail. No rows: the log is intact (as far as the chain goes).
    ``db``: a prefix for the log's tables (``"log."`` when it is attached as ``log``)."""
    zeros = code_literal(GENESIS_PREV)
    db = code_identifier(db) if db else ""  # a catalog prefix from code (identifiers cannot be bound)
    return f"""
WITH chain AS (
    SELECT *, {link_hash()} AS computed_hash,
           row_number() OVER (ORDER BY batch) AS k,
           lag(batch) OVER (ORDER BY batch) AS prev_batch,
           lag(hash) OVER (ORDER BY batch) AS prev_link,
           lag(events_from + events_count) OVER (ORDER BY batch) AS prev_e_next,
           lag(rejected_from + rejected_count) OVER (ORDER BY batch) AS prev_r_next
    FROM {db}{TABLE}
),
placed_events AS ({_placed("events", db)}),
placed_rejected AS ({_placed("rejected_events", db)}),
links AS (
    SELECT batch, NULL AS tbl, 'batch numbers skip' AS problem, NULL::BIGINT AS first_pos, NULL::BIGINT AS rows,
           'batch ' || batch || ' follows ' || coalesce('batch ' || prev_batch, 'nothing') ||
           ': links of the chain were removed' AS detail
    FROM chain WHERE batch <> coalesce(prev_batch, 0) + 1
    UNION ALL
    SELECT batch, NULL, 'link broken', NULL, NULL,
           'prev_hash ' || prev_hash || ' is not the hash of the batch before (' ||
           coalesce(prev_link, {zeros}) || ')'
    FROM chain WHERE prev_hash IS DISTINCT FROM coalesce(prev_link, {zeros})
    UNION ALL
    SELECT batch, NULL, 'link edited', NULL, NULL,
           'the hash stored (' || hash || ') is not the hash of the batch''s fields (' || computed_hash ||
           '): its counts, digests or note were changed'
    FROM chain WHERE hash IS DISTINCT FROM computed_hash
    UNION ALL
    SELECT batch, 'events', 'positions not contiguous', events_from, events_count,
           'events of batch ' || batch || ' start at position ' || events_from || ', the batch before ends at ' ||
           coalesce(prev_e_next, 0)
    FROM chain WHERE events_from IS DISTINCT FROM coalesce(prev_e_next, 0)
    UNION ALL
    SELECT batch, 'rejected_events', 'positions not contiguous', rejected_from, rejected_count,
           'rejected events of batch ' || batch || ' start at position ' || rejected_from ||
           ', the batch before ends at ' || coalesce(prev_r_next, 0)
    FROM chain WHERE rejected_from IS DISTINCT FROM coalesce(prev_r_next, 0)
),
data AS ({_data_checks("events")} UNION ALL {_data_checks("rejected_events")}),
data_breaks AS (
    SELECT batch, tbl,
           CASE WHEN found_rows <> recorded_rows THEN 'rows missing or added'
                WHEN found <> recorded THEN 'rows changed'
                ELSE 'fingerprints edited' END AS problem,
           first_pos, recorded_rows AS rows, recorded_fp, found_fp, found_rows, recorded, found
    FROM data WHERE found_rows <> recorded_rows OR found <> recorded OR found_fp <> recorded_fp
),
first_data AS (SELECT * FROM data_breaks ORDER BY batch, tbl LIMIT 1),
-- where the first broken batch first differs: recorded fingerprint i against the row now at i
expected AS (
    SELECT d.batch, d.tbl, g.i, lower(substr(hex(d.recorded_fp), {FINGERPRINT_HEX} * g.i + 1, {FINGERPRINT_HEX})) AS fp
    FROM first_data d, range(octet_length(d.recorded_fp) // {FINGERPRINT_HEX // 2}) g(i)
),
actual AS (
    SELECT p.batch, 'events' AS tbl, p.i, p.pos, p.key, left(p.h, {FINGERPRINT_HEX}) AS fp
    FROM placed_events p SEMI JOIN first_data d ON d.batch = p.batch AND d.tbl = 'events'
    UNION ALL
    SELECT p.batch, 'rejected_events', p.i, p.pos, p.key, left(p.h, {FINGERPRINT_HEX})
    FROM placed_rejected p SEMI JOIN first_data d ON d.batch = p.batch AND d.tbl = 'rejected_events'
),
first_diff AS (
    SELECT coalesce(e.batch, a.batch) AS batch, coalesce(e.tbl, a.tbl) AS tbl, coalesce(e.i, a.i) AS i,
           a.pos, a.key, e.fp AS expected_fp, a.fp AS actual_fp
    FROM expected e FULL JOIN actual a ON a.batch = e.batch AND a.tbl = e.tbl AND a.i = e.i
    WHERE e.fp IS DISTINCT FROM a.fp
    ORDER BY coalesce(e.i, a.i) LIMIT 1
),
-- the first fingerprint recorded after the batch (to see rows that moved up across its end)
next_first AS (
    SELECT d.batch, d.tbl, octet_length(d.recorded_fp) // {FINGERPRINT_HEX // 2} AS i,
           lower(substr(hex(arg_min(CASE WHEN d.tbl = 'events' THEN c.events_fingerprints
                                         ELSE c.rejected_fingerprints END, c.batch)), 1, {FINGERPRINT_HEX})) AS fp
    FROM first_data d JOIN chain c ON c.batch > d.batch
         AND (CASE WHEN d.tbl = 'events' THEN c.events_count ELSE c.rejected_count END) > 0
    GROUP BY ALL
),
expected_next AS (SELECT batch, tbl, i, fp FROM expected UNION ALL SELECT batch, tbl, i, fp FROM next_first),
-- what happened there: the rows after it moved up (one removed), down (one inserted), or it changed
diff AS (
    SELECT f.*,
           CASE WHEN f.actual_fp IS NOT NULL AND f.actual_fp = en.fp THEN 'removed'
                WHEN f.expected_fp IS NULL THEN 'added'
                WHEN f.actual_fp IS NULL THEN 'removed'
                WHEN f.expected_fp = an.fp THEN 'added'
                ELSE 'changed' END AS what
    FROM first_diff f
    LEFT JOIN expected_next en ON en.batch = f.batch AND en.tbl = f.tbl AND en.i = f.i + 1
    LEFT JOIN actual an ON an.batch = f.batch AND an.tbl = f.tbl AND an.i = f.i + 1
),
data_report AS (
    SELECT b.batch, b.tbl,
           CASE WHEN b.found_rows <> b.rows OR f.what IN ('removed', 'added') THEN 'rows missing or added'
                WHEN f.what = 'changed' THEN 'rows changed' ELSE b.problem END AS problem,
           b.first_pos, b.rows,
           b.rows || ' rows recorded, ' || b.found_rows || ' found at positions ' || b.first_pos || '-' ||
           (b.first_pos + greatest(b.rows, 1) - 1) ||
           CASE WHEN b.problem = 'fingerprints edited'
                THEN '; the rows match their digest, but the stored fingerprints do not'
                ELSE '; digest recorded ' || b.recorded || ', found ' || b.found END ||
           coalesce(CASE f.what
                WHEN 'removed' THEN '; first difference: the row recorded at position ' || (b.first_pos + f.i) ||
                    ' (fingerprint ' || f.expected_fp || ') is gone' ||
                    coalesce(': ' || f.key || ' is there now, moved up from the position after it', '')
                WHEN 'added' THEN '; first difference: position ' || (b.first_pos + f.i) || ' holds ' || f.key ||
                    ', a row the batch did not record (fingerprint ' || f.actual_fp || ')'
                ELSE '; first difference: position ' || (b.first_pos + f.i) || ' now holds ' || f.key ||
                    ' (fingerprint ' || f.actual_fp || ', recorded ' || f.expected_fp || '): the row was changed'
                END, '') AS detail,
           (b.first_pos + f.i) AS at_pos, f.key AS at_key
    FROM first_data b LEFT JOIN diff f ON f.batch = b.batch AND f.tbl = b.tbl
    UNION ALL
    SELECT batch, tbl, problem, first_pos, rows, NULL, NULL, NULL FROM data_breaks
    WHERE NOT EXISTS (SELECT 1 FROM first_data f WHERE f.batch = data_breaks.batch AND f.tbl = data_breaks.tbl)
),
uncovered AS (
    SELECT NULL::BIGINT AS batch, 'events' AS tbl, 'rows outside the chain' AS problem, min(pos) AS first_pos,
           count(*) AS rows, min(pos) AS at_pos, arg_min(key, pos) AS at_key,
           count(*) || ' events rows at positions ' || min(pos) || '-' || max(pos) ||
           ' are in no batch (first: ' || arg_min(key, pos) || '): added after the chain was written' AS detail
    FROM placed_events WHERE batch IS NULL HAVING count(*) > 0
    UNION ALL
    SELECT NULL, 'rejected_events', 'rows outside the chain', min(pos), count(*), min(pos), arg_min(key, pos),
           count(*) || ' rejected_events rows at positions ' || min(pos) || '-' || max(pos) ||
           ' are in no batch (first: stream_seq ' || arg_min(key, pos) || '): added after the chain was written'
    FROM placed_rejected WHERE batch IS NULL HAVING count(*) > 0
)
SELECT batch, tbl, problem, first_pos, rows, NULL::BIGINT AS at_pos, NULL::VARCHAR AS at_key, detail FROM links
UNION ALL
SELECT batch, tbl, problem, first_pos, rows, at_pos, at_key, detail FROM data_report
UNION ALL
SELECT batch, tbl, problem, first_pos, rows, at_pos, at_key, detail FROM uncovered
ORDER BY batch NULLS LAST, tbl NULLS FIRST, problem
"""


def summary_sql(db: str = "") -> str:
    """SQL: one row: batches, the rows they cover, the head, the notes (genesis)."""
    db = code_identifier(db) if db else ""
    return f"""
SELECT count(*) AS batches,
       coalesce(sum(events_count), 0) AS events,
       coalesce(sum(rejected_count), 0) AS rejected,
       arg_max(hash, batch) AS head,
       max(batch) AS last_batch,
       (SELECT count(*) FROM {db}events) AS events_in_log,
       (SELECT count(*) FROM {db}rejected_events) AS rejected_in_log,
       list(note ORDER BY batch) FILTER (WHERE note IS NOT NULL) AS notes
FROM {db}{TABLE}
"""


def first_break_sql(db: str = "") -> str:
    """SQL: the problems of the first broken link only (``breaks_sql``, first batch)."""
    return f"""
SELECT * FROM ({breaks_sql(db)}) b
QUALIFY batch IS NOT DISTINCT FROM first_value(batch) OVER (
    ORDER BY batch NULLS LAST, tbl NULLS FIRST, problem ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
ORDER BY batch NULLS LAST, tbl NULLS FIRST, problem
"""
