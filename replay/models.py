"""Every read model of a session, rebuilt in plain Python from its events in order.

This deliberately does not use the recorder's SQL views: it is a second,
independent implementation of the same rules, so that comparing the two
(:mod:`replay.compare`) is a real check of both. The rules, per model:

- **session**: first/last event time, event count, name/backend/dataset of
  ``session.started``, reason of the latest ``session.ended``, number of ``score.published``
  and of ``session.resumed``.
- **agents**: one per agent, from its first ``agent.started`` (a resumed agent starts
  again); stop time/reason of its latest ``agent.stopped``;
  ideas proposed; LLM calls, cost and input/output tokens.
- **ideas**: one per ``idea.proposed`` event.
- **experiments**: one per ``experiment.requested``; the status is that of the
  latest (by time, then id) ``experiment.started/finished/failed`` for its id,
  ``requested`` when none; attempts = number of ``experiment.started``.
- **scores**: one per ``score.published`` / ``score.withheld`` (``withheld`` says which).
- **forum posts**: one per ``forum.posted``; ``vote_score`` sums each agent's latest
  vote on the post and ``votes`` counts the agents who voted (as the forum service and
  the recorder's view do; ``votes_cast`` counts every ``forum.voted``); hidden when the
  latest ``forum.moderated`` says ``hide``.
- **cost**: per agent and per idea (``agent.llm_called``): calls, tokens (input,
  output, cache read, cache write), USD.
- **integrity flags**: one per ``integrity.flagged``.
- **leaderboard**: ideas by their best dev-split ``score`` PGR (nulls last), with
  test / held-out PGR, ablation accuracy and integrity checks.

Times are kept as integer microseconds since the epoch (``*_us``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from operator import attrgetter
from typing import Any

from orjson import loads

from .log import Row, gc_paused

# Event types whose payload no read model reads (they are only counted): a rebuild
# need not even load it (``replay.log.rows_from_connection(skip_payloads=...)``).
UNREAD = frozenset({"agent.tool_called", "experiment.progress", "baseline.computed", "recorder.health",
                    "recorder.rejected", "recorder.dead_lettered", "session.draining"})


def _opt_float(v: Any) -> float | None:
    return None if v is None else float(v)


class ReadModels:
    """Apply rows in order; read the models off the attributes (dicts and lists)."""

    __slots__ = ("session_id", "session", "agents", "ideas", "experiments", "_status", "scores", "posts",
                 "_votes", "_ballots", "_moderation", "cost_by_agent", "cost_by_idea", "flags", "artifacts",
                 "events", "counts", "last")

    def __init__(self, session_id: str | None = None) -> None:
        self.session_id = session_id
        self.session: dict[str, Any] = {"session_id": session_id, "first_event_us": None, "last_event_us": None,
                                        "events": 0, "name": None, "backend": None, "dataset": None,
                                        "end_reason": None, "scores": 0, "config": None}
        self.agents: dict[str, dict[str, Any]] = {}
        self.ideas: dict[str, dict[str, Any]] = {}  # event id -> idea
        self.experiments: dict[str, dict[str, Any]] = {}  # event id -> experiment
        self._status: dict[str, dict[str, Any]] = {}  # experiment id -> latest status row + attempts
        self.scores: dict[str, dict[str, Any]] = {}  # event id -> score
        self.posts: dict[str, dict[str, Any]] = {}  # event id -> post
        self._votes: dict[str, list[int]] = {}  # post id -> [sum, count]
        self._ballots: dict[str, dict[str, tuple[int, str, int]]] = {}  # post -> agent -> (time, id, value)
        self._moderation: dict[str, tuple[int, str, str]] = {}  # post id -> (time, id, action)
        self.cost_by_agent: dict[str, dict[str, Any]] = {}
        self.cost_by_idea: dict[str, dict[str, Any]] = {}
        self.flags: dict[str, dict[str, Any]] = {}
        self.artifacts: dict[str, dict[str, Any]] = {}  # sha -> artifact.stored payload (first)
        self.events = 0
        self.counts: dict[str, int] = {}
        self.last: Row | None = None

    # -- applying --------------------------------------------------------------

    def apply_all(self, rows: Iterable[Row]) -> ReadModels:
        """``apply`` for each row (the same rules, with the per-row bookkeeping done
        in bulk: a million rows must rebuild within seconds)."""
        with gc_paused():
            rows = rows if isinstance(rows, list | tuple) else list(rows)
            if not rows:
                return self
            s = self.session
            lo, hi = min(map(_time_us, rows)), max(map(_time_us, rows))
            s["first_event_us"] = lo if s["first_event_us"] is None else min(lo, s["first_event_us"])
            s["last_event_us"] = hi if s["last_event_us"] is None else max(hi, s["last_event_us"])
            counts = self.counts
            for t, n in Counter(map(_type, rows)).items():
                counts[t] = counts.get(t, 0) + n
            self.events += len(rows)
            self.last = rows[-1]
            get = _ALL_HANDLERS.get
            for row in rows:
                handler = get(row.type)
                if handler is not None:
                    handler(self, row, loads(row.payload))
        return self

    def apply(self, row: Row) -> None:
        self.apply_all((row,))

    def _artifact(self, row: Row, p: dict[str, Any]) -> None:
        self.artifacts.setdefault(p["sha256"], p)

    def _session_started(self, row: Row, p: dict[str, Any]) -> None:
        s = self.session
        s["name"] = p["name"] if s["name"] is None else max(s["name"], p["name"])
        s["backend"], s["dataset"], s["config"] = p["backend"], p["dataset"], p.get("config") or {}
        s["started"] = p

    def _session_ended(self, row: Row, p: dict[str, Any]) -> None:
        self.session["end_reason"] = p["reason"]  # the latest (rows come in time order): a resumed session ends again

    def _agent_started(self, row: Row, p: dict[str, Any]) -> None:
        self.agents.setdefault(p["agent_id"], {
            "session_id": row.session_id, "agent_id": p["agent_id"], "direction": p["direction"],
            "backend": p["backend"], "model": p.get("model"), "started_at_us": row.time_us,
            "stopped_at_us": None, "stop_reason": None,
        })

    def _agent_stopped(self, row: Row, p: dict[str, Any]) -> None:
        a = self.agents.get(p["agent_id"])
        if a is not None:
            a["stopped_at_us"], a["stop_reason"] = row.time_us, p["reason"]

    def _llm_called(self, row: Row, p: dict[str, Any]) -> None:
        _add_cost(self.cost_by_agent, p["agent_id"], p)
        _add_cost(self.cost_by_idea, p.get("idea_id"), p)

    def _idea(self, row: Row, p: dict[str, Any]) -> None:
        self.ideas[row.id] = {
            "idea_id": p["idea_id"], "session_id": row.session_id, "event_id": row.id, "time_us": row.time_us,
            "agent_id": p["agent_id"], "title": p["title"], "hypothesis": p["hypothesis"], "why": p.get("why", ""),
            "parent_ideas": list(p.get("parent_ideas", [])), "cites_posts": list(p.get("cites_posts", [])),
            "method_artifact": p.get("method_artifact"), "builtin_method": p.get("builtin_method"),
            "params": p.get("params", {}),
        }

    def _requested(self, row: Row, p: dict[str, Any]) -> None:
        self.experiments[row.id] = {
            "experiment_id": p["experiment_id"], "session_id": row.session_id, "event_id": row.id,
            "requested_at_us": row.time_us, "idea_id": p.get("idea_id"), "agent_id": p.get("agent_id"),
            "purpose": p.get("purpose", "score"), "split": p.get("split", "dev"), "dataset": p["dataset"],
            "seeds": list(p["seeds"]), "method_artifact": p.get("method_artifact"),
            "builtin_method": p.get("builtin_method"), "shuffle_weak_labels": bool(p.get("shuffle_weak_labels")),
        }

    def _exp_status(self, row: Row, p: dict[str, Any]) -> None:
        st = self._status.get(p["experiment_id"])
        if st is None:
            st = self._status[p["experiment_id"]] = {"attempts": 0, "key": None}
        if row.type == "experiment.started":
            st["attempts"] += 1
        key = (row.time_us, row.id)
        if st["key"] is None or key > st["key"]:
            st.update(key=key, type=row.type, payload=p)

    def _score(self, row: Row, p: dict[str, Any]) -> None:
        if row.type == "score.published":
            self.session["scores"] += 1
        self.scores[row.id] = {
            "experiment_id": p["experiment_id"], "session_id": row.session_id, "event_id": row.id,
            "time_us": row.time_us, "idea_id": p.get("idea_id"), "agent_id": p.get("agent_id"),
            "purpose": p.get("purpose") or "score", "dataset": p["dataset"], "split": p["split"],
            "n_seeds": p["n_seeds"], "accuracy": float(p["accuracy"]),
            "accuracy_stderr": float(p["accuracy_stderr"]), "weak_accuracy": float(p["weak_accuracy"]),
            "ceiling_accuracy": float(p["ceiling_accuracy"]), "pgr": _opt_float(p.get("pgr")),
            "pgr_stderr": _opt_float(p.get("pgr_stderr")), "method_artifact": p.get("method_artifact"),
            "builtin_method": p.get("builtin_method"), "withheld": row.type == "score.withheld",
            "causation_id": row.causation_id,
        }

    def _posted(self, row: Row, p: dict[str, Any]) -> None:
        self.posts[row.id] = {
            "post_id": p["post_id"], "session_id": row.session_id, "event_id": row.id, "time_us": row.time_us,
            "agent_id": p["agent_id"], "title": p["title"], "body": p.get("body", ""), "reply_to": p.get("reply_to"),
            "idea_ids": list(p.get("idea_ids", [])), "experiment_ids": list(p.get("experiment_ids", [])),
            "tags": list(p.get("tags", [])),
        }

    def _voted(self, row: Row, p: dict[str, Any]) -> None:
        v = self._votes.get(p["post_id"])
        if v is None:
            v = self._votes[p["post_id"]] = [0, 0]
        v[0] += p["value"]
        v[1] += 1
        ballots = self._ballots.setdefault(p["post_id"], {})
        prev = ballots.get(p["agent_id"])
        if prev is None or (prev[0], prev[1]) < (row.time_us, row.id):
            ballots[p["agent_id"]] = (row.time_us, row.id, p["value"])

    def _moderated(self, row: Row, p: dict[str, Any]) -> None:
        prev = self._moderation.get(p["post_id"])
        if prev is None or (prev[0], prev[1]) < (row.time_us, row.id):
            self._moderation[p["post_id"]] = (row.time_us, row.id, p["action"])

    def _flagged(self, row: Row, p: dict[str, Any]) -> None:
        self.flags[row.id] = {
            "event_id": row.id, "session_id": row.session_id, "time_us": row.time_us, "check": p["check"],
            "severity": p.get("severity", "warning"), "detail": p["detail"], "idea_id": p.get("idea_id"),
            "experiment_id": p.get("experiment_id"), "agent_id": p.get("agent_id"),
        }

    # -- reading ---------------------------------------------------------------

    def session_row(self) -> dict[str, Any]:
        s = {k: v for k, v in self.session.items() if k not in ("config", "started")}
        s["events"] = self.events
        s["resumed"] = self.counts.get("session.resumed", 0)
        return s

    def agent_rows(self) -> list[dict[str, Any]]:
        ideas: dict[str, int] = {}
        for i in self.ideas.values():
            ideas[i["agent_id"]] = ideas.get(i["agent_id"], 0) + 1
        out = []
        for a in self.agents.values():
            c = self.cost_by_agent.get(a["agent_id"], {})
            out.append({**a, "ideas": ideas.get(a["agent_id"], 0), "llm_calls": c.get("calls", 0),
                        "cost_usd": c.get("cost_usd", 0.0), "input_tokens": c.get("input_tokens", 0),
                        "output_tokens": c.get("output_tokens", 0)})
        return out

    def experiment_rows(self) -> list[dict[str, Any]]:
        out = []
        status = self._status.get
        for e in self.experiments.values():
            st = status(e["experiment_id"])
            key = st["key"] if st else None
            p = st["payload"] if st and key else {}
            out.append({
                **e,
                "status": st["type"].removeprefix("experiment.") if st and key else "requested",
                "status_at_us": key[0] if key else None,
                "trainer_id": p.get("trainer_id"), "runtime_s": _opt_float(p.get("runtime_s")),
                "peak_rss_mb": _opt_float(p.get("peak_rss_mb")), "predictions_artifact": p.get("predictions_artifact"),
                "error_class": p.get("error_class"), "error_message": p.get("message"),
                "attempts": st["attempts"] if st else 0,
            })
        return out

    def post_rows(self) -> list[dict[str, Any]]:
        out = []
        for post in self.posts.values():
            pid = post["post_id"]
            v = self._votes.get(pid, (0, 0))
            ballots = self._ballots.get(pid, {})
            mod = self._moderation.get(pid)
            out.append({**post, "vote_score": sum(b[2] for b in ballots.values()), "votes": len(ballots),
                        "votes_cast": v[1],
                        "hidden": mod is not None and mod[2] == "hide"})
        return out

    def leaderboard(self) -> list[dict[str, Any]]:
        """Ideas by best dev PGR (what the scorer answers agents, plus the withheld columns)."""
        by_idea: dict[str, dict[str, Any]] = {}
        for s in self.scores.values():
            iid = s["idea_id"]
            if iid is None:
                continue
            e = by_idea.setdefault(iid, {"idea_id": iid, "agent_id": s["agent_id"], "dev_pgr": None,
                                         "dev_pgr_stderr": None, "dev_accuracy": None, "test_pgr": None,
                                         "heldout_pgr": None, "shuffled_accuracy": None, "dev_scored": False})
            if s["purpose"] == "score" and s["split"] == "dev":
                if not e["dev_scored"] or (s["pgr"] is not None and (e["dev_pgr"] is None or s["pgr"] > e["dev_pgr"])):
                    e.update(dev_pgr=s["pgr"], dev_pgr_stderr=s["pgr_stderr"], dev_accuracy=s["accuracy"],
                             dev_scored=True)
            elif s["purpose"] == "score" and s["split"] == "test":
                e["test_pgr"] = s["pgr"] if e["test_pgr"] is None else max(e["test_pgr"], s["pgr"] or e["test_pgr"])
            elif s["purpose"] == "score" and s["split"] == "heldout":
                e["heldout_pgr"] = s["pgr"] if e["heldout_pgr"] is None else max(e["heldout_pgr"],
                                                                                 s["pgr"] or e["heldout_pgr"])
            elif s["purpose"] == "ablation":
                e["shuffled_accuracy"] = s["accuracy"]
        checks: dict[str, set[str]] = {}
        for f in self.flags.values():
            if f["idea_id"]:
                checks.setdefault(f["idea_id"], set()).add(f["check"])
        ideas = {i["idea_id"]: i for i in self.ideas.values()}
        rows = []
        for e in by_idea.values():
            if not e.pop("dev_scored"):
                continue
            idea = ideas.get(e["idea_id"], {})
            rows.append({**e, "title": idea.get("title"),
                         "method": idea.get("builtin_method") or f"code:{(idea.get('method_artifact') or '')[:12]}",
                         "flags": sorted(checks.get(e["idea_id"], ()))})
        rows.sort(key=lambda r: (r["dev_pgr"] is None, -(r["dev_pgr"] or 0.0), r["idea_id"]))
        return rows

    def summary(self) -> dict[str, Any]:
        exps = self.experiment_rows()
        return {
            "session": self.session_row(),
            "counts": dict(sorted(self.counts.items())),
            "ideas": len(self.ideas),
            "experiments": len(exps),
            "experiments_by_status": _count(e["status"] for e in exps),
            "scores": len(self.scores),
            "forum_posts": len(self.posts),
            "integrity_flags": len(self.flags),
            "cost_usd": sum(c["cost_usd"] for c in self.cost_by_agent.values()),
        }

    def as_dict(self) -> dict[str, Any]:
        """Everything, JSON-ready (times stay integer microseconds)."""
        with gc_paused():
            return self._as_dict()

    def _as_dict(self) -> dict[str, Any]:
        return {
            "session": self.session_row(),
            "agents": self.agent_rows(),
            "ideas": list(self.ideas.values()),
            "experiments": self.experiment_rows(),
            "scores": list(self.scores.values()),
            "forum_posts": self.post_rows(),
            "cost_by_agent": self.cost_by_agent,
            "cost_by_idea": {k or "": v for k, v in self.cost_by_idea.items()},
            "integrity_flags": list(self.flags.values()),
            "leaderboard": self.leaderboard(),
        }


def _add_cost(table: dict[Any, dict[str, Any]], key: str | None, p: dict[str, Any]) -> None:
    c = table.get(key)
    if c is None:
        table[key] = {"calls": 1, "input_tokens": p["input_tokens"], "output_tokens": p["output_tokens"],
                      "cache_read_tokens": p.get("cache_read_tokens", 0),
                      "cache_write_tokens": p.get("cache_write_tokens", 0), "cost_usd": 0.0 + p["cost_usd"]}
        return
    c["calls"] += 1
    c["input_tokens"] += p["input_tokens"]
    c["output_tokens"] += p["output_tokens"]
    c["cache_read_tokens"] += p.get("cache_read_tokens", 0)
    c["cache_write_tokens"] += p.get("cache_write_tokens", 0)
    c["cost_usd"] += p["cost_usd"]


def _count(items: Iterable[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


_HANDLERS = {
    "session.started": ReadModels._session_started,
    "session.ended": ReadModels._session_ended,
    "agent.started": ReadModels._agent_started,
    "agent.stopped": ReadModels._agent_stopped,
    "agent.llm_called": ReadModels._llm_called,
    "idea.proposed": ReadModels._idea,
    "experiment.requested": ReadModels._requested,
    "experiment.started": ReadModels._exp_status,
    "experiment.finished": ReadModels._exp_status,
    "experiment.failed": ReadModels._exp_status,
    "score.published": ReadModels._score,
    "score.withheld": ReadModels._score,
    "forum.posted": ReadModels._posted,
    "forum.voted": ReadModels._voted,
    "forum.moderated": ReadModels._moderated,
    "integrity.flagged": ReadModels._flagged,
}


_ALL_HANDLERS = {**_HANDLERS, "artifact.stored": ReadModels._artifact}
_time_us = attrgetter("time_us")
_type = attrgetter("type")


def rebuild(rows: Iterable[Row], session_id: str | None = None) -> ReadModels:
    return ReadModels(session_id).apply_all(rows)
