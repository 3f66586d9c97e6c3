"""Audit SQL from the command line: through the recorder while a stack runs, on the
log file read-only otherwise (both guarded the same way, services/recorder/guard.py,
both ``core.audit.AuditQueries``)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

from bus.settings import admin_settings_from_home
from core.audit import AuditQueries, AuditResult, Param
from core.paths import AarHome


def open_audit(home: AarHome | None = None, *, timeout_s: float | None = None) -> AuditQueries:
    """Audit queries over the log of ``home`` (default: ``AAR_HOME``): the running
    recorder (``RecorderAudit``, as admin) while a stack runs there, else the file
    read-only (``FileAudit``; FileNotFoundError when there is no log). Close it after."""
    home = home or AarHome.from_env()
    settings = admin_settings_from_home(home)
    if settings is not None:
        from services.recorder.remote import RecorderAudit

        return RecorderAudit(settings, timeout_s=timeout_s)
    from services.recorder.audit import FileAudit

    return FileAudit.open(home.events_db, timeout_s=timeout_s)


def run_audit(sql: str, params: Sequence[Param] = ()) -> AuditResult:
    """The result of one read-only query (``params`` bound) over the log of ``AAR_HOME``."""
    with contextlib.closing(open_audit()) as audit:
        return audit.query(sql, params)
