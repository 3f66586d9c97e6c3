"""What every service process shares: logging, the bus connection, and a
stop event set by SIGTERM/SIGINT so the service finishes its batch and exits."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import AsyncIterator

import structlog

from bus import Bus, BusSettings
from core.logs import configure
from schemas.base import set_id_key


def service_id(kind: str) -> str:
    """The ``source`` of what this process publishes: its NATS identity, which the
    gateway and every consumer check it against (else its service id, or kind-pid)."""
    return os.environ.get("AAR_NATS_USER") or os.environ.get("AAR_SERVICE_ID") or f"{kind}-{os.getpid()}"


# Told to stop, a process exits within this many seconds, whatever its clean-up waits on
# (a thread still in a job, a sandbox, a bus that is gone): after a supervisor's death the
# kernel's SIGTERM is the only signal it gets, and nobody follows it with a SIGKILL.
STOP_GRACE_S = 30.0


def exit_after(seconds: float, code: int = 1) -> None:
    """Arm a hard exit (``os._exit``) in ``seconds``: a daemon timer, so that a clean exit
    before it is not held up by it."""
    timer = threading.Timer(seconds, os._exit, args=(code,))
    timer.daemon = True
    timer.start()


def install_stop_handlers(stop: asyncio.Event, grace_s: float = STOP_GRACE_S) -> None:
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if not stop.is_set():
            exit_after(grace_s, 3)
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal)


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
        exit_after(STOP_GRACE_S)  # the interpreter's own teardown (threads, executors) must not hang it
        await bus.close()
        log.info("service_stopped")
