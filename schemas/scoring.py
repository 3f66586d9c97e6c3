"""baseline.* and score.*: what the scorer (the only holder of gold labels) publishes."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from .base import MAX_SEEDS, Count, EventType, Ident, IdStr, Payload, Probability, Sha256
from .experiment import Purpose, Split
from .registry import event


class BaselineKind(StrEnum):
    WEAK = "weak"
    CEILING = "ceiling"


@event(EventType.BASELINE_COMPUTED)
class BaselineComputed(Payload):
    kind: BaselineKind
    dataset: IdStr
    split: Split
    weak_model: IdStr
    strong_model: IdStr
    seeds: list[int] = Field(min_length=1, max_length=MAX_SEEDS)
    accuracies: list[Probability] = Field(min_length=1, max_length=MAX_SEEDS)
    mean: Probability
    stderr: float = Field(ge=0)


@event(EventType.SCORE_PUBLISHED)
class ScorePublished(Payload):
    """Aggregate scores only: agents never see per-example correctness.
    ``pgr`` is null when the ceiling-weak gap is too small to divide by."""

    experiment_id: Ident
    idea_id: Ident | None = None
    agent_id: Ident | None = None
    purpose: Purpose = Purpose.SCORE
    dataset: IdStr
    split: Split
    n_seeds: Count
    accuracy: Probability
    accuracy_stderr: float = Field(ge=0)
    weak_accuracy: Probability
    ceiling_accuracy: Probability
    pgr: float | None
    pgr_stderr: float | None = Field(default=None, ge=0)
    method_artifact: Sha256 | None = None
    builtin_method: IdStr | None = None


@event(EventType.SCORE_WITHHELD)
class ScoreWithheld(ScorePublished):
    """A score agents must not see: test split, held-out datasets, teacher ablations.
    Same fields as ``score.published``; its own subject, which no agent may subscribe to."""
