"""artifact.*: content-addressed blobs (code, predictions, logs)."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from .base import MAX_ID, MAX_NAME, Count, EventType, Payload, Sha256, Text
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
    name: Text(MAX_NAME) = ""
    media_type: Text(MAX_NAME) = "application/octet-stream"
    owner: Text(MAX_ID) | None = Field(
        default=None, description="who stored it: the verified identity of the uploader")
