"""integrity.*: checks against reward hacking and sandbox escapes."""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from .base import EventType, Ident, JsonObject, Payload, TextStr
from .registry import event


class IntegrityCheck(StrEnum):
    TEACHER_ABLATION = "teacher_ablation"
    DEV_TEST_GAP = "dev_test_gap"
    RATE_LIMIT = "rate_limit"
    SANDBOX_VIOLATION = "sandbox_violation"  # something the sandbox forbids (a denied syscall, a socket, ...)
    SANDBOX_LIMIT = "sandbox_limit"  # a limit of the whole sandbox: memory, processes, CPU, disk, wall clock
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
    detail: TextStr
    idea_id: Ident | None = None
    experiment_id: Ident | None = None
    agent_id: Ident | None = None
    evidence: JsonObject = Field(default_factory=dict)
