"""The session configuration handed to the orchestrator by ``aar up``."""

from __future__ import annotations

import json
import os

from pydantic import BaseModel, ConfigDict, Field

from schemas.session import Backend
from services.scorer.config import ScoringConfig

ENV_VAR = "AAR_SESSION_CONFIG"
RESUME_ENV = "AAR_SESSION_RESUME"  # epoch seconds: this run resumes the session (aar up --resume)


class SessionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    session_id: str
    name: str
    agents: int = Field(default=3, ge=0)
    trainers: int = Field(default=1, ge=0)
    backend: Backend = Backend.OFFLINE
    dataset: str = "rotten_tomatoes"
    weak_model: str = "minilm"
    strong_model: str = "mpnet"
    max_experiments: int | None = Field(default=None, ge=1)
    max_usd: float | None = Field(default=None, ge=0)
    max_wall_s: float | None = Field(default=None, gt=0)
    max_usd_per_agent: float | None = Field(default=None, ge=0)
    max_ideas_per_agent: int | None = Field(default=None, ge=1)
    drain_timeout_s: float = Field(default=300.0, ge=0, description="how long scheduled evaluations may finish")
    seed: int = 0
    model: str = "claude-sonnet-4-6"
    llm_base_url: str | None = Field(default=None, description="a server speaking the Messages API (self-hosted)")
    llm_price: tuple[float, float] | None = Field(
        default=None, description="USD per million input and output tokens of --model (the price table's entry)")
    scoring: ScoringConfig = Field(default_factory=ScoringConfig)

    def to_env(self) -> dict[str, str]:
        return {ENV_VAR: self.model_dump_json()}

    @classmethod
    def from_env(cls) -> SessionConfig:
        raw = os.environ.get(ENV_VAR)
        if not raw:
            raise RuntimeError(f"{ENV_VAR} is not set: the orchestrator is started by `aar up`")
        return cls.model_validate(json.loads(raw))
