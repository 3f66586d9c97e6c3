"""What the orchestrator tells an agent at start (answer to ``aarq.orchestrator.assignment``)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schemas.session import Backend


class PastIdea(BaseModel):
    """One of the agent's own ideas, as the log has it (its dev score as released to agents)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    idea_id: str
    title: str = ""
    method: str = ""  # a built-in's name, or "code:<sha256>"
    params: dict[str, Any] = Field(default_factory=dict)
    parent_ideas: list[str] = Field(default_factory=list)
    status: str = "pending"  # scored | failed | pending (in flight when the session stopped)
    pgr: float | None = None
    pgr_stderr: float | None = None
    accuracy: float | None = None
    error: str | None = None


class AgentHistory(BaseModel):
    """What an agent did before this process started (a resumed session, or a restart
    after a crash), rebuilt from the log by the orchestrator: its ideas and their scores,
    its notes, its spend, and a summary of its past turns (its tool calls)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    resumes: int = Field(default=0, ge=0, description="times the session was resumed so far")
    ideas: list[PastIdea] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    cost_usd: float = Field(default=0.0, ge=0, description="LLM spend so far, as the price table says")
    tool_calls: int = Field(default=0, ge=0)
    summary: str = Field(default="", description="its past turns, oldest first (the newest kept when long)")


class Assignment(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    session_id: str
    agent_id: str
    direction: str  # the text the agent starts from
    direction_key: str = ""
    backend: Backend = Backend.OFFLINE
    seed: int = 0
    model: str = "claude-sonnet-4-6"  # Claude backend
    dataset: str = "rotten_tomatoes"
    max_usd_per_agent: float | None = Field(default=None, ge=0)
    llm_price: tuple[float, float] | None = Field(default=None, description="the session's price of model")
    max_ideas: int | None = Field(default=None, ge=1, description="ideas this agent may propose (None: no limit)")
    history: AgentHistory | None = Field(default=None, description="what this agent did before it (re)started")
