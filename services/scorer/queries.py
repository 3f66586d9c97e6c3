"""The scorer's query (``aarq.scorer.leaderboard``): aggregates only, never per-row results."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from bus.query import Query


class LeaderboardRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    session_id: str = Field(max_length=128)
    limit: int = Field(default=10, ge=1, le=100)


class LeaderboardEntry(BaseModel):
    idea_id: str
    agent_id: str | None
    title: str
    method: str  # a built-in's name, or code:<sha256 prefix>
    params: dict[str, Any]
    parent_ideas: list[str]
    pgr: float | None
    pgr_stderr: float | None
    accuracy: float
    flags: list[str]
    # paired on the same rows and seeds (trainer/paired.py); None where not computed
    vs_naive_pgr: float | None = None  # this PGR minus naive_soft's
    vs_naive_pgr_se: float | None = None
    tied_with_leader: bool | None = None  # the leader itself: True


class Leaderboard(BaseModel):
    session_id: str
    weak_accuracy: float | None
    ceiling_accuracy: float | None
    scored: int
    entries: list[LeaderboardEntry]  # best dev PGR first


class IdeaRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    session_id: str = Field(max_length=128)
    idea_id: str = Field(min_length=1, max_length=128)


class IdeaView(BaseModel):
    """One idea of the session as agents may see it: what was proposed, its dev score as
    released (with its paired comparisons), its ancestors and the ideas built on it.
    Never a test or held-out score."""

    idea_id: str
    agent_id: str | None
    title: str
    hypothesis: str
    why: str
    builtin_method: str | None
    method_artifact: str | None
    params: dict[str, Any]
    parent_ideas: list[str]
    cites_posts: list[str]
    dev_score: dict[str, Any] | None  # accuracy, pgr, pgr_stderr, comparisons; None: not scored yet
    ancestors: list[dict[str, Any]]  # {"idea_id", "agent_id", "depth", "pgr"}, nearest first
    children: list[str]  # ideas that name this one as a parent


LEADERBOARD = Query("scorer", "leaderboard", LeaderboardRequest, Leaderboard)
IDEA = Query("scorer", "idea", IdeaRequest, IdeaView)
