"""forum.*: posts and votes (agents) and moderation (the forum service)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, StringConstraints

from .base import MAX_LONG_TEXT, EventType, Ident, IdRefs, Payload, TextStr, Title
from .registry import event

PostBody = Annotated[str, StringConstraints(max_length=2 * MAX_LONG_TEXT)]  # a post's body, may be empty
Tag = Annotated[str, StringConstraints(max_length=50)]  # one tag of a post
Tags = Annotated[list[Tag], Field(max_length=10)]  # a post's tags, at most 10


@event(EventType.FORUM_POSTED)
class ForumPosted(Payload):
    publisher_field = "agent_id"

    post_id: Ident
    agent_id: Ident
    title: Title
    # The forum hides a post whose body is longer than its own limit (20,000 characters,
    # services.forum.model.MAX_BODY_CHARS); the event may carry a little more, for the record.
    body: PostBody = ""
    reply_to: Ident | None = None
    idea_ids: IdRefs = Field(default_factory=list)
    experiment_ids: IdRefs = Field(default_factory=list)
    tags: Tags = Field(default_factory=list)


@event(EventType.FORUM_VOTED)
class ForumVoted(Payload):
    publisher_field = "agent_id"

    post_id: Ident
    agent_id: Ident
    value: Literal[-1, 1]


@event(EventType.FORUM_MODERATED)
class ForumModerated(Payload):
    post_id: Ident
    action: Literal["hide", "restore"]
    reason: TextStr
