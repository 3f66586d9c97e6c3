"""Audit SQL from the command line: through the recorder while a stack runs, on the
log file read-only otherwise (both guarded the same way, services/recorder/guard.py)."""

from __future__ import annotations

import asyncio

from bus.settings import admin_settings_from_home
from core.paths import AarHome


def run_audit(sql: str) -> dict[str, object]:
    """The result of one read-only query over the log of ``AAR_HOME``."""
    from services.recorder.audit import open_read_only, run_query

    home = AarHome.from_env()
    settings = admin_settings_from_home(home)
    if settings is not None:
        from bus import Bus

        async def ask() -> dict[str, object]:
            bus = await Bus.connect(settings, name="aar-audit")
            try:
                return await bus.request("recorder", "audit", {"sql": sql}, timeout=60)  # type: ignore[no-any-return]
            finally:
                await bus.close()

        return asyncio.run(ask())
    con = open_read_only(home.events_db)
    try:
        return run_query(con, sql).model_dump()
    finally:
        con.close()
