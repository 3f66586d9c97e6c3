"""The recorder's queries: ``aarq.recorder.audit`` (read-only SQL over the log, with
bound parameters) and ``aarq.recorder.health``."""

from __future__ import annotations

from pydantic import BaseModel

from bus.query import Empty, Query
from core.audit import AuditRequest, AuditResult


class RecorderHealth(BaseModel):
    events: int  # in the log (the inboxes included)
    rejected: int
    batches: int
    last_batch_ms: float
    checkpoints: int
    wal_bytes: int
    moves: int  # inbox files folded into the log
    inbox: int  # rows waiting in the inboxes
    pid: int
    failed_commits: int
    audits_running: int
    audits_waiting: int
    audits_done: int
    chain_batch: int
    chain_head: str | None


# A malformed audit request is refused as AuditRefused / AuditParamError (its own parser),
# the errors the file path raises too: both implementations of core.audit.AuditQueries
# answer alike.
AUDIT = Query("recorder", "audit", AuditRequest, AuditResult, parser=AuditRequest.parse,
              max_request_bytes=2 * 1024 * 1024)  # 200,000 characters of SQL and 512 KiB of values
HEALTH = Query("recorder", "health", Empty, RecorderHealth)
