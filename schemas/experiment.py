"""experiment.*: the job queue (requested) and its execution (trainers)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from pydantic import Field, StringConstraints, model_validator

from .base import (
    MAX_SEEDS,
    Count,
    EventType,
    Ident,
    IdStr,
    JsonObject,
    NameStr,
    NonNegative,
    Payload,
    Probability,
    Sha256,
    TextStr,
)
from .registry import event

SplitName = Annotated[str, StringConstraints(max_length=16)]  # a split's name (A, B, dev, test)
Violation = Annotated[str, StringConstraints(max_length=500)]  # one sandbox violation, described
Violations = Annotated[list[Violation], Field(max_length=20)]  # a job's sandbox violations, at most 20


class Split(StrEnum):
    DEV = "dev"
    TEST = "test"
    HELDOUT = "heldout"


def dataset_split(split: Split) -> str:
    """The dataset split an evaluation reads: dev for dev; test for test and for a
    held-out dataset (scored on its own test split)."""
    return "dev" if split is Split.DEV else "test"


class Purpose(StrEnum):
    SCORE = "score"
    ABLATION = "ablation"
    BASELINE = "baseline"
    VERIFY = "verify"


@event(EventType.EXPERIMENT_REQUESTED)
class ExperimentRequested(Payload):
    experiment_id: Ident
    idea_id: Ident | None = None
    agent_id: Ident | None = None
    purpose: Purpose = Purpose.SCORE
    split: Split = Split.DEV
    dataset: IdStr
    weak_model: IdStr
    strong_model: IdStr
    seeds: list[int] = Field(min_length=1, max_length=MAX_SEEDS)
    method_artifact: Sha256 | None = None
    builtin_method: IdStr | None = None
    params: JsonObject = Field(default_factory=dict)
    shuffle_weak_labels: bool = False
    weak_labels_artifact: Sha256 | None = Field(
        default=None, description="npz from the scorer: the weak teacher's P(class 1) on B, one array per seed"
    )
    split_sizes: dict[SplitName, int] = Field(
        default_factory=dict, max_length=8, description="A/B/dev/test sizes; empty: defaults")
    split_seed: int | None = None
    teacher_artifact: Sha256 | None = Field(
        default=None, description="npz from the scorer: the weak teacher's weights per seed, for ctx.teacher")
    teacher_queries: Count = Field(default=0, description="texts ctx.teacher answers per seed's run")

    @model_validator(mode="after")
    def _one_method(self) -> ExperimentRequested:
        if (self.method_artifact is None) == (self.builtin_method is None):
            raise ValueError("give exactly one of method_artifact or builtin_method")
        return self


@event(EventType.EXPERIMENT_STARTED)
class ExperimentStarted(Payload):
    publisher_field = "trainer_id"

    experiment_id: Ident
    trainer_id: Ident
    attempt: int = Field(default=1, ge=1)
    sandboxed: bool = True


@event(EventType.EXPERIMENT_PROGRESS)
class ExperimentProgress(Payload):
    publisher_field = "trainer_id"

    experiment_id: Ident
    trainer_id: Ident
    fraction: Probability
    message: NameStr = ""


@event(EventType.EXPERIMENT_FINISHED)
class ExperimentFinished(Payload):
    publisher_field = "trainer_id"

    experiment_id: Ident
    trainer_id: Ident
    predictions_artifact: Sha256
    runtime_s: NonNegative
    peak_rss_mb: NonNegative = 0.0
    seeds: list[int] = Field(default_factory=list, max_length=MAX_SEEDS)
    log_artifact: Sha256 | None = None
    # Stored methods (other ideas' code artifacts) the method could import by hash
    # (trainer.methods.stored): what the trainer put in the job.
    imports: list[Sha256] = Field(default_factory=list, max_length=20)
    teacher_queries: Count = 0  # texts ctx.teacher answered, all seeds together


@event(EventType.EXPERIMENT_FAILED)
class ExperimentFailed(Payload):
    publisher_field = "trainer_id"

    experiment_id: Ident
    trainer_id: Ident
    idea_id: Ident | None = None
    error_class: IdStr
    message: TextStr
    attempt: int = Field(default=1, ge=1)
    log_artifact: Sha256 | None = None
    runtime_s: NonNegative = 0.0
    retryable: bool = False
    sandbox_violations: Violations = Field(default_factory=list)
    deliveries: Count = 0
