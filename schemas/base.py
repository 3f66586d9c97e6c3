"""Building blocks shared by every event module: the catalogue of event types,
identifiers, and the payload base class."""

from __future__ import annotations

import hashlib

import math
import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints
from ulid import ULID


class Domain(StrEnum):
    """Second-to-last token group of a subject: ``aar.<session>.<domain>.<event>``."""

    SESSION = "session"
    AGENT = "agent"
    IDEA = "idea"
    ARTIFACT = "artifact"
    EXPERIMENT = "experiment"
    BASELINE = "baseline"
    SCORE = "score"
    INTEGRITY = "integrity"
    FORUM = "forum"
    RECORDER = "recorder"


class EventType(StrEnum):
    """Every event that can happen in AAR. The single source of truth."""

    SESSION_STARTED = "session.started"
    SESSION_DRAINING = "session.draining"
    SESSION_ENDED = "session.ended"
    AGENT_STARTED = "agent.started"
    AGENT_LLM_CALLED = "agent.llm_called"
    AGENT_TOOL_CALLED = "agent.tool_called"
    AGENT_STOPPED = "agent.stopped"
    IDEA_PROPOSED = "idea.proposed"
    ARTIFACT_STORED = "artifact.stored"
    EXPERIMENT_REQUESTED = "experiment.requested"
    EXPERIMENT_STARTED = "experiment.started"
    EXPERIMENT_PROGRESS = "experiment.progress"
    EXPERIMENT_FINISHED = "experiment.finished"
    EXPERIMENT_FAILED = "experiment.failed"
    BASELINE_COMPUTED = "baseline.computed"
    SCORE_PUBLISHED = "score.published"
    SCORE_WITHHELD = "score.withheld"
    INTEGRITY_FLAGGED = "integrity.flagged"
    FORUM_POSTED = "forum.posted"
    FORUM_VOTED = "forum.voted"
    FORUM_MODERATED = "forum.moderated"
    RECORDER_REJECTED = "recorder.rejected"
    RECORDER_DEAD_LETTERED = "recorder.dead_lettered"
    RECORDER_HEALTH = "recorder.health"

    @property
    def domain(self) -> Domain:
        return Domain(self.value.split(".", 1)[0])

    @property
    def name_in_domain(self) -> str:
        return self.value.split(".", 1)[1]


# Tokens that end up inside a NATS subject: no dots, wildcards or whitespace.
SUBJECT_TOKEN = r"^[A-Za-z0-9_-]{1,64}$"  # used with fullmatch / by pydantic
_SUBJECT_TOKEN_RE = re.compile(SUBJECT_TOKEN)

SessionId = Annotated[str, StringConstraints(pattern=SUBJECT_TOKEN)]
EventId = Annotated[str, StringConstraints(min_length=1, max_length=64)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]
Count = Annotated[int, Field(ge=0)]


def is_subject_token(value: str) -> bool:
    return bool(_SUBJECT_TOKEN_RE.fullmatch(value))


MAX_JSON_DEPTH = 32


def _json_safe(value: Any, depth: int = 0) -> Any:
    """Free-form JSON fields: finite numbers, bounded nesting, encodable strings."""
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")
    if isinstance(value, str):
        value.encode("utf-8")  # lone surrogates raise UnicodeEncodeError (a ValueError)
    elif isinstance(value, dict):
        for key, item in value.items():
            _json_safe(key, depth + 1)
            _json_safe(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _json_safe(item, depth + 1)
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_json_safe)]


def derived_id(prefix: str, *parts: object) -> str:
    """A stable event id derived from what caused the event: publishing it again (a
    redelivered job, a restarted service) is deduplicated by JetStream and the recorder."""
    return prefix + hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:40]


def new_id() -> str:
    """A sortable unique id (ULID, 26 chars, millisecond time prefix)."""
    return str(ULID())


def new_session_id() -> str:
    return f"s-{ULID()}"


class Payload(BaseModel):
    """Base of every event payload. Subclasses are registered with
    :func:`schemas.registry.event` which sets ``event_type`` and ``schema_version``."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    event_type: ClassVar[EventType]
    schema_version: ClassVar[int] = 1
