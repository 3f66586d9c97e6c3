"""The study's figure, as data: best-so-far dev PGR per agent against cumulative
research hours.

- **Research hours** are the agents' active time summed, as in the study: each agent
  is active from each ``agent.started`` to its next ``agent.stopped`` (a run that was
  killed ends at the agent's last event); at a moment ``t`` the session has used the
  sum, over agents, of their active time before ``t``.
- Every dev score an agent received (``score.published``, purpose ``score``) is a dot at
  the research hours of the moment it was published; each agent's line is its best so
  far.
- Promoted ideas also carry their test and held-out PGR (``score.withheld``), drawn at
  the x of their dev score; ``naive_soft`` (the scorer's reference run on dev) is a
  horizontal line.

Pure over :class:`core.audit.AuditQueries` (the log file read-only, or the recorder):
``aar plot`` draws it with matplotlib, the dashboard with its chart library.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from core.audit import AuditQueries


@dataclass(frozen=True, slots=True)
class Dot:
    agent_id: str
    idea_id: str
    hours: float
    pgr: float
    method: str


@dataclass(frozen=True, slots=True)
class Promoted:
    agent_id: str
    idea_id: str
    hours: float  # where its dev score is
    dev_pgr: float
    test_pgr: float | None
    heldout_pgr: float | None
    heldout: str | None  # the held-out dataset


@dataclass
class Figure:
    session_id: str
    name: str
    dots: list[Dot] = field(default_factory=list)
    best: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # agent -> steps (hours, best PGR)
    promoted: list[Promoted] = field(default_factory=list)
    naive_pgr: float | None = None
    hours: float = 0.0  # the session's research hours in all
    agents: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {
            "session_id": self.session_id, "name": self.name, "hours": self.hours, "naive_pgr": self.naive_pgr,
            "agents": self.agents,
            "dots": [{"agent_id": d.agent_id, "idea_id": d.idea_id, "hours": d.hours, "pgr": d.pgr, "method": d.method}
                     for d in self.dots],
            "best": {a: [list(p) for p in steps] for a, steps in self.best.items()},
            "promoted": [{"agent_id": p.agent_id, "idea_id": p.idea_id, "hours": p.hours, "dev_pgr": p.dev_pgr,
                          "test_pgr": p.test_pgr, "heldout_pgr": p.heldout_pgr, "heldout": p.heldout}
                         for p in self.promoted],
        }


class Clock:
    """Research hours at any moment, from the agents' active intervals (microseconds)."""

    def __init__(self, intervals: list[tuple[int, int]]) -> None:
        self.intervals = intervals

    def hours(self, t: int) -> float:
        return sum(min(e, t) - s for s, e in self.intervals if s < t) / 3.6e9


def intervals(rows: list[tuple[str, str, int]], seen: dict[str, list[int]]) -> list[tuple[int, int]]:
    """Active intervals from ``(agent, type, time_us)`` rows of ``agent.started`` /
    ``agent.stopped`` in time order. An agent started again without a stop (its run was
    killed) was active until its last event before the restart; one still started at the
    end, until its last event (``seen``: each agent's event times, sorted; the last of each run is enough)."""
    import bisect

    def last_before(agent: str, t: int, start: int) -> int:
        times = seen.get(agent, [])
        i = bisect.bisect_left(times, t)
        return max(start, times[i - 1]) if i else start

    open_at: dict[str, int] = {}
    out: list[tuple[int, int]] = []
    for agent, kind, t in rows:
        if kind == "agent.started":
            if agent in open_at:
                out.append((open_at[agent], last_before(agent, t, open_at[agent])))
            open_at[agent] = t
        elif agent in open_at:
            out.append((open_at.pop(agent), t))
    for agent, start in open_at.items():
        out.append((start, last_before(agent, 1 << 62, start)))
    return out


