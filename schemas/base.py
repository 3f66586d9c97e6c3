"""Building blocks shared by every event module: the catalogue of event types,
identifiers, and the payload base class."""

from __future__ import annotations

import hashlib
import hmac
import math
import re
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, model_validator
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
    WORKSPACE = "workspace"
    RECORDER = "recorder"
    GATEWAY = "gateway"


class EventType(StrEnum):
    """Every event that can happen in AAR. The single source of truth."""

    SESSION_STARTED = "session.started"
    SESSION_DRAINING = "session.draining"
    SESSION_ENDED = "session.ended"
    SESSION_RESUMED = "session.resumed"
    AGENT_STARTED = "agent.started"
    AGENT_LLM_CALLED = "agent.llm_called"
    AGENT_TOOL_CALLED = "agent.tool_called"
    AGENT_STOPPED = "agent.stopped"
    IDEA_PROPOSED = "idea.proposed"
    IDEA_DUPLICATE = "idea.duplicate"
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
    WORKSPACE_REQUESTED = "workspace.requested"
    WORKSPACE_SCHEDULED = "workspace.scheduled"
    WORKSPACE_REFUSED = "workspace.refused"
    WORKSPACE_FINISHED = "workspace.finished"
    RECORDER_REJECTED = "recorder.rejected"
    RECORDER_DEAD_LETTERED = "recorder.dead_lettered"
    RECORDER_HEALTH = "recorder.health"
    GATEWAY_REFUSED = "gateway.refused"

    @property
    def domain(self) -> Domain:
        return Domain(self.value.split(".", 1)[0])

    @property
    def name_in_domain(self) -> str:
        return self.value.split(".", 1)[1]


# Tokens that end up inside a NATS subject: no dots, wildcards or whitespace.
SUBJECT_TOKEN = r"^[A-Za-z0-9_-]{1,64}$"  # used with fullmatch / by pydantic
_SUBJECT_TOKEN_RE = re.compile(SUBJECT_TOKEN)

# Documented maxima (DESIGN.md section 4: every str and list field has one). Every str
# field of every event uses one of these sizes, or a smaller one of its own.
MAX_ID = 128  # ids minted by the platform or an agent (idea, experiment, post, agent, trainer)
MAX_NAME = 300  # titles, names, short labels
MAX_TEXT = 4_000  # one-paragraph texts: error messages, details, directions
MAX_LONG_TEXT = 20_000  # an agent's hypothesis, reasoning or post body
MAX_REFS = 50  # ids in a list (parent ideas, cited posts, ...)
MAX_SEEDS = 100  # seeds (and per-seed values) of one experiment or baseline
MAX_JSON_BYTES = 64 * 1024  # a free-form JSON object (parameters, tool arguments, evidence), about
# The largest event the platform accepts (envelope and payload as JSON bytes); the
# stream refuses anything larger and the gateway answers with the reason.
MAX_EVENT_BYTES = 256 * 1024


# Sized strings and lists: every str and list field of every event uses one of these
# (or a size of its own, defined next to the one field that uses it).
IdStr = Annotated[str, StringConstraints(max_length=MAX_ID)]  # an id or short label, may be empty
Ident = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID)]  # a non-empty id
NameStr = Annotated[str, StringConstraints(max_length=MAX_NAME)]  # a name, subject or label, may be empty
Title = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]  # a non-empty title
TextStr = Annotated[str, StringConstraints(max_length=MAX_TEXT)]  # a paragraph: error, detail, direction
LongText = Annotated[str, StringConstraints(max_length=MAX_LONG_TEXT)]  # reasoning, may be empty
NonEmptyLongText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_LONG_TEXT)]  # a hypothesis
IdRefs = Annotated[list[IdStr], Field(max_length=MAX_REFS)]  # at most MAX_REFS ids (parent ideas, cited posts)


# Envelope ids: printable ASCII without spaces (they travel in logs, SQL, URLs and headers).
PRINTABLE_ID = r"^[!-~]{1,128}$"
SessionId = Annotated[str, StringConstraints(max_length=64, pattern=SUBJECT_TOKEN)]
EventId = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=r"^[!-~]{1,64}$")]
RefId = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID, pattern=PRINTABLE_ID)]
Sha256 = Annotated[str, StringConstraints(min_length=64, max_length=64, pattern=r"^[0-9a-f]{64}$")]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegative = Annotated[float, Field(ge=0.0)]
Count = Annotated[int, Field(ge=0)]


def is_subject_token(value: str) -> bool:
    return bool(_SUBJECT_TOKEN_RE.fullmatch(value))


