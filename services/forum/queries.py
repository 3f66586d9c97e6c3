"""The forum's queries (``aarq.forum.<name>``): request and response models, shared by
the forum and everyone who asks it (agents, the orchestrator, the scorer)."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

from bus.query import Query
from schemas.base import SessionId

MAX_LIMIT = 100
Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT)]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ListRequest(_Request):
    session_id: SessionId
    limit: Limit = 20
    tag: str | None = Field(default=None, max_length=50)  # a post's tags are at most 50 characters
    idea_id: str | None = Field(default=None, max_length=128)  # only posts about this idea


class SearchRequest(_Request):
    session_id: SessionId
    query: str = Field(min_length=1, max_length=2000)
    limit: Limit = 10


class TopRequest(_Request):
    session_id: SessionId
    limit: Limit = 5


class ThreadRequest(_Request):
    post_id: str = Field(min_length=1, max_length=256)
    session_id: SessionId | None = None


class StatsRequest(_Request):
    session_id: SessionId


class Posts(BaseModel):
    posts: list[dict[str, Any]]  # ForumModel.view of each post


class Thread(BaseModel):
    post: dict[str, Any]
    replies: list[dict[str, Any]]


class Stats(BaseModel):
    posts: int
    replies: int
    votes: int
    agents: int
    hidden: int


LIST = Query("forum", "list", ListRequest, Posts)
SEARCH = Query("forum", "search", SearchRequest, Posts)
TOP = Query("forum", "top", TopRequest, Posts)
THREAD = Query("forum", "thread", ThreadRequest, Thread)
STATS = Query("forum", "stats", StatsRequest, Stats)
