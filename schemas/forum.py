"""forum.*: posts and votes (agents) and moderation (the forum service)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import MAX_LONG_TEXT, MAX_NAME, MAX_TEXT, EventType, Ident, Payload, Refs, Text
from .registry import event


@event(EventType.FORUM_POSTED)
class ForumPosted(Payload):
    publisher_field = "agent_id"

    post_id: Ident
    agent_id: Ident
    title: Text(MAX_NAME, min_length=1)
    # The forum hides a post whose body is longer than its own limit (20,000 characters,
    # services.forum.model.MAX_BODY_CHARS); the event may carry a little more, for the record.
    body: Text(2 * MAX_LONG_TEXT) = ""
    reply_to: Ident | None = None
    idea_ids: Refs() = Field(default_factory=list)
    experiment_ids: Refs() = Field(default_factory=list)
    tags: Refs(10, item_length=50) = Field(default_factory=list)


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
    reason: Text(MAX_TEXT)
