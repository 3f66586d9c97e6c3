"""gateway.*: what the gateway kept out of the stream, and why."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from .base import Count, EventType, Ident, IdStr, NameStr, NonNegative, Payload, Sha256, TextStr
from .registry import event


class RefusalKind(StrEnum):
    TOO_LARGE = "too_large"  # over schemas.base.MAX_EVENT_BYTES
    OVER_BUDGET = "over_budget"  # over the publisher's bytes-per-minute budget
    BAD_SUBJECT = "bad_subject"  # not aarin.<session>.<domain>.<event>.<identity>
    CONFLICT = "conflict"  # an event id the publisher used moments ago, with other bytes


@event(EventType.GATEWAY_REFUSED)
class GatewayRefused(Payload):
    """Messages the gateway did not store, counted per publisher and reason over a
    short window (the first one of a window is reported at once, the rest when the
    window closes), with the first one's subject, size and SHA-256. Their bytes are
    not stored: that is what the refusal protects. (Invalid events, and events that
    claim another identity, are not refused here: they go into the stream and the
    recorder stores them, bytes included, as rejected.)"""

    identity: Ident
    role: IdStr
    kind: RefusalKind
    count: int = Field(ge=1)
    bytes: Count
    first_subject: NameStr
    first_size: Count
    first_sha256: Sha256
    window_s: NonNegative = 0.0
    detail: TextStr = ""
