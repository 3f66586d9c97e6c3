"""What the scorer needs to know about a session (carried in ``session.started``'s config)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from trainer.data import DEFAULT_HELDOUT, HELDOUT_SIZES, SplitSizes


class ScoringConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    seeds: int = Field(default=5, ge=1, le=50, description="seeds per experiment and per baseline")
    split_sizes: dict[str, int] = Field(
        default_factory=lambda: SplitSizes().as_dict(),
        description="rows in A (weak teacher's gold), B (student's weak-labelled data), dev, test",
    )
    split_seed: int = 0
    heldout: list[str] = Field(default_factory=lambda: list(DEFAULT_HELDOUT),
                               description="held-out datasets: top ideas are scored there too")
    heldout_sizes: dict[str, int] = Field(default_factory=lambda: HELDOUT_SIZES.as_dict())
    rate_limit: int = Field(default=12, ge=1, description="experiments an agent may request per window")
    rate_window_s: float = Field(default=600.0, gt=0)
    promote_top: int = Field(default=3, ge=0, description="an idea among the best N on dev is scored on test, "
                             "held-out datasets, and re-run with shuffled weak labels (teacher ablation)")
    ablation_retained: float = Field(default=0.5, gt=0, description="flag when the shuffled-label run keeps at "
                                     "least this fraction of the idea's gain over the weak floor")
    paired_baseline: bool = Field(default=True, description="run naive_soft once per session, so that every dev "
                                  "score carries its paired difference against it")
    comparison_bootstrap: int = Field(default=1000, ge=100, le=20_000, description="replicates of each paired "
                                      "bootstrap (trainer/paired.py)")
    release_rows: float = Field(default=20.0, ge=0, le=10_000, description="noise of every dev figure released "
                                "to agents, in rows of the dev split (services/scorer/release.py); 0: exact")
    workspace_cpu_s: float = Field(default=900.0, ge=0, description="CPU-seconds of workspace runs per agent "
                                   "(quick experiments on agent-visible data); 0: no workspace")
    workspace_wall_s: float = Field(default=60.0, gt=0, le=600, description="wall clock of one workspace run, "
                                    "at most (an agent may ask for less)")
    workspace_heldback: float = Field(default=0.25, gt=0, lt=1, description="share of B a workspace holds back "
                                      "(weak labels only) for cheap tests")
    teacher_queries: int = Field(default=2000, ge=0, le=100_000, description="texts ctx.teacher answers per run "
                                 "(per seed of an experiment; per workspace run); 0: no teacher on demand")
    dev_test_gap: float = Field(default=0.3, gt=0, description="flag when dev PGR exceeds test PGR by more than this "
                                "(and by 3 standard errors)")

    @classmethod
    def from_session_config(cls, config: dict[str, Any]) -> ScoringConfig:
        return cls.model_validate(config.get("scoring") or {})
