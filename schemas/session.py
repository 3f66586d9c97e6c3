"""session.*: the orchestrator's lifecycle events."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from .base import EventType, Ident, IdStr, JsonObject, Model, NameStr, Payload, TextStr
from .registry import event


class Backend(StrEnum):
    OFFLINE = "offline"
    CLAUDE = "claude"


class EndReason(StrEnum):
    MAX_EXPERIMENTS = "max_experiments"
    BUDGET = "budget"
    WALL_CLOCK = "wall_clock"
    INTERRUPTED = "interrupted"
    COMPLETED = "completed"
    ERROR = "error"


class AgentAssignment(Model):
    agent_id: Ident
    direction: TextStr


class Budgets(Model):
    max_experiments: int | None = Field(default=None, ge=1)
    max_usd: float | None = Field(default=None, ge=0)
    max_usd_per_agent: float | None = Field(default=None, ge=0)
    max_wall_s: float | None = Field(default=None, gt=0)


@event(EventType.SESSION_STARTED)
class SessionStarted(Payload):
    name: NameStr
    backend: Backend
    dataset: IdStr
    weak_model: IdStr
    strong_model: IdStr
    agents: list[AgentAssignment] = Field(default_factory=list, max_length=64)
    trainers: int = Field(default=1, ge=0)
    budgets: Budgets = Field(default_factory=Budgets)
    config: JsonObject = Field(default_factory=dict)


@event(EventType.SESSION_DRAINING)
class SessionDraining(Payload):
    """A budget is spent: agents stop proposing, the scorer accepts no new ideas, and
    evaluations already scheduled (test, held-out, ablation runs) finish before
    ``session.ended``."""

    reason: EndReason
    detail: TextStr = ""
    outstanding: int = Field(default=0, ge=0, description="experiments still running")


@event(EventType.SESSION_ENDED)
class SessionEnded(Payload):
    reason: EndReason
    detail: TextStr = ""
    experiments: int = Field(default=0, ge=0)
    cost_usd: float = Field(default=0.0, ge=0)


@event(EventType.SESSION_RESUMED)
class SessionResumed(Payload):
    """An interrupted session continues (``aar up --resume``): what it had already spent
    counts against its budgets, and the experiments it left in flight are re-queued
    (their queue redelivers them once; a finished one is never run again)."""

    resume: int = Field(ge=1, description="1 for the first resume of this session, then 2, ...")
    previous_end: EndReason | None = Field(
        default=None, description="how the previous run ended; None: it was killed before it could say")
    elapsed_s: float = Field(default=0.0, ge=0, description="wall clock of the earlier runs (their budget share)")
    experiments: int = Field(default=0, ge=0, description="dev scores so far")
    cost_usd: float = Field(default=0.0, ge=0)
    in_flight: list[IdStr] = Field(default_factory=list, max_length=10_000,
                                   description="experiments requested and not yet finished")
