"""``aar up --resume SESSION``: which session, with which configuration, from the log.

Read before the stack starts, from the log file opened read-only: the session's own
configuration (``session.started``), and whether it can go on at all (a session that
ended because its budget was spent, or because its agents were done, cannot).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

from core.paths import AarHome
from schemas.session import EndReason
from services.orchestrator.config import SessionConfig

# How a session may have ended and still be resumed: stopped by hand (Ctrl-C, SIGTERM) or
# by an error. A session killed outright (SIGKILL, a power cut) never said how it ended.
RESUMABLE = frozenset({EndReason.INTERRUPTED, EndReason.ERROR})


class ResumeError(Exception):
    """The session cannot be resumed; the message says why."""


@dataclass(frozen=True, slots=True)
class ToResume:
    config: SessionConfig
    previous_end: EndReason | None  # None: the last run was killed before it could end
    dev_scores: int
    resumes: int


def find(home: AarHome, ref: str) -> ToResume:
    """The session ``ref`` (its id, or its name when only one session has it) of ``home``'s log."""
    from services.recorder.audit import FileAudit

    if not home.events_db.exists():
        raise ResumeError(f"no event log at {home.events_db}: nothing to resume")
    with contextlib.closing(FileAudit.open(home.events_db)) as audit:
        rows = audit.query(
            "SELECT session_id, payload->'config' FROM events WHERE type = 'session.started' "
            "AND (session_id = ? OR payload->>'name' = ?) ORDER BY time, id", [ref, ref]).rows
        exact = [r for r in rows if r[0] == ref]
        rows = exact or rows
        if not rows:
            known = audit.query("SELECT session_id, name FROM sessions ORDER BY first_event DESC LIMIT 5").rows
            listed = ", ".join(f"{s} ({n})" for s, n in known) or "none"
            raise ResumeError(f"no session {ref!r} in {home.events_db}; the newest: {listed} (see aar sessions)")
        if len({r[0] for r in rows}) > 1:
            raise ResumeError(f"{len(rows)} sessions are named {ref!r}: give its id "
                              f"({', '.join(str(r[0]) for r in rows)})")
        session_id, raw = str(rows[0][0]), rows[0][1]
        marks = audit.query(
            "SELECT type, payload->>'reason' FROM events WHERE session_id = ? AND type IN "
            "('session.started', 'session.resumed', 'session.ended') ORDER BY time, id", [session_id]).rows
        counts = audit.query(
            "SELECT count(*) FILTER (WHERE type = 'score.published' AND payload->>'split' = 'dev' "
            "AND coalesce(payload->>'purpose', 'score') = 'score'), count(*) FILTER (WHERE type = 'session.resumed') "
            "FROM events WHERE session_id = ?", [session_id]).rows[0]
    end = EndReason(marks[-1][1]) if marks and marks[-1][0] == "session.ended" else None
    if end is not None and end not in RESUMABLE:
        raise ResumeError(f"session {session_id} ended ({end.value}): its budget is spent or its agents were done, "
                          "so there is nothing to resume; start a new one with aar up")
    try:
        config = SessionConfig.model_validate(json.loads(raw) if isinstance(raw, str) else raw)
    except ValueError as exc:
        raise ResumeError(f"session {session_id}'s recorded configuration is not one this version can run: {exc}") \
            from None
    if config.session_id != session_id:
        raise ResumeError(f"session {session_id}'s recorded configuration names another session "
                          f"({config.session_id}): refusing to resume it")
    return ToResume(config, end, int(counts[0]), int(counts[1]))
