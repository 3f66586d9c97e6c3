"""artifact.*: content-addressed blobs (code, predictions, logs)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from .base import Count, EventType, Payload, Sha256
from .registry import event


class ArtifactKind(StrEnum):
    CODE = "code"
    PREDICTIONS = "predictions"
    LOG = "log"
    NOTES = "notes"
    OTHER = "other"


@event(EventType.ARTIFACT_STORED)
class ArtifactStored(Payload):
    sha256: Sha256
    size: Count
    kind: ArtifactKind
    name: str = ""
    media_type: str = "application/octet-stream"
    owner: str | None = Field(default=None, description="agent or process that stored it")
