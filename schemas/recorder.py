"""recorder.*: the event log's own health and what it could not accept."""

from __future__ import annotations

from pydantic import Field

from .base import Count, EventType, IdStr, NameStr, NonNegative, Payload, TextStr
from .registry import event


@event(EventType.RECORDER_REJECTED)
class RecorderRejected(Payload):
    """Published after an invalid message was stored in ``rejected_events``."""

    reason: TextStr
    subject: NameStr | None = None
    stream_seq: Count
    raw_size: Count


@event(EventType.RECORDER_DEAD_LETTERED)
class RecorderDeadLettered(Payload):
    """A message exhausted ``max_deliver`` on a consumer; it was never acknowledged."""

    consumer: IdStr
    stream_seq: Count
    deliveries: Count
    original_event_id: IdStr | None = None
    original_type: IdStr | None = None
    original_subject: NameStr | None = None


@event(EventType.RECORDER_HEALTH)
class RecorderHealth(Payload):
    events: Count
    rejected: Count
    batches: Count
    last_batch_ms: NonNegative = 0.0
    lag: int = Field(default=0, ge=0)
