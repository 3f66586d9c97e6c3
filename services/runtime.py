"""What every service process shares: logging, the bus connection, and a
stop event set by SIGTERM/SIGINT so the service finishes its batch and exits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator

import structlog

from bus import Bus, BusSettings
from core.logs import configure
from schemas.base import set_id_key


def service_id(kind: str) -> str:
    """The ``source`` of what this process publishes: its NATS identity, which the
    gateway and every consumer check it against (else its service id, or kind-pid)."""
    return os.environ.get("AAR_NATS_USER") or os.environ.get("AAR_SERVICE_ID") or f"{kind}-{os.getpid()}"


def install_stop_handlers(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


@contextlib.asynccontextmanager
async def service(kind: str) -> AsyncIterator[tuple[Bus, asyncio.Event, structlog.stdlib.BoundLogger]]:
    """Connect to the bus as this process's role and yield (bus, stop, log)."""
    configure(json=os.environ.get("AAR_LOG_FORMAT", "json") == "json")
    sid = service_id(kind)
    log = structlog.get_logger(kind).bind(service=sid)
    stop = asyncio.Event()
    install_stop_handlers(stop)
    settings = BusSettings.from_env()
    set_id_key(settings.password)  # derived event ids nobody else can predict
    bus = await Bus.connect(settings, name=sid)
    log.info("service_started", pid=os.getpid())
    try:
        yield bus, stop, log
    finally:
        await bus.close()
        log.info("service_stopped")
