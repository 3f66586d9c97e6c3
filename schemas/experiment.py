"""experiment.*: the job queue (requested) and its execution (trainers)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field, model_validator

from .base import Count, EventType, JsonObject, NonNegative, Payload, Probability, Sha256
from .registry import event


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
    experiment_id: str
    idea_id: str | None = None
    agent_id: str | None = None
    purpose: Purpose = Purpose.SCORE
    split: Split = Split.DEV
    dataset: str
    weak_model: str
    strong_model: str
    seeds: list[int] = Field(min_length=1)
    method_artifact: Sha256 | None = None
    builtin_method: str | None = None
    params: JsonObject = Field(default_factory=dict)
    shuffle_weak_labels: bool = False
    weak_labels_artifact: Sha256 | None = Field(
        default=None, description="npz from the scorer: the weak teacher's P(class 1) on B, one array per seed"
    )
    split_sizes: dict[str, int] = Field(default_factory=dict, description="A/B/dev/test sizes; empty: defaults")
    split_seed: int | None = None

    @model_validator(mode="after")
    def _one_method(self) -> "ExperimentRequested":
        if (self.method_artifact is None) == (self.builtin_method is None):
            raise ValueError("give exactly one of method_artifact or builtin_method")
        return self


@event(EventType.EXPERIMENT_STARTED)
class ExperimentStarted(Payload):
    experiment_id: str
    trainer_id: str
    attempt: int = Field(default=1, ge=1)
    sandboxed: bool = True


@event(EventType.EXPERIMENT_PROGRESS)
class ExperimentProgress(Payload):
    experiment_id: str
    trainer_id: str
    fraction: Probability
    message: str = ""


@event(EventType.EXPERIMENT_FINISHED)
class ExperimentFinished(Payload):
    experiment_id: str
    trainer_id: str
    predictions_artifact: Sha256
    runtime_s: NonNegative
    peak_rss_mb: NonNegative = 0.0
    seeds: list[int] = Field(default_factory=list)
    log_artifact: Sha256 | None = None


@event(EventType.EXPERIMENT_FAILED)
class ExperimentFailed(Payload):
    experiment_id: str
    trainer_id: str
    idea_id: str | None = None
    error_class: str
    message: str
    attempt: int = Field(default=1, ge=1)
    log_artifact: Sha256 | None = None
    runtime_s: NonNegative = 0.0
    retryable: bool = False
    sandbox_violations: list[str] = Field(default_factory=list)
    deliveries: Count = 0
