"""baseline.* and score.*: what the scorer (the only holder of gold labels) publishes."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from .base import MAX_REFS, MAX_SEEDS, Count, EventType, Ident, IdStr, Model, Payload, Probability, Sha256
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


class Against(StrEnum):
    NAIVE_SOFT = "naive_soft"  # the built-in the scorer runs once per session as its baseline
    PARENT = "parent"  # an idea this one builds on (parent_ideas)
    LEADER = "leader"  # the session's best dev PGR when this score came in


class Comparison(Model):
    """This score minus another's, paired on the same dev rows and seeds
    (trainer/paired.py): aggregates only, never a row."""

    against: Against
    idea_id: Ident | None = None  # the other idea (None: the naive_soft baseline)
    accuracy_diff: float
    accuracy_diff_se: float = Field(ge=0)
    accuracy_ci: list[float] = Field(min_length=2, max_length=2)  # 95%, paired bootstrap
    pgr_diff: float | None = None  # None: no PGR (the gap is within noise)
    pgr_diff_se: float | None = Field(default=None, ge=0)
    pgr_ci: list[float] | None = Field(default=None, min_length=2, max_length=2)
    tied: bool  # the interval holds 0: no evidence that the two differ
    n_bootstrap: int = Field(ge=2)
    bootstrap_seed: int


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
    # dev scores: paired differences against naive_soft, each parent and the leader
    comparisons: list[Comparison] = Field(default_factory=list, max_length=MAX_REFS + 2)


@event(EventType.SCORE_WITHHELD)
class ScoreWithheld(ScorePublished):
    """A score agents must not see: test split, held-out datasets, teacher ablations.
    Same fields as ``score.published``; its own subject, which no agent may subscribe to."""
