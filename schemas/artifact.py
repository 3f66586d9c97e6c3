"""artifact.*: content-addressed blobs (code, predictions, logs)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from .base import Count, EventType, IdStr, NameStr, Payload, Sha256
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
    name: NameStr = ""
    media_type: NameStr = "application/octet-stream"
    owner: IdStr | None = Field(
        default=None, description="who stored it: the verified identity of the uploader")