def session_clock(audit: AuditQueries, session_id: str) -> tuple[Clock, list[str], float]:
    """The research-hours clock of ``session_id``, its agents, and its research hours in all."""
    marks = [(str(a), str(k), int(t)) for a, k, t in audit.query(
        "SELECT agent_id, type, epoch_us(time) FROM agent_runs WHERE session_id = ? ORDER BY time, event_id",
        [session_id]).rows]
    # Of an agent's events, only the last of each run counts (a killed run ends there): one
    # row per run, pre-aggregated in SQL from the typed views (an ASOF join puts each event
    # in the run it falls in) rather than every event brought back.
    seen: dict[str, list[int]] = {}
    for a, t in audit.query(
            "WITH ev AS (SELECT agent_id AS agent, epoch_us(time) AS t FROM llm_calls WHERE session_id = $1 "
            "UNION ALL SELECT agent_id, epoch_us(time) FROM tool_calls WHERE session_id = $1 "
            "UNION ALL SELECT agent_id, epoch_us(time) FROM agent_runs WHERE session_id = $1), "
            "runs AS (SELECT agent_id AS agent, epoch_us(time) AS t FROM agent_runs "
            "WHERE session_id = $1 AND type = 'agent.started') "
            "SELECT ev.agent, max(ev.t) AS last FROM ev ASOF JOIN runs ON ev.agent = runs.agent AND ev.t >= runs.t "
            "GROUP BY ev.agent, runs.t ORDER BY 1, 2", [session_id]).rows:
        seen.setdefault(str(a), []).append(int(t))
    clock = Clock(intervals(marks, seen))
    hours = clock.hours(max(times[-1] for times in seen.values()) + 1) if seen else 0.0
    return clock, sorted({a for a, _, _ in marks}), hours


def figure(audit: AuditQueries, session_id: str) -> Figure:
    """The figure of ``session_id`` from its events (LookupError: no such session)."""
    named = audit.query("SELECT name FROM sessions WHERE session_id = ?", [session_id]).rows
    if not named:
        raise LookupError(f"no session {session_id!r} in the log (see aar sessions)")
    fig = Figure(session_id, str(named[0][0] or session_id))
    clock, fig.agents, fig.hours = session_clock(audit, session_id)
    # One row per idea and kind, aggregated in SQL (a long session has tens of thousands of
    # scores): its first dev score with a PGR (the one score the scorer publishes; it
    # withholds the rest), its latest test and held-out scores, and the latest naive_soft.
    rows = audit.query("""
        WITH s AS (SELECT idea_id, agent_id, purpose, split, dataset, pgr, epoch_us(time) AS t, event_id,
                          coalesce(builtin_method, 'code') AS method FROM scores WHERE session_id = ?)
        SELECT 'dev', idea_id, arg_min(agent_id, (t, event_id)), arg_min(pgr, (t, event_id)), min(t),
               arg_min(method, (t, event_id)), NULL
        FROM s WHERE purpose = 'score' AND split = 'dev' AND pgr IS NOT NULL AND idea_id IS NOT NULL GROUP BY idea_id
        UNION ALL
        SELECT split, idea_id, NULL, arg_max_null(pgr, (t, event_id)), NULL, NULL, arg_max_null(dataset, (t, event_id))
        FROM s WHERE purpose = 'score' AND split IN ('test', 'heldout') AND idea_id IS NOT NULL GROUP BY split, idea_id
        UNION ALL
        SELECT 'naive', NULL, NULL, arg_max_null(pgr, (t, event_id)), NULL, NULL, NULL
        FROM s WHERE purpose = 'baseline' AND split = 'dev' HAVING count(*) > 0""", [session_id]).rows
    dev: dict[str, Dot] = {}
    test: dict[str, float | None] = {}
    heldout: dict[str, tuple[str, float | None]] = {}
    for kind, idea, agent, pgr, t, method, dataset in rows:
        value = None if pgr is None else float(pgr)
        if kind == "naive":
            fig.naive_pgr = value
        elif kind == "dev" and value is not None:
            dev[str(idea)] = Dot(str(agent), str(idea), clock.hours(int(t)), value, str(method))
        elif kind == "test":
            test[str(idea)] = value
        elif kind == "heldout":
            heldout[str(idea)] = (str(dataset), value)
    fig.dots = sorted(dev.values(), key=lambda d: (d.hours, d.idea_id))
    for dot in fig.dots:
        steps = fig.best.setdefault(dot.agent_id, [])
        if not steps or dot.pgr > steps[-1][1]:
            steps.append((dot.hours, dot.pgr))
    for steps in fig.best.values():  # each line runs on to the session's end
        steps.append((max(fig.hours, steps[-1][0]), steps[-1][1]))
    for idea in sorted(set(test) | set(heldout)):
        if idea in dev:
            d = dev[idea]
            ds, h = heldout.get(idea, (None, None))
            fig.promoted.append(Promoted(d.agent_id, idea, d.hours, d.pgr, test.get(idea), h, ds))
    return fig
