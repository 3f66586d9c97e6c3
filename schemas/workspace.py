"""workspace.*: an agent's quick experiments, run where the data is, on agent-visible data only.

An agent asks (``workspace.requested``: its code, stored as an artifact); the scorer
checks the agent's workspace budget (CPU-seconds, from the session's configuration) and
either schedules the run with what the trainer needs (``workspace.scheduled``: the weak
labels and the weak teacher, never a gold label) or refuses it (``workspace.refused``,
with the reason). A trainer runs it in the sandbox on its own queue, beside the
experiments, and reports (``workspace.finished``: output tails, a JSON result, runtime,
CPU, exit status, sizes, violations, teacher queries).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from .base import (
    Count,
    EventType,
    Ident,
    IdStr,
    NameStr,
    NonNegative,
    Payload,
    Sha256,
    TextStr,
)
from .experiment import SplitName
from .registry import event

MAX_OUTPUT = 8_000  # characters of stdout or stderr a finished run carries (the tail)
MAX_RESULT = 16_000  # characters of the JSON result value
MAX_WALL_S = 600.0

Output = Annotated[str, StringConstraints(max_length=MAX_OUTPUT)]
ResultJson = Annotated[str, StringConstraints(max_length=MAX_RESULT)]


@event(EventType.WORKSPACE_REQUESTED)
class WorkspaceRequested(Payload):
    """An agent asks to run ``code_artifact`` (Python) in its workspace."""

    publisher_field = "agent_id"

    run_id: Ident
    agent_id: Ident
    code_artifact: Sha256
    wall_s: float = Field(default=60.0, gt=0, le=MAX_WALL_S)
    note: NameStr = ""


@event(EventType.WORKSPACE_SCHEDULED)
class WorkspaceScheduled(Payload):
    """The scorer accepted a run: everything a trainer needs, none of it a gold label."""

    run_id: Ident
    agent_id: Ident
    code_artifact: Sha256
    wall_s: float = Field(gt=0, le=MAX_WALL_S)
    cpu_s: float = Field(gt=0, description="CPU-seconds this run may use (at most what is left of the budget)")
    memory_mb: int = Field(default=4096, ge=64)
    dataset: IdStr
    weak_model: IdStr
    strong_model: IdStr
    split_sizes: dict[SplitName, int] = Field(default_factory=dict, max_length=8)
    split_seed: int | None = None
    seed: int = 0
    heldback: float = Field(default=0.25, gt=0, lt=1, description="share of B held back (weak labels only)")
    weak_labels_artifact: Sha256
    teacher_artifact: Sha256 | None = None
    teacher_queries: Count = 0
    spent_cpu_s: NonNegative = 0.0
    budget_cpu_s: NonNegative = 0.0


@event(EventType.WORKSPACE_REFUSED)
class WorkspaceRefused(Payload):
    run_id: Ident
    agent_id: Ident
    reason: TextStr
    spent_cpu_s: NonNegative = 0.0
    budget_cpu_s: NonNegative = 0.0


@event(EventType.WORKSPACE_FINISHED)
class WorkspaceFinished(Payload):
    """What a run did. ``exit_status`` is None when the sandbox killed it (a limit, a
    violation); ``result_json`` is the JSON text of the run's result value, or empty."""

    publisher_field = "trainer_id"

    run_id: Ident
    agent_id: Ident
    trainer_id: Ident
    code_artifact: Sha256
    ok: bool
    exit_status: int | None = None
    error: TextStr = ""
    runtime_s: NonNegative = 0.0
    cpu_s: NonNegative = 0.0
    peak_memory_mb: NonNegative = 0.0
    stdout: Output = ""
    stdout_dropped: Count = Field(default=0, description="characters of stdout cut from the front")
    stderr: Output = ""
    stderr_dropped: Count = 0
    result_json: ResultJson = ""
    result_dropped: Count = Field(default=0, description="characters of a result too large to carry (then empty)")
    rows: dict[IdStr, int] = Field(default_factory=dict, max_length=16)
    teacher_queries: Count = 0
    violations: Annotated[list[TextStr], Field(max_length=20)] = Field(default_factory=list)
    blocking: bool = False
    warm: bool = Field(default=False, description="ran in a sandbox started ahead of the request")
