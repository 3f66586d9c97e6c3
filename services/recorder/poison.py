"""Rows for the inbox that can always be stored, whatever a message held.

No message may stop the recorder: not one whose strings UTF-8 cannot encode (a lone
surrogate such as ``"\\ud800"``, which Arrow and DuckDB refuse), nor one of wrong
types, nor anything else. So:

- an event becomes a row only once every value in it is known to be storable
  (:func:`event_row`); one that is not becomes a rejection with the reason
  (:func:`unstorable_row`), with the message's raw bytes;
- a rejection's strings quote untrusted input: whatever UTF-8 cannot encode is
  backslash-escaped (:func:`storable`), never a crash (:func:`rejection_row`);
- if even that row cannot be stored, :func:`minimal_row` (the key, an ASCII reason
  and the raw bytes) is what remains.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from schemas.base import escape_unencodable

MAX_REASON = 2000
MAX_FIELD = 256


def encodable(value: str) -> bool:
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def storable(value: Any, limit: int | None = None) -> str | None:
    """``value`` as text any store accepts: None stays None; what UTF-8 cannot encode is
    written as a backslash escape; cut to ``limit`` characters."""
    if value is None:
        return None
    text = escape_unencodable(value if isinstance(value, str) else _text(value))
    return text if limit is None else text[:limit]


def _text(value: Any) -> str:
    try:
        return str(value)
    except Exception:  # noqa: BLE001 - a __str__ that raises
        return f"<unprintable {type(value).__name__}>"


def raw_bytes(value: Any) -> bytes:
    """The raw bytes of a message, whatever was passed."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    if value is None:
        return b""
    return (value if isinstance(value, str) else _text(value)).encode("utf-8", "backslashreplace")


def seq_or_none(value: Any) -> int | None:
    """A stream sequence, or None when ``value`` is not a usable one."""
    if isinstance(value, int) and not isinstance(value, bool) and -(2**63) < value < 2**63:
        return value
    return None


class Unstorable(ValueError):
    """An event with a value the log cannot hold as it is."""


def _check_text(name: str, value: Any, *, optional: bool = True) -> str | None:
    if value is None and optional:
        return None
    if not isinstance(value, str):
        raise Unstorable(f"field {name!r} is a {type(value).__name__}, not a string")
    if not encodable(value):
        raise Unstorable(f"field {name!r} holds a string UTF-8 cannot encode (a lone surrogate)")
    return value


def event_row(rec: Any, now: dt.datetime) -> dict[str, Any]:
    """The inbox row of a ``Recorded`` event; :class:`Unstorable` (or any error) if it
    cannot be stored as is."""
    event = rec.event
    time = event.time
    if not isinstance(time, dt.datetime) or time.tzinfo is None:
        raise Unstorable("field 'time' is not a timezone-aware datetime")
    version = event.schema_version
    if not isinstance(version, int) or isinstance(version, bool) or not -(2**31) <= version < 2**31:
        raise Unstorable("field 'schema_version' is not a 32-bit integer")
    payload = event.payload.model_dump_json()
    return {
        "id": _check_text("id", event.id, optional=False),
        "type": _check_text("type", event.type.value, optional=False),
        "schema_version": version,
        "session_id": _check_text("session_id", event.session_id, optional=False),
        "source": _check_text("source", event.source, optional=False),
        "time": time,
        "correlation_id": _check_text("correlation_id", event.correlation_id),
        "causation_id": _check_text("causation_id", event.causation_id),
        "payload": _check_text("payload", payload, optional=False),
        "subject": _check_text("subject", event.subject),
        "stream_seq": seq_or_none(rec.stream_seq),
        "recorded_at": now,
    }


def body_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """What makes two copies of an event "the same body": every envelope field and the
    payload (as the log stores it); not where or when it was received."""
    return (row["id"], row["type"], row["schema_version"], row["session_id"], row["source"], row["time"],
            row["correlation_id"], row["causation_id"], row["payload"])


def _attr(obj: Any, name: str) -> Any:
    try:
        return getattr(obj, name, None)
    except Exception:  # noqa: BLE001 - a property that raises reads as absent
        return None


def rejection_row(rec: Any, now: dt.datetime) -> dict[str, Any]:
    """The inbox row of a ``RejectedRecord``; never raises."""
    rej = _attr(rec, "rejection")
    return {
        "stream_seq": seq_or_none(_attr(rec, "stream_seq")),
        "subject": storable(_attr(rej, "subject"), MAX_FIELD * 4),
        "reason": storable(_attr(rej, "reason") or "rejected (no reason given)", MAX_REASON),
        "raw": raw_bytes(_attr(rej, "raw")),
        "event_id": storable(_attr(rej, "event_id"), MAX_FIELD),
        "event_type": storable(_attr(rej, "event_type"), MAX_FIELD),
        "session_id": storable(_attr(rej, "session_id"), MAX_FIELD),
        "recorded_at": now,
    }


def event_raw(rec: Any) -> bytes:
    """The bytes an event came in as, or the best faithful rendering of it."""
    raw = _attr(rec, "raw")
    if raw is not None:
        return raw_bytes(raw)
    event = _attr(rec, "event")
    try:
        return event.model_dump_json().encode()
    except Exception:  # noqa: BLE001 - unserializable: try the next rendering
        pass
    try:
        return json.dumps(event.model_dump(mode="python"), default=repr, ensure_ascii=True).encode()
    except Exception:  # noqa: BLE001 - the last rendering: repr of what is there
        return raw_bytes(repr(event))


def unstorable_row(rec: Any, why: BaseException | str, now: dt.datetime) -> dict[str, Any]:
    """A ``Recorded`` event that cannot be stored as an event, as a rejection."""
    event = _attr(rec, "event")
    detail = why if isinstance(why, str) else f"{type(why).__name__}: {why}"
    event_type = _attr(_attr(event, "type"), "value") or _attr(event, "type")
    subject = None
    try:
        subject = event.subject
    except Exception:  # noqa: BLE001 - no subject then
        pass
    return {
        "stream_seq": seq_or_none(_attr(rec, "stream_seq")),
        "subject": storable(subject, MAX_FIELD * 4),
        "reason": storable(f"unstorable event: {detail}", MAX_REASON),
        "raw": event_raw(rec),
        "event_id": storable(_attr(event, "id"), MAX_FIELD),
        "event_type": storable(event_type, MAX_FIELD),
        "session_id": storable(_attr(event, "session_id"), MAX_FIELD),
        "recorded_at": now,
    }


def minimal_row(row: dict[str, Any], why: BaseException | str, now: dt.datetime) -> dict[str, Any]:
    """The least that can be kept of a rejection row that could not be stored: its
    key, an ASCII reason and its raw bytes."""
    detail = why if isinstance(why, str) else f"{type(why).__name__}: {why}"
    reason = f"unstorable message, kept raw: {detail}; first reason: {row.get('reason')!r}"
    return {
        "stream_seq": seq_or_none(row.get("stream_seq")),
        "subject": None,
        "reason": reason.encode("ascii", "backslashreplace").decode("ascii")[:MAX_REASON],
        "raw": raw_bytes(row.get("raw")),
        "event_id": None,
        "event_type": None,
        "session_id": None,
        "recorded_at": now,
    }
