"""What the orchestrator tells an agent at start (answer to ``aarq.orchestrator.assignment``)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from schemas.session import Backend


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
