"""What each dashboard page shows: read-only SQL over the log's views (the typed
projections make them fast), through any :class:`core.audit.AuditQueries` (the running
recorder, or the log file opened read-only). Every value from the log is bound as a
parameter; long lists are paged (``limit``/``offset``, or a time cursor for events).

The functions return plain JSON-able dicts; the pages render them (the browser escapes
every text: titles, hypotheses and posts are written by agents).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.audit import AuditQueries

from .figure import figure, session_clock

MAX_PAGE = 500  # rows of one list page
MAX_CODE_BYTES = 256 * 1024  # of one method's code shown
LINEAGE_IDEAS = 1500  # ideas drawn in the lineage graph: the latest (a graph of more is unreadable and slow)


def _value(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _rows(audit: AuditQueries, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    result = audit.query(sql, params)
    return [{c: _value(v) for c, v in zip(result.columns, row, strict=True)} for row in result.rows]


def _json(v: Any) -> Any:
    if isinstance(v, str):
        try:
            return json.loads(v)
        except ValueError:
            return v
    return v


def page(limit: int, offset: int) -> tuple[int, int]:
    return max(1, min(int(limit), MAX_PAGE)), max(0, int(offset))


@dataclass
class Reader:
    """The dashboard's data: ``audit`` for the log, ``code`` for a method's stored code
    (its SHA-256 -> bytes; KeyError when it is not there)."""

    audit: AuditQueries
    code: Callable[[str], bytes]

    # -- sessions -------------------------------------------------------------------

    def sessions(self, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        limit, offset = page(limit, offset)
        rows = _rows(self.audit, """
            SELECT s.session_id, s.name, s.backend, s.dataset, s.first_event, s.last_event, s.events, s.scores,
                   s.end_reason, s.resumed,
                   (SELECT count(*) FROM agents a WHERE a.session_id = s.session_id) AS agents
            FROM sessions s ORDER BY s.last_event DESC, s.session_id LIMIT ? OFFSET ?""", [limit, offset])
        total = self.audit.query("SELECT count(*) FROM sessions").rows[0][0]
        return {"sessions": rows, "total": total, "limit": limit, "offset": offset}

    def _known(self, session_id: str) -> dict[str, Any]:
        rows = _rows(self.audit, "SELECT * FROM sessions WHERE session_id = ?", [session_id])
        if not rows:
            raise LookupError(f"no session {session_id!r} in the log")
        return rows[0]

    def overview(self, session_id: str) -> dict[str, Any]:
        session = self._known(session_id)
        started = self.audit.query(
            "SELECT payload FROM events WHERE session_id = ? AND type = 'session.started' ORDER BY time, id LIMIT 1",
            [session_id]).rows
        config = _json(started[0][0]) if started else {}
        agents = _rows(self.audit, """
            SELECT agent_id, direction, backend, model, started_at, stopped_at, stop_reason, ideas, llm_calls,
                   cost_usd, input_tokens, output_tokens
            FROM agents WHERE session_id = ? ORDER BY agent_id""", [session_id])
        totals = _rows(self.audit, """
            WITH x AS (  -- the experiments view once (it is the costly one), every figure of it
              SELECT count(*) AS experiments,
                     count(*) FILTER (WHERE purpose = 'score' AND split = 'dev') AS dev_experiments,
                     count(*) FILTER (WHERE status = 'failed') AS failed,
                     coalesce(sum(runtime_s), 0) AS trainer_s
              FROM experiments WHERE session_id = $1)
            SELECT
              (SELECT count(*) FROM ideas WHERE session_id = $1) AS ideas,
              x.experiments, x.dev_experiments, x.failed,
              (SELECT count(*) FROM forum_posts WHERE session_id = $1) AS posts,
              (SELECT count(*) FROM integrity_flags WHERE session_id = $1) AS integrity_flags,
              (SELECT coalesce(sum(cost_usd), 0) FROM llm_calls WHERE session_id = $1) AS cost_usd,
              (SELECT count(*) FROM events WHERE session_id = $1 AND type = 'idea.duplicate') AS duplicates,
              x.trainer_s
            FROM x""", [session_id])[0]
        _, _, hours = session_clock(self.audit, session_id)
        elapsed = None
        if session.get("first_event") and session.get("last_event"):
            elapsed = (datetime.fromisoformat(session["last_event"])
                       - datetime.fromisoformat(session["first_event"])).total_seconds()
        return {"session": session, "config": config, "agents": agents, "totals": totals,
                "elapsed_s": elapsed, "research_hours": hours}

    # -- the figure -----------------------------------------------------------------

    def figure(self, session_id: str) -> dict[str, Any]:
        return figure(self.audit, session_id).as_json()

    # -- leaderboard ----------------------------------------------------------------

    def leaderboard(self, session_id: str, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        self._known(session_id)
        limit, offset = page(limit, offset)
        rows = _rows(self.audit, """
            WITH dev AS (
                SELECT idea_id, agent_id, arg_min(pgr, time) AS pgr, arg_min(pgr_stderr, time) AS se,
                       arg_min(accuracy, time) AS accuracy, min(time) AS time, arg_min(event_id, time) AS score_event
                FROM scores WHERE session_id = $1 AND purpose = 'score' AND split = 'dev' AND idea_id IS NOT NULL
                GROUP BY ALL
            ), other AS (
                SELECT idea_id,
                       max(pgr) FILTER (WHERE purpose = 'score' AND split = 'test') AS test_pgr,
                       max(pgr_stderr) FILTER (WHERE purpose = 'score' AND split = 'test') AS test_se,
                       max(pgr) FILTER (WHERE purpose = 'score' AND split = 'heldout') AS heldout_pgr,
                       max(pgr_stderr) FILTER (WHERE purpose = 'score' AND split = 'heldout') AS heldout_se,
                       max(dataset) FILTER (WHERE purpose = 'score' AND split = 'heldout') AS heldout,
                       max(accuracy) FILTER (WHERE purpose = 'ablation') AS shuffled_acc
                FROM scores WHERE session_id = $1 GROUP BY idea_id
            ), flags AS (
                SELECT idea_id, string_agg(DISTINCT "check", ',') AS flags
                FROM integrity_flags WHERE session_id = $1 AND idea_id IS NOT NULL GROUP BY 1
            )
            SELECT row_number() OVER (ORDER BY dev.pgr DESC NULLS LAST, dev.idea_id) AS rank,
                   dev.idea_id, dev.agent_id, i.title,
                   coalesce(i.builtin_method, 'code') AS method, i.method_artifact,
                   dev.pgr, dev.se, dev.accuracy, other.test_pgr, other.test_se, other.heldout_pgr,
                   other.heldout_se, other.heldout, other.shuffled_acc, coalesce(flags.flags, '') AS flags,
                   dev.score_event
            FROM dev LEFT JOIN ideas i ON i.idea_id = dev.idea_id AND i.session_id = $1
            LEFT JOIN other ON other.idea_id = dev.idea_id
            LEFT JOIN flags ON flags.idea_id = dev.idea_id
            ORDER BY rank LIMIT $2 OFFSET $3""", [session_id, limit, offset])
        # The paired comparisons are in the dev scores' payloads only: read for this page's
        # rows by event id (the log's key), not parsed out of every score of the session.
        events = [r["score_event"] for r in rows]
        found = dict(self.audit.query(
            f"SELECT id, payload->>'comparisons' FROM events WHERE id IN ({', '.join('?' * len(events))})",
            events).rows) if events else {}
        for row in rows:
            comparisons = _json(found.get(row.pop("score_event"))) or []
            row["vs"] = {c.get("against"): {"pgr_diff": c.get("pgr_diff"), "pgr_diff_se": c.get("pgr_diff_se"),
                                            "tied": c.get("tied"), "idea_id": c.get("idea_id")}
                         for c in comparisons if isinstance(c, dict)}
        total = self.audit.query(
            "SELECT count(DISTINCT idea_id) FROM scores WHERE session_id = ? AND purpose = 'score' AND split = 'dev'",
            [session_id]).rows[0][0]
        return {"rows": rows, "total": total, "limit": limit, "offset": offset}

    # -- lineage --------------------------------------------------------------------

    def lineage(self, session_id: str, limit: int = LINEAGE_IDEAS) -> dict[str, Any]:
        """The session's latest ``limit`` ideas (nodes) with their parents and the posts they
        cite (edges); an idea's x is the research hours of its proposal, as in the figure."""
        self._known(session_id)
        clock, agents, _ = session_clock(self.audit, session_id)
        limit = max(1, min(int(limit), LINEAGE_IDEAS))
        ideas = _rows(self.audit, """
            WITH dev AS (
                SELECT idea_id, arg_min(pgr, time) AS pgr FROM scores
                WHERE session_id = $1 AND purpose = 'score' AND split = 'dev' AND idea_id IS NOT NULL GROUP BY 1)
            SELECT i.idea_id, i.agent_id, i.title, coalesce(i.builtin_method, 'code') AS method,
                   i.parent_ideas, i.cites_posts, epoch_us(i.time) AS t, dev.pgr
            FROM ideas i LEFT JOIN dev ON dev.idea_id = i.idea_id
            WHERE i.session_id = $1 ORDER BY i.time DESC, i.idea_id DESC LIMIT $2""", [session_id, limit])[::-1]
        total = self.audit.query("SELECT count(*) FROM ideas WHERE session_id = ?", [session_id]).rows[0][0]
        wanted = sorted({c for i in ideas for c in (i["cites_posts"] or [])})
        posts = {r["post_id"]: r for r in _rows(self.audit, """
            SELECT post_id, agent_id, title, epoch_us(time) AS t FROM forum_posts
            WHERE session_id = ? AND list_contains(?, post_id)""", [session_id, wanted])} if wanted else {}
        agent_of = {i["idea_id"]: i["agent_id"] for i in ideas}
        nodes, edges = [], []
        cited: set[str] = set()
        for i in ideas:
            nodes.append({"id": i["idea_id"], "kind": "idea", "agent_id": i["agent_id"], "title": i["title"],
                          "method": i["method"], "pgr": i["pgr"], "hours": clock.hours(int(i["t"]))})
            for parent in i["parent_ideas"] or []:
                if parent in agent_of:
                    edges.append({"from": parent, "to": i["idea_id"], "kind": "parent",
                                  "agent_id": i["agent_id"], "cross": agent_of[parent] != i["agent_id"]})
            for post in i["cites_posts"] or []:
                if post in posts:
                    cited.add(post)
                    edges.append({"from": post, "to": i["idea_id"], "kind": "cites", "agent_id": i["agent_id"],
                                  "cross": posts[post]["agent_id"] != i["agent_id"]})
        for post_id in sorted(cited):
            p = posts[post_id]
            nodes.append({"id": post_id, "kind": "post", "agent_id": p["agent_id"], "title": p["title"],
                          "method": None, "pgr": None, "hours": clock.hours(int(p["t"]))})
        return {"nodes": nodes, "edges": edges, "agents": agents or sorted({n["agent_id"] for n in nodes}),
                "ideas_total": total, "ideas_shown": len(ideas)}

    def idea(self, session_id: str, idea_id: str) -> dict[str, Any]:
        """One idea: its proposal, code, every score, its runs and the posts about it."""
        found = _rows(self.audit, """
            SELECT idea_id, agent_id, time, title, hypothesis, why, parent_ideas, cites_posts, method_artifact,
                   builtin_method, params::VARCHAR AS params
            FROM ideas WHERE session_id = ? AND idea_id = ? LIMIT 1""", [session_id, idea_id])
        if not found:
            raise LookupError(f"no idea {idea_id!r} in session {session_id!r}")
        idea = found[0]
        idea["params"] = _json(idea["params"])
        idea["scores"] = _rows(self.audit, """
            SELECT time, purpose, split, dataset, n_seeds, accuracy, accuracy_stderr, pgr, pgr_stderr
            FROM scores WHERE session_id = ? AND idea_id = ? ORDER BY time""", [session_id, idea_id])
        idea["runs"] = _rows(self.audit, """
            SELECT experiment_id, requested_at, purpose, split, dataset, status, trainer_id, runtime_s, attempts,
                   error_class, error_message
            FROM experiments WHERE session_id = ? AND idea_id = ? ORDER BY requested_at""", [session_id, idea_id])
        idea["posts"] = _rows(self.audit, """
            SELECT post_id, agent_id, time, title, vote_score FROM forum_posts
            WHERE session_id = ? AND list_contains(idea_ids, ?) ORDER BY time LIMIT 50""", [session_id, idea_id])
        idea["code"], idea["code_source"] = self._code(idea)
        return idea

    def _code(self, idea: dict[str, Any]) -> tuple[str | None, str]:
        if idea.get("method_artifact"):
            try:
                data = self.code(str(idea["method_artifact"]))
            except (KeyError, ValueError, OSError) as exc:
                return None, f"the stored code is not available here ({exc})"
            return data[:MAX_CODE_BYTES].decode("utf-8", "replace"), f"stored code {idea['method_artifact']}"
        if idea.get("builtin_method"):
            try:
                import inspect

                from trainer.methods import get_method

                return inspect.getsource(get_method(str(idea["builtin_method"])).fn), \
                    f"built-in method {idea['builtin_method']}"
            except Exception as exc:  # noqa: BLE001 - the page shows why there is no code
                return None, f"the built-in's source is not available ({exc})"
        return None, "no code"

    # -- forum ----------------------------------------------------------------------

    def forum(self, session_id: str, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        """Threads (top-level posts, newest first) with their replies and votes."""
        self._known(session_id)
        limit, offset = page(limit, offset)
        tops = _rows(self.audit, """
            SELECT post_id, agent_id, time, title, body, tags, idea_ids, vote_score, votes, hidden
            FROM forum_posts WHERE session_id = ? AND reply_to IS NULL
            ORDER BY time DESC, post_id LIMIT ? OFFSET ?""", [session_id, limit, offset])
        ids = [t["post_id"] for t in tops]
        replies = _rows(self.audit, """
            SELECT post_id, reply_to, agent_id, time, title, body, vote_score, votes, hidden
            FROM forum_posts WHERE session_id = ? AND list_contains(?, reply_to) ORDER BY time, post_id""",
            [session_id, ids]) if ids else []
        by_thread: dict[str, list[dict[str, Any]]] = {}
        for r in replies:
            by_thread.setdefault(r["reply_to"], []).append(r)
        for t in tops:
            t["replies"] = by_thread.get(t["post_id"], [])
        total = self.audit.query("SELECT count(*) FROM forum_posts WHERE session_id = ? AND reply_to IS NULL",
                                 [session_id]).rows[0][0]
        return {"threads": tops, "total": total, "limit": limit, "offset": offset}

    # -- experiments and trainers -----------------------------------------------------

    def experiments(self, session_id: str, limit: int = 100, offset: int = 0,
                    status: str | None = None) -> dict[str, Any]:
        self._known(session_id)
        limit, offset = page(limit, offset)
        counts = {r["status"]: r["n"] for r in _rows(self.audit, """
            SELECT status, count(*) AS n FROM experiments WHERE session_id = ? GROUP BY 1""", [session_id])}
        rows = _rows(self.audit, """
            SELECT experiment_id, idea_id, agent_id, purpose, split, dataset, status, requested_at, status_at,
                   trainer_id, runtime_s, peak_rss_mb, attempts, error_class, error_message,
                   coalesce(builtin_method, 'code') AS method
            FROM experiments WHERE session_id = ? AND (? IS NULL OR status = ?)
            ORDER BY requested_at DESC, experiment_id LIMIT ? OFFSET ?""",
            [session_id, status, status, limit, offset])
        trainers = _rows(self.audit, """
            SELECT trainer_id, count(*) AS runs, count(*) FILTER (WHERE status = 'finished') AS finished,
                   count(*) FILTER (WHERE status = 'failed') AS failed,
                   count(*) FILTER (WHERE status = 'started') AS running,
                   sum(runtime_s) AS runtime_s, max(peak_rss_mb) AS peak_rss_mb
            FROM experiments WHERE session_id = ? AND trainer_id IS NOT NULL GROUP BY 1 ORDER BY 1""", [session_id])
        return {"counts": counts, "rows": rows, "trainers": trainers, "total": sum(counts.values()),
                "limit": limit, "offset": offset}

    # -- cost -------------------------------------------------------------------------

    def costs(self, session_id: str, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        self._known(session_id)
        limit, offset = page(limit, offset)
        agents = _rows(self.audit, """
            SELECT agent_id, backend, model, llm_calls, input_tokens, output_tokens, cost_usd, ideas,
                   (SELECT count(*) FROM tool_calls t WHERE t.session_id = a.session_id AND t.agent_id = a.agent_id)
                     AS tool_calls,
                   (SELECT coalesce(sum(e.runtime_s), 0) FROM experiments e
                     WHERE e.session_id = a.session_id AND e.agent_id = a.agent_id) AS trainer_s
            FROM agents a WHERE session_id = ? ORDER BY agent_id""", [session_id])
        ideas = _rows(self.audit, """
            WITH llm AS (
                SELECT idea_id, count(*) AS llm_calls, sum(input_tokens) AS input_tokens,
                       sum(output_tokens) AS output_tokens, sum(cost_usd) AS cost_usd
                FROM llm_calls WHERE session_id = $1 AND idea_id IS NOT NULL GROUP BY 1
            ), runs AS (
                SELECT idea_id, count(*) AS experiments, sum(runtime_s) AS trainer_s
                FROM experiments WHERE session_id = $1 GROUP BY 1
            )
            SELECT i.idea_id, i.agent_id, i.title, coalesce(llm.llm_calls, 0) AS llm_calls,
                   coalesce(llm.input_tokens, 0) AS input_tokens, coalesce(llm.output_tokens, 0) AS output_tokens,
                   coalesce(llm.cost_usd, 0) AS cost_usd, coalesce(runs.experiments, 0) AS experiments,
                   coalesce(runs.trainer_s, 0) AS trainer_s
            FROM ideas i LEFT JOIN llm USING (idea_id) LEFT JOIN runs USING (idea_id)
            WHERE i.session_id = $1 ORDER BY cost_usd DESC, trainer_s DESC, i.idea_id LIMIT $2 OFFSET $3""",
            [session_id, limit, offset])
        return {"agents": agents, "ideas": ideas, "limit": limit, "offset": offset}

    # -- integrity ------------------------------------------------------------------

    def integrity(self, session_id: str, limit: int = 100, offset: int = 0) -> dict[str, Any]:
        self._known(session_id)
        limit, offset = page(limit, offset)
        rows = _rows(self.audit, """
            SELECT time, "check", severity, detail, idea_id, experiment_id, agent_id FROM integrity_flags
            WHERE session_id = ? ORDER BY time DESC LIMIT ? OFFSET ?""", [session_id, limit, offset])
        counts = _rows(self.audit, """
            SELECT "check", severity, count(*) AS n FROM integrity_flags WHERE session_id = ? GROUP BY ALL
            ORDER BY n DESC""", [session_id])
        return {"rows": rows, "counts": counts, "limit": limit, "offset": offset}

    # -- events -----------------------------------------------------------------------

    def events(self, session_id: str, *, limit: int = 200, before_us: int | None = None,
               type_prefix: str | None = None, agent: str | None = None) -> dict[str, Any]:
        """The newest events (before ``before_us``, microseconds since the epoch: the
        next page), optionally of one type (prefix) and of one agent (its source or
        the payload's ``agent_id``)."""
        self._known(session_id)
        limit = max(1, min(int(limit), MAX_PAGE))
        rows = _rows(self.audit, """
            SELECT id, type, source, time, epoch_us(time) AS t, left(payload::VARCHAR, 600) AS payload
            FROM events WHERE session_id = $1 AND ($2 IS NULL OR epoch_us(time) < $2)
              AND ($3 IS NULL OR starts_with(type, $3))
              AND ($4 IS NULL OR source = $4 OR payload->>'agent_id' = $4)
            ORDER BY time DESC, id DESC LIMIT $5""", [session_id, before_us, type_prefix or None, agent or None,
                                                      limit])
        types = [r[0] for r in self.audit.query(
            "SELECT DISTINCT type FROM events WHERE session_id = ? ORDER BY 1", [session_id]).rows]
        return {"events": rows, "types": types, "next_before_us": rows[-1]["t"] if len(rows) == limit else None}