MAX_JSON_DEPTH = 32


class _Budget:
    """Running size of a JSON value being checked (about its encoded length)."""

    __slots__ = ("left",)

    def __init__(self, limit: int) -> None:
        self.left = limit

    def spend(self, n: int) -> None:
        self.left -= n
        if self.left < 0:
            raise ValueError(f"larger than {MAX_JSON_BYTES:,} bytes of JSON")


def _json_safe(value: Any, depth: int = 0, budget: _Budget | None = None) -> Any:
    """Free-form JSON fields: finite numbers, bounded nesting and size, encodable strings."""
    if budget is None:
        budget = _Budget(MAX_JSON_BYTES)
    if depth > MAX_JSON_DEPTH:
        raise ValueError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")
    if isinstance(value, str):
        check_encodable(value)
        budget.spend(len(value) + 2)
    elif isinstance(value, dict):
        budget.spend(2)
        for key, item in value.items():
            _json_safe(key, depth + 1, budget)
            _json_safe(item, depth + 1, budget)
    elif isinstance(value, list):
        budget.spend(2)
        for item in value:
            _json_safe(item, depth + 1, budget)
    else:
        budget.spend(8)
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(_json_safe)]


def check_encodable(value: str) -> str:
    """``value`` if it is valid Unicode text (encodable as UTF-8), else ValueError.
    A lone surrogate (e.g. from a ``\\ud800`` JSON escape read by a lenient parser, or
    built in Python) cannot be written to the bus, the log or any file."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            bad = value[exc.start]
            raise ValueError(
                f"lone surrogate U+{ord(bad):04X} at position {exc.start}: strings must be valid Unicode") from None
    return value


def escape_unencodable(value: str) -> str:
    """``value`` with anything UTF-8 cannot encode written as a backslash escape
    (for reasons and ids quoted in rejections: they must be storable whatever came in)."""
    if value.isascii():
        return value
    return value.encode("utf-8", "backslashreplace").decode("utf-8")


def _check_strings(value: Any, where: str) -> None:
    if isinstance(value, str):
        try:
            check_encodable(value)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_strings(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, where)
            _check_strings(item, f"{where}.{key}")


class Model(BaseModel):
    """Base of every event model (payloads, their nested models, the envelope): frozen,
    no extra fields, finite floats, and no string that cannot be encoded.

    JSON input cannot carry a lone surrogate (the JSON parser refuses ``\\ud800``), but
    Python input can: such a model would validate and then fail to serialize (to the
    bus, the log, a file). So models built from Python values are checked here."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    @model_validator(mode="after")
    def _strings_are_encodable(self, info: ValidationInfo) -> Self:
        if info.mode == "python":
            for name, value in self.__dict__.items():
                if not isinstance(value, BaseModel):
                    _check_strings(value, name)
        return self


_ID_KEY: list[bytes] = []  # this process's key for derived ids (set_id_key)


def set_id_key(secret: str | bytes | None) -> None:
    """Key this process's derived ids with ``secret`` (services use their NATS password:
    stable across restarts, known to no other identity). None: unkeyed (tools, tests)."""
    _ID_KEY.clear()
    if secret:
        raw = secret.encode() if isinstance(secret, str) else secret
        _ID_KEY.append(hmac.new(raw, b"aar derived event ids", hashlib.sha256).digest())


def derived_id(prefix: str, *parts: object) -> str:
    """A stable event id derived from what caused the event: publishing it again (a
    redelivered job, a restarted service) gives the same id, which the recorder stores
    once. Keyed (``set_id_key``), so that no other identity can predict it and claim it
    first."""
    data = "/".join(map(str, parts)).encode()
    digest = hmac.new(_ID_KEY[0], data, hashlib.sha256) if _ID_KEY else hashlib.sha256(data)
    return prefix + digest.hexdigest()[:40]


def new_id() -> str:
    """A sortable unique id (ULID, 26 chars, millisecond time prefix)."""
    return str(ULID())


def new_session_id() -> str:
    return f"s-{ULID()}"


class Payload(Model):
    """Base of every event payload. Subclasses are registered with
    :func:`schemas.registry.event` which sets ``event_type`` and ``schema_version``.

    ``publisher_field``: the payload field that names who did it (an agent's
    ``agent_id``, a trainer's ``trainer_id``). It must equal the verified identity of
    the publisher (see :func:`schemas.envelope.decode`), so no one can act in another's
    name."""

    event_type: ClassVar[EventType]
    schema_version: ClassVar[int] = 1
    publisher_field: ClassVar[str | None] = None
