"""Each agent's workspace budget, in CPU-seconds: what its finished runs used plus what
its running runs may still use (so that many requests at once cannot overspend it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from schemas.workspace import WorkspaceFinished, WorkspaceRefused, WorkspaceScheduled


@dataclass(slots=True)
class WorkspaceBudget:
    spent: dict[str, float] = field(default_factory=dict)  # agent -> CPU-seconds its finished runs used
    running: dict[str, tuple[str, float]] = field(default_factory=dict)  # run id -> (agent, CPU granted)
    seen: set[str] = field(default_factory=set)  # run ids scheduled or refused

    def known(self, run_id: str) -> bool:
        return run_id in self.seen

    def reserved_by(self, agent: str) -> float:
        return sum(cpu for who, cpu in self.running.values() if who == agent)

    def left(self, agent: str, budget: float) -> float:
        return max(0.0, budget - self.spent.get(agent, 0.0) - self.reserved_by(agent))

    def schedule(self, run_id: str, agent: str, cpu_s: float) -> None:
        self.seen.add(run_id)
        self.running[run_id] = (agent, cpu_s)

    def refuse(self, run_id: str) -> None:
        self.seen.add(run_id)

    def finished(self, run_id: str, agent: str, cpu_s: float) -> None:
        granted = self.running.pop(run_id, None)
        if granted is None and run_id not in self.seen:
            return  # not a run this scorer scheduled
        who = granted[0] if granted is not None else agent
        self.spent[who] = self.spent.get(who, 0.0) + cpu_s
        self.seen.add(run_id)

    def replay(self, payload: Any) -> None:
        """Rebuild from the log (a restarted scorer)."""
        if isinstance(payload, WorkspaceScheduled):
            self.schedule(payload.run_id, payload.agent_id, payload.cpu_s)
        elif isinstance(payload, WorkspaceRefused):
            self.refuse(payload.run_id)
        elif isinstance(payload, WorkspaceFinished):
            self.finished(payload.run_id, payload.agent_id, payload.cpu_s)
