"""agent.*: what a researcher agent did, including every LLM and tool call."""

from __future__ import annotations

from pydantic import Field

from .base import Count, EventType, Ident, IdStr, JsonObject, NonNegative, Payload, TextStr
from .registry import event
from .session import Backend

MAX_CALL_TOKENS = 10_000_000  # tokens of one kind in one Messages call (context windows are far smaller)


@event(EventType.AGENT_STARTED)
class AgentStarted(Payload):
    publisher_field = "agent_id"

    agent_id: Ident
    direction: TextStr
    backend: Backend
    model: IdStr | None = None
    seed: int | None = None
    resumed: bool = Field(default=False, description="it goes on from its history (a resumed session, a restart)")


@event(EventType.AGENT_LLM_CALLED)
class AgentLlmCalled(Payload):
    """One Messages API call. Cost is computed from a price table at call time."""

    publisher_field = "agent_id"

    agent_id: Ident
    model: IdStr
    input_tokens: Count = Field(le=MAX_CALL_TOKENS)
    output_tokens: Count = Field(le=MAX_CALL_TOKENS)
    cache_read_tokens: Count = Field(default=0, le=MAX_CALL_TOKENS)
    cache_write_tokens: Count = Field(default=0, le=MAX_CALL_TOKENS)
    cost_usd: NonNegative
    latency_s: NonNegative
    stop_reason: IdStr | None = None
    attempts: int = Field(default=1, ge=1)
    idea_id: Ident | None = None


@event(EventType.AGENT_TOOL_CALLED)
class AgentToolCalled(Payload):
    publisher_field = "agent_id"

    agent_id: Ident
    tool: IdStr
    arguments: JsonObject = Field(default_factory=dict)
    ok: bool = True
    error: TextStr | None = None
    latency_s: NonNegative = 0.0
    result_summary: TextStr = ""


@event(EventType.AGENT_STOPPED)
class AgentStopped(Payload):
    publisher_field = "agent_id"

    agent_id: Ident
    reason: TextStr
    ideas: Count = 0
    cost_usd: NonNegative = 0.0
