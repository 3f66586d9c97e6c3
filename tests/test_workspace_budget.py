"""The scorer's workspace budget: what a run is charged, one run at a time, lost runs,
and refusals that cannot be used to make the scorer publish more than the agent does."""

from __future__ import annotations

from services.scorer import workspace
from services.scorer.workspace import WorkspaceBudget


def test_a_sleeping_run_is_charged_its_wall_clock_and_one_run_at_a_time() -> None:
    ws = WorkspaceBudget()
    ws.schedule("w-1", "agent-1", cpu_s=60.0, wall_s=60.0)
    assert ws.busy("agent-1") == "w-1" and ws.busy("agent-2") is None
    assert ws.left("agent-1", 100.0) == 40.0  # the running run reserves its grant
    ws.finished("w-1", "agent-1", cpu_s=0.03, runtime_s=59.0)  # it slept: 0.03 CPU-s, 59 s held
    assert ws.spent["agent-1"] == 59.0 and ws.busy("agent-1") is None
    ws.finished("w-1", "agent-1", cpu_s=0.03, runtime_s=59.0)  # a duplicate is not charged twice
    assert ws.spent["agent-1"] == 59.0


def test_a_lost_run_is_charged_its_grant_and_frees_the_agent(monkeypatch: object) -> None:
    ws = WorkspaceBudget()
    ws.schedule("w-1", "agent-1", cpu_s=30.0, wall_s=30.0)
    ws.running["w-1"].deadline = 0.0  # its result never came
    assert ws.busy("agent-1") is None and ws.spent["agent-1"] == 30.0
    ws.finished("w-1", "agent-1", cpu_s=1.0, runtime_s=1.0)  # a late result is not charged again
    assert ws.spent["agent-1"] == 30.0


def test_refusals_are_published_at_a_bounded_rate_per_agent() -> None:
    ws = WorkspaceBudget()
    published = [ws.refuse(f"w-{i}", "agent-1") for i in range(workspace.REFUSALS_PER_MINUTE + 10)]
    assert published.count(True) == workspace.REFUSALS_PER_MINUTE and not any(published[-10:])
    assert ws.refuse("w-x", "agent-2")  # another agent's refusals are its own
    assert all(ws.known(f"w-{i}") for i in range(workspace.REFUSALS_PER_MINUTE + 10))
