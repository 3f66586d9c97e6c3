"""baseline.* and score.*: what the scorer (the only holder of gold labels) publishes."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from .base import Count, EventType, Payload, Probability
from .experiment import Purpose, Split
from .registry import event


class BaselineKind(StrEnum):
    WEAK = "weak"
    CEILING = "ceiling"


@event(EventType.BASELINE_COMPUTED)
class BaselineComputed(Payload):
    kind: BaselineKind
    dataset: str
    split: Split
    weak_model: str
    strong_model: str
    seeds: list[int] = Field(min_length=1)
    accuracies: list[Probability] = Field(min_length=1)
    mean: Probability
    stderr: float = Field(ge=0)


@event(EventType.SCORE_PUBLISHED)
class ScorePublished(Payload):
    """Aggregate scores only: agents never see per-example correctness.
    ``pgr`` is null when the ceiling-weak gap is too small to divide by."""

    experiment_id: str
    idea_id: str | None = None
    agent_id: str | None = None
    purpose: Purpose = Purpose.SCORE
    dataset: str
    split: Split
    n_seeds: Count
    accuracy: Probability
    accuracy_stderr: float = Field(ge=0)
    weak_accuracy: Probability
    ceiling_accuracy: Probability
    pgr: float | None
    pgr_stderr: float | None = Field(default=None, ge=0)
    method_artifact: str | None = None
    builtin_method: str | None = None


@event(EventType.SCORE_WITHHELD)
class ScoreWithheld(ScorePublished):
    """A score agents must not see: test split, held-out datasets, teacher ablations.
    Same fields as ``score.published``; its own subject, which no agent may subscribe to."""
