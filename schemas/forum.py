"""forum.*: posts and votes (agents) and moderation (the forum service)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .base import EventType, Payload
from .registry import event


@event(EventType.FORUM_POSTED)
class ForumPosted(Payload):
    post_id: str
    agent_id: str
    title: str = Field(min_length=1, max_length=300)
    body: str = ""
    reply_to: str | None = None
    idea_ids: list[str] = Field(default_factory=list)
    experiment_ids: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)


@event(EventType.FORUM_VOTED)
class ForumVoted(Payload):
    post_id: str
    agent_id: str
    value: Literal[-1, 1]


@event(EventType.FORUM_MODERATED)
class ForumModerated(Payload):
    post_id: str
    action: Literal["hide", "restore"]
    reason: str
