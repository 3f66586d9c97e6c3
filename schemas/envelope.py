"""The CloudEvents-shaped envelope every AAR event travels in (DESIGN.md section 4),
its JSON encoding, and a decoder that never raises.

Each registered payload gets a concrete envelope class (``type`` is a literal,
``payload`` its model); all of them form one discriminated union, so decoding
is a single pass of pydantic-core over the bytes. Older ``schema_version``s
take a slower path through the registered upcasters.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Annotated, Any, Generic, Literal, TypeVar, Union

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    create_model,
    field_validator,
)

from .base import EventId, EventType, Ident, IdStr, Model, Payload, SessionId, escape_unencodable, new_id
from .registry import REGISTRY, UnknownEventType, UnsupportedVersion, upcast

SUBJECT_PREFIX = "aar"


def subject_for(session_id: str, event_type: EventType | str) -> str:
    return f"{SUBJECT_PREFIX}.{session_id}.{EventType(event_type).value}"


P = TypeVar("P", bound=Payload)


class Event(Model, Generic[P]):
    """An event: envelope fields plus the payload model registered for ``type``.

    ``Event[SessionStarted]`` is an event whose payload is a SessionStarted (what
    :meth:`create` returns for one); ``Event[Any]``, one of any type. Instances are
    always of the concrete per-type subclass; build them with :meth:`create` (from a
    payload) or :meth:`parse` / :func:`decode` (from data)."""

    id: EventId
    type: EventType
    schema_version: int = Field(ge=1)
    session_id: SessionId
    source: Ident
    time: Annotated[AwareDatetime, AfterValidator(lambda t: t.astimezone(UTC))]
    correlation_id: IdStr | None = None
    causation_id: IdStr | None = None
    payload: P

    @classmethod
    def create(
        cls,
        payload: P,
        *,
        session_id: str,
        source: str,
        correlation_id: str | None = None,
        causation: Event[Any] | str | None = None,
        time: datetime | None = None,
        id: str | None = None,
    ) -> Event[P]:
        """Wrap ``payload`` in an envelope. ``causation`` is the event that caused
        this one (its id becomes ``causation_id``; its correlation id is inherited
        unless one is given)."""
        if isinstance(causation, Event):
            causation_id: str | None = causation.id
            correlation_id = correlation_id or causation.correlation_id
        else:
            causation_id = causation
        fields: dict[str, Any] = dict(
            id=new_id() if id is None else id,
            time=datetime.now(UTC) if time is None else time,
            type=payload.event_type,
            schema_version=payload.schema_version,
            session_id=session_id,
            source=source,
            correlation_id=correlation_id,
            causation_id=causation_id,
            payload=payload,
        )
        return EVENT_CLASSES[payload.event_type](**fields)

    @classmethod
    def parse(cls, data: dict[str, Any]) -> Event[Any]:
        """Validate a dict (upcasting an older payload version)."""
        try:
            return _ANY_EVENT.validate_python(data)
        except ValidationError:
            lifted = _upcast_dict(data)
            if lifted is None:
                raise
            return _ANY_EVENT.validate_python(lifted)

    @property
    def subject(self) -> str:
        return subject_for(self.session_id, self.type)

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


def _envelope_class(event_type: EventType, model: type[Payload]) -> type[Event[Any]]:
    # Field types built at run time (a Literal of this type and version): not type
    # expressions mypy can check, so they travel as plain values.
    fields: dict[str, Any] = dict(
        type=(Literal[event_type], ...),
        schema_version=(Literal[model.schema_version], model.schema_version),
        payload=(model, ...),
    )
    return create_model(
        f"{model.__name__}Event",
        __base__=Event[model],  # type: ignore[valid-type]  # parametrized at run time by each registered payload class
        __module__=__name__,
        **fields,
    )


EVENT_CLASSES: dict[EventType, type[Event[Any]]] = {t: _envelope_class(t, m) for t, m in REGISTRY.items()}
_ANY_EVENT: TypeAdapter[Event[Any]] = TypeAdapter(
    Annotated[Union[tuple(EVENT_CLASSES.values())], Field(discriminator="type")]  # type: ignore[arg-type]  # a union built at run time from the registry
)


def _known_type(value: Any) -> bool:
    return isinstance(value, str) and value in EventType._value2member_map_


def _upcast_dict(data: Any) -> dict[str, Any] | None:
    """An older-version event lifted to the current payload shape, or None."""
    if not isinstance(data, dict) or not _known_type(data.get("type")):
        return None
    event_type = EventType(data["type"])
    version = data.get("schema_version")
    current = REGISTRY[event_type].schema_version
    if not isinstance(version, int) or isinstance(version, bool) or version == current:
        return None
    if not isinstance(data.get("payload"), dict):
        return None
    return {**data, "schema_version": current, "payload": upcast(event_type, version, dict(data["payload"]))}


class Rejection(BaseModel):
    """Why some bytes could not become an :class:`Event`. Recorded, never dropped.
    Its strings quote untrusted input, so they are made storable on the way in:
    anything UTF-8 cannot encode (lone surrogates) is backslash-escaped, and each is
    cut to its maximum (reason 2,000 characters, the others 256)."""

    model_config = ConfigDict(frozen=True)

    reason: str
    raw: bytes
    subject: str | None = None
    event_id: str | None = None
    event_type: str | None = None
    session_id: str | None = None

    @field_validator("reason", "subject", "event_id", "event_type", "session_id", mode="after")
    @classmethod
    def _storable(cls, value: str | None, info: Any) -> str | None:
        if value is None:
            return None
        return escape_unencodable(value)[: 2000 if info.field_name == "reason" else 256]


def _field(obj: Any, name: str) -> str | None:
    value = obj.get(name) if isinstance(obj, dict) else None
    return value[:256] if isinstance(value, str) else None


def _reason(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<event>'}: {err['msg']}" for err in exc.errors()[:20]
    )


def decode(raw: bytes | bytearray | memoryview, subject: str | None = None, publisher: str | None = None) -> Event[Any] | Rejection:
    """Bytes -> Event, or a Rejection with the reason. Never raises.

    ``subject``: the subject it arrived on; the event must belong there.
    ``publisher``: the verified identity of whoever published it (the gateway names it
    in every message it forwards, see :mod:`bus.gateway`); the event's ``source``, and
    the payload field that names who acted (``Payload.publisher_field``), must be that
    identity. None: a trusted publisher (the platform's own admin or recorder), or the
    log, which only ever holds what passed these checks."""
    raw = bytes(raw)
    try:
        event = _ANY_EVENT.validate_json(raw)
    except ValidationError as exc:
        first_error = exc
        event = None
    except Exception as exc:  # noqa: BLE001 - the decoder must never raise
        return Rejection(reason=f"undecodable: {type(exc).__name__}: {exc}"[:2000], raw=raw, subject=subject)
    if event is None:
        try:
            data = json.loads(raw)
        except (UnicodeDecodeError, ValueError, RecursionError) as exc:
            return Rejection(reason=f"not JSON: {exc}"[:2000], raw=raw, subject=subject)
        ids = dict(event_id=_field(data, "id"), event_type=_field(data, "type"), session_id=_field(data, "session_id"))
        if not isinstance(data, dict):
            return Rejection(reason="not a JSON object", raw=raw, subject=subject, **ids)
        if not _known_type(data.get("type")):
            return Rejection(reason=f"unknown event type {data.get('type')!r}"[:2000], raw=raw, subject=subject, **ids)
        try:
            lifted = _upcast_dict(data)
            if lifted is None:
                return Rejection(reason=f"invalid event: {_reason(first_error)}"[:2000], raw=raw, subject=subject, **ids)
            event = _ANY_EVENT.validate_python(lifted)
        except ValidationError as exc:
            return Rejection(reason=f"invalid event: {_reason(exc)}"[:2000], raw=raw, subject=subject, **ids)
        except (UnknownEventType, UnsupportedVersion) as exc:
            return Rejection(reason=f"invalid event: {exc}"[:2000], raw=raw, subject=subject, **ids)
        except Exception as exc:  # noqa: BLE001 - an upcaster bug is a rejection, not a crash
            return Rejection(reason=f"upcast failed: {type(exc).__name__}: {exc}"[:2000], raw=raw, subject=subject, **ids)
    if subject is not None and subject != event.subject:
        return Rejection(
            reason=f"subject {subject!r} does not match the event (expected {event.subject!r})",
            raw=raw,
            subject=subject,
            event_id=event.id,
            event_type=event.type.value,
            session_id=event.session_id,
        )
    if publisher is not None and (claim := impersonation(event, publisher)) is not None:
        return Rejection(
            reason=claim, raw=raw, subject=subject, event_id=event.id, event_type=event.type.value,
            session_id=event.session_id,
        )
    return event


def impersonation(event: Event[Any], publisher: str) -> str | None:
    """Why ``event`` does not belong to ``publisher`` (it claims another identity), or None."""
    if event.source != publisher:
        return f"source {event.source!r} is not the publisher's identity {publisher!r}"
    name = event.payload.publisher_field
    if name is not None and (claimed := getattr(event.payload, name)) != publisher:
        return f"payload.{name} {claimed!r} is not the publisher's identity {publisher!r}"
    return None
