"""``aar replay SESSION --speed X``: publish a recorded session again, live.

Every event goes out under a new session id with a new event id, its original
``causation_id`` replaced by the original event's id (so each copy points back to
what it copies) and its ``correlation_id`` kept; ``time`` is the moment of the
re-publish, and ``source`` is ``replay/<original source>``. Payloads are sent as
recorded (the bytes the recorder stored), so consumers see the same content.

Pacing: the gaps between the original events divided by ``speed``; ``max``
publishes as fast as JetStream acks (pipelined ``publish_raw_many`` chunks).

Where to: the running stack's bus when one runs on ``AAR_HOME`` (its recorder
records the copy; note that live services react to it like to any session:
the scorer would schedule experiments for replayed ideas), else a private,
throw-away nats-server (temporary JetStream store, so no durable consumer of a
later ``aar up`` ever sees the copy) with a recorder process writing to
``AAR_HOME/events.duckdb``; both are stopped once every event is recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core.audit import AuditRequest
from core.paths import AarHome
from schemas.base import new_id, new_session_id
from services.recorder.queries import AUDIT

from .log import Row

SUBJECT_PREFIX = "aar"


@dataclass(slots=True)
class Republished:
    session_id: str
    events: int
    publish_s: float
    recorded_s: float | None  # until the recorder counted them all (None: not waited for)
    target: str  # "running stack" | "embedded"

    @property
    def rate(self) -> float:
        return self.events / self.publish_s if self.publish_s > 0 else float("inf")


def _iso(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def message(row: Row, session_id: str, now: datetime | None = None) -> tuple[str, bytes, str]:
    """(subject, bytes, msg id) of the copy of ``row`` in ``session_id``."""
    event_id = new_id()
    head = json.dumps({
        "id": event_id, "type": row.type, "schema_version": row.schema_version, "session_id": session_id,
        "source": f"replay/{row.source}"[:128], "time": _iso(now or datetime.now(UTC)),
        "correlation_id": row.correlation_id, "causation_id": row.id,
    }, separators=(",", ":"))
    data = head[:-1].encode() + b',"payload":' + row.payload.encode() + b"}"
    return f"{SUBJECT_PREFIX}.{session_id}.{row.type}", data, event_id


def parse_speed(text: str) -> float | None:
    """``max`` -> None (no pacing); otherwise a positive factor."""
    if text.strip().lower() in ("max", "inf", "0"):
        return None
    value = float(text)
    if value <= 0:
        raise ValueError("--speed must be positive or 'max'")
    return value


async def publish_rows(bus: Any, rows: Sequence[Row], session_id: str, speed: float | None, *,
                       chunk: int = 1000, concurrency: int = 4,
                       progress: Callable[[int], None] | None = None) -> float:
    """Publish the copies; returns the seconds from the first publish to the last ack."""
    t_start = time.perf_counter()
    if speed is None:
        starts = iter(range(0, len(rows), chunk))
        done = 0

        async def worker() -> None:
            nonlocal done
            for start in starts:
                now = datetime.now(UTC)
                part = [message(r, session_id, now) for r in rows[start:start + chunk]]
                await bus.publish_raw_many(part, timeout=120.0)
                done += len(part)
                if progress is not None:
                    progress(done)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t_start
    t0 = rows[0].time_us if rows else 0
    pending: list[asyncio.Task[Any]] = []
    i = 0
    while i < len(rows):
        due_at = (rows[i].time_us - t0) / 1e6 / speed
        wait = due_at - (time.perf_counter() - t_start)
        if wait > 0:
            await asyncio.sleep(wait)
        elapsed = time.perf_counter() - t_start
        j = i
        while j < len(rows) and (rows[j].time_us - t0) / 1e6 / speed <= elapsed and j - i < chunk:
            j += 1
        j = max(j, i + 1)
        now = datetime.now(UTC)
        part = [message(r, session_id, now) for r in rows[i:j]]
        pending.append(asyncio.ensure_future(bus.publish_raw_many(part, timeout=120.0)))
        pending = [p for p in pending if not p.done() or p.result() is None]
        i = j
        if progress is not None:
            progress(i)
    await asyncio.gather(*pending)
    return time.perf_counter() - t_start


async def wait_recorded(bus: Any, session_id: str, n: int, timeout: float = 300.0) -> float:
    t0 = time.perf_counter()
    request = AuditRequest(sql="SELECT count(*) FROM events WHERE session_id = ?", params=[session_id])
    while True:
        try:
            result = await bus.ask(AUDIT, request, timeout=10.0)
            if int(result.rows[0][0]) >= n:
                return time.perf_counter() - t0
        except Exception:  # noqa: BLE001 - the recorder may still be starting
            pass
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(f"the recorder did not record {n} events of {session_id} within {timeout:.0f}s")
        await asyncio.sleep(0.2)


def _start_dashboard(server: Any, home: AarHome, say: Callable[[str], None]) -> subprocess.Popen[bytes]:
    """The dashboard service on the throw-away server (as the ``dashboard`` role, on the
    default port or a free one); ``say`` gets its address once it listens."""
    from bus import BusSettings, Role
    from services.dashboard.server import read_url

    url_file = home.root / "dashboard" / "url"
    url_file.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AAR_") or k.startswith("AAR_DASHBOARD_")}
    env.update(BusSettings.for_role(server.url, server.credentials, Role.DASHBOARD).to_env())
    env.update({"AAR_HOME": str(home.root), "AAR_LOG_FORMAT": "json"})
    with open(home.logs / "replay-dashboard.log", "ab") as log:
        proc = subprocess.Popen([sys.executable, "-m", "services.dashboard"], env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 30
    while (url := read_url(home)) is None and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    say(f"dashboard: {url}" if url else f"the dashboard did not start (see {home.logs / 'replay-dashboard.log'})")
    return proc


def _stop(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def republish(rows: Sequence[Row], speed: float | None, *, home: AarHome | None = None,
                    session_id: str | None = None, wait: bool = True,
                    progress: Callable[[int], None] | None = None,
                    dashboard: Callable[[str], None] | None = None) -> Republished:
    """Publish ``rows`` again under ``session_id`` (new when None); see the module docstring.
    ``dashboard``: on the throw-away server, start a dashboard too (its pages animate the
    copy) and tell this callback its address (a running stack has its own dashboard)."""
    from bus import Bus, BusSettings, NatsServer, Role
    from bus.settings import admin_settings_from_home

    home = home or AarHome.from_env()
    new_sid = session_id or new_session_id()
    settings = admin_settings_from_home(home)
    if settings is not None:
        bus = await Bus.connect(settings, name="aar-replay")
        try:
            secs = await publish_rows(bus, rows, new_sid, speed, progress=progress)
            recorded = await wait_recorded(bus, new_sid, len(rows)) if wait else None
        finally:
            await bus.close()
        return Republished(new_sid, len(rows), secs, recorded, "running stack")
    home.ensure()
    store = Path(tempfile.mkdtemp(prefix="aar-replay-nats-"))
    server = NatsServer(store)
    recorder: subprocess.Popen[bytes] | None = None
    board: subprocess.Popen[bytes] | None = None
    try:
        server.start()
        bus = await Bus.connect(BusSettings.for_role(server.url, server.credentials, Role.ADMIN), name="aar-replay")
        try:
            await bus.ensure_stream()
            env = {k: v for k, v in os.environ.items() if not k.startswith("AAR_")}
            env.update(BusSettings.for_role(server.url, server.credentials, Role.RECORDER).to_env())
            env.update({"AAR_HOME": str(home.root), "AAR_LOG_FORMAT": "json"})
            with open(home.logs / "replay-recorder.log", "ab") as log:
                recorder = subprocess.Popen([sys.executable, "-m", "services.recorder"], env=env, stdout=log,
                                            stderr=subprocess.STDOUT)
            if dashboard is not None:
                await wait_recorded(bus, new_sid, 0)  # the recorder answers: the dashboard can read
                board = await asyncio.to_thread(_start_dashboard, server, home, dashboard)
            secs = await publish_rows(bus, rows, new_sid, speed, progress=progress)
            recorded = await wait_recorded(bus, new_sid, len(rows))
        finally:
            await bus.close()
    finally:
        _stop(board)
        _stop(recorder)
        server.stop()
        shutil.rmtree(store, ignore_errors=True)
    return Republished(new_sid, len(rows), secs, recorded, "embedded")
