"""integrity.*: checks against reward hacking and sandbox escapes."""

from __future__ import annotations

from enum import StrEnum
from pydantic import Field

from .base import EventType, JsonObject, Payload
from .registry import event


class IntegrityCheck(StrEnum):
    TEACHER_ABLATION = "teacher_ablation"
    DEV_TEST_GAP = "dev_test_gap"
    RATE_LIMIT = "rate_limit"
    SANDBOX_VIOLATION = "sandbox_violation"
    UNSAFE_NO_SANDBOX = "unsafe_no_sandbox"
    TAMPERED_ARTIFACT = "tampered_artifact"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    DISQUALIFY = "disqualify"


@event(EventType.INTEGRITY_FLAGGED)
class IntegrityFlagged(Payload):
    check: IntegrityCheck
    severity: Severity = Severity.WARNING
    detail: str
    idea_id: str | None = None
    experiment_id: str | None = None
    agent_id: str | None = None
    evidence: JsonObject = Field(default_factory=dict)
