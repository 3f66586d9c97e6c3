"""idea.*: a method proposed for scoring."""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import MAX_ID, MAX_LONG_TEXT, MAX_NAME, EventType, Ident, JsonObject, Payload, Refs, Sha256, Text
from .registry import event


@event(EventType.IDEA_PROPOSED)
class IdeaProposed(Payload):
    """An agent proposes a method: either agent-written code (an artifact) or a
    built-in method by name, with hyper-parameters. Agents never send predictions."""

    publisher_field = "agent_id"

    idea_id: Ident
    agent_id: Ident
    title: Text(MAX_NAME, min_length=1)
    hypothesis: Text(MAX_LONG_TEXT, min_length=1)
    why: Text(MAX_LONG_TEXT) = ""
    parent_ideas: Refs() = Field(default_factory=list)
    cites_posts: Refs() = Field(default_factory=list)
    method_artifact: Sha256 | None = None
    builtin_method: Text(MAX_ID) | None = None
    params: JsonObject = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_method(self) -> "IdeaProposed":
        if (self.method_artifact is None) == (self.builtin_method is None):
            raise ValueError("give exactly one of method_artifact or builtin_method")
        return self
