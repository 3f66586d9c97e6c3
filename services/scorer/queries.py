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


LEADERBOARD = Query("scorer", "leaderboard", LeaderboardRequest, Leaderboard)
