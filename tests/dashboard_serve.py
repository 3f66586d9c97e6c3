"""The dashboard served from a test (or a benchmark) in a thread of its own: its app over
a log file opened read-only, live from a real nats-server when one is given (subscribed
as the ``dashboard`` role, as the service is), on a free loopback port."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from core.paths import AarHome


def chromium() -> str | None:
    """Debian's chromium (what the browser tests and bench/dashboard.py drive), or None."""
    for path in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "", shutil.which("chromium-browser") or ""):
        if path and os.access(path, os.X_OK):
            return path
    return None


@contextlib.contextmanager
def served(home: AarHome, *, nats: Any = None, host: str = "127.0.0.1", token: str | None = None,
           reference: tuple[float, str] | None = None) -> Iterator[str]:
    """Serve ``home``'s log; yields the base URL. ``nats``: a started ``bus.NatsServer``."""
    from bus import Bus, BusSettings, Role
    from services.dashboard.access import Access
    from services.dashboard.app import create_app
    from services.dashboard.data import Reader
    from services.dashboard.live import Hub, feed
    from services.dashboard.server import Bind, bind_socket, serve, url_of
    from services.dashboard.service import blob_reader
    from services.recorder.audit import FileAudit

    audit = FileAudit.open(Path(home.events_db))
    ready = threading.Event()
    box: dict[str, Any] = {}

    async def main() -> None:
        stop = asyncio.Event()
        box["stop"], box["loop"] = stop, asyncio.get_running_loop()
        hub = Hub()
        bus = None
        try:
            if nats is not None:
                bus = await Bus.connect(BusSettings.for_role(nats.url, nats.credentials, Role.DASHBOARD),
                                        name="dashboard-test")
                await feed(hub, bus)
            sock = bind_socket(Bind(host, 0, True))
            box["url"] = url_of(sock, host)
            app = create_app(Reader(audit, blob_reader(home.artifacts)), hub, Access(host, token), reference=reference)
            ready.set()
            await serve(app, sock, stop)
        except BaseException as exc:
            box["error"] = exc
            ready.set()
            raise
        finally:
            if bus is not None:
                await bus.close()

    thread = threading.Thread(target=lambda: asyncio.run(main()), name="dashboard", daemon=True)
    thread.start()
    if not ready.wait(30) or "error" in box:
        raise RuntimeError(f"the dashboard did not start: {box.get('error')!r}")
    try:
        yield str(box["url"])
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(15)
        audit.close()
