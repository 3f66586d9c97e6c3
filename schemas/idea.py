"""idea.*: a method proposed for scoring."""

from __future__ import annotations

from pydantic import Field, model_validator

from .base import EventType, Ident, IdRefs, IdStr, JsonObject, LongText, NonEmptyLongText, Payload, Sha256, Title
from .registry import event


@event(EventType.IDEA_PROPOSED)
class IdeaProposed(Payload):
    """An agent proposes a method: either agent-written code (an artifact) or a
    built-in method by name, with hyper-parameters. Agents never send predictions."""

    publisher_field = "agent_id"

    idea_id: Ident
    agent_id: Ident
    title: Title
    hypothesis: NonEmptyLongText
    why: LongText = ""
    parent_ideas: IdRefs = Field(default_factory=list)
    cites_posts: IdRefs = Field(default_factory=list)
    method_artifact: Sha256 | None = None
    builtin_method: IdStr | None = None
    params: JsonObject = Field(default_factory=dict)

    @model_validator(mode="after")
    def _one_method(self) -> IdeaProposed:
        if (self.method_artifact is None) == (self.builtin_method is None):
            raise ValueError("give exactly one of method_artifact or builtin_method")
        return self


@event(EventType.IDEA_DUPLICATE)
class IdeaDuplicate(Payload):
    """The scorer recognised an idea identical to an earlier one of the session: the same
    built-in method with the same parameters (defaults filled in), or the same code with
    the same parameters. It is not run again; its answer is the earlier idea's dev score
    (or failure), so it costs the session no experiment."""

    idea_id: Ident
    agent_id: Ident
    duplicate_of: Ident
    duplicate_of_agent: Ident | None = None
    method_key: Sha256 = Field(description="SHA-256 of the method and its full parameters")
