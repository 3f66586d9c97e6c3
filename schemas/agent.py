"""agent.*: what a researcher agent did, including every LLM and tool call."""

from __future__ import annotations

from pydantic import Field

from .base import Count, EventType, JsonObject, NonNegative, Payload
from .registry import event
from .session import Backend


@event(EventType.AGENT_STARTED)
class AgentStarted(Payload):
    agent_id: str
    direction: str
    backend: Backend
    model: str | None = None
    seed: int | None = None


@event(EventType.AGENT_LLM_CALLED)
class AgentLlmCalled(Payload):
    """One Messages API call. Cost is computed from a price table at call time."""

    agent_id: str
    model: str
    input_tokens: Count
    output_tokens: Count
    cache_read_tokens: Count = 0
    cache_write_tokens: Count = 0
    cost_usd: NonNegative
    latency_s: NonNegative
    stop_reason: str | None = None
    attempts: int = Field(default=1, ge=1)
    idea_id: str | None = None


@event(EventType.AGENT_TOOL_CALLED)
class AgentToolCalled(Payload):
    agent_id: str
    tool: str
    arguments: JsonObject = Field(default_factory=dict)
    ok: bool = True
    error: str | None = None
    latency_s: NonNegative = 0.0
    result_summary: str = ""


@event(EventType.AGENT_STOPPED)
class AgentStopped(Payload):
    agent_id: str
    reason: str
    ideas: Count = 0
    cost_usd: NonNegative = 0.0
