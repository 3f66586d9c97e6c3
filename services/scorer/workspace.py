"""Each agent's workspace budget, in CPU-seconds.

A run is charged what it used: its CPU-seconds, and at least its wall-clock seconds
(it holds one core of a trainer's workspace queue while it runs, sleeping or not). An
agent has one run at a time; the running one reserves what it was granted, so that
requests cannot overspend the budget. A run whose result never comes (a lost trainer)
is charged its grant after ``wall_s + QUEUE_GRACE_S`` and frees the agent. Refusals are
published at most ``REFUSALS_PER_MINUTE`` per agent (each request is in the log anyway):
an agent cannot make the scorer publish more than it does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from schemas.workspace import WorkspaceFinished, WorkspaceRefused, WorkspaceScheduled

QUEUE_GRACE_S = 600.0
REFUSALS_PER_MINUTE = 20


@dataclass(slots=True)
class Running:
    agent: str
    cpu_s: float
    deadline: float  # monotonic


@dataclass(slots=True)
class WorkspaceBudget:
    spent: dict[str, float] = field(default_factory=dict)  # agent -> seconds charged for finished runs
    running: dict[str, Running] = field(default_factory=dict)  # run id -> its grant
    seen: set[str] = field(default_factory=set)  # run ids scheduled or refused
    refusals: dict[str, list[float]] = field(default_factory=dict)  # agent -> times of recent refusals

    def known(self, run_id: str) -> bool:
        return run_id in self.seen

    def expire(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for run_id in [r for r, g in self.running.items() if g.deadline <= now]:
            grant = self.running.pop(run_id)
            self.spent[grant.agent] = self.spent.get(grant.agent, 0.0) + grant.cpu_s

    def busy(self, agent: str) -> str | None:
        """The agent's run in flight, if any."""
        self.expire()
        return next((r for r, g in self.running.items() if g.agent == agent), None)

    def reserved_by(self, agent: str) -> float:
        return sum(g.cpu_s for g in self.running.values() if g.agent == agent)

    def left(self, agent: str, budget: float) -> float:
        self.expire()
        return max(0.0, budget - self.spent.get(agent, 0.0) - self.reserved_by(agent))

    def schedule(self, run_id: str, agent: str, cpu_s: float, wall_s: float) -> None:
        self.seen.add(run_id)
        self.running[run_id] = Running(agent, cpu_s, time.monotonic() + wall_s + QUEUE_GRACE_S)

    def refuse(self, run_id: str, agent: str) -> bool:
        """Record a refusal; True when it may be published (within the agent's rate)."""
        self.seen.add(run_id)
        now = time.monotonic()
        recent = [t for t in self.refusals.get(agent, []) if now - t < 60.0]
        publish = len(recent) < REFUSALS_PER_MINUTE
        self.refusals[agent] = [*recent, now] if publish else recent
        return publish

    def finished(self, run_id: str, agent: str, cpu_s: float, runtime_s: float) -> None:
        grant = self.running.pop(run_id, None)
        if grant is None:
            return  # not a run in flight here (a duplicate, or already charged by expiry)
        self.spent[grant.agent] = self.spent.get(grant.agent, 0.0) + max(cpu_s, runtime_s)

    def replay(self, payload: Any) -> None:
        """Rebuild from the log (a restarted scorer)."""
        if isinstance(payload, WorkspaceScheduled):
            self.schedule(payload.run_id, payload.agent_id, payload.cpu_s, payload.wall_s)
        elif isinstance(payload, WorkspaceRefused):
            self.seen.add(payload.run_id)
        elif isinstance(payload, WorkspaceFinished):
            self.finished(payload.run_id, payload.agent_id, payload.cpu_s, payload.runtime_s)
