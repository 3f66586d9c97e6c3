"""The forum service: rebuilds its read model from the log, keeps it current,
answers queries on ``aarq.forum.<name>`` and publishes ``forum.moderated``.

Start-up, so that no event is missed and none counts twice:
1. subscribe (core NATS) to ``aar.*.forum.>`` and buffer what arrives;
2. scan the ``AAR`` stream for those subjects from sequence 1 (rebuild.py);
3. apply the buffer (events already applied are ignored by id), go live;
4. apply the moderation rule to every post (model.py), then answer queries.

Core NATS delivers nothing while the connection is down, so after a reconnect,
and every ``resync_interval`` seconds anyway, the stream is scanned again from
the last sequence read: the read model never depends on having been connected.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from typing import Any

import nats.errors
import structlog
from nats.aio.msg import Msg

from bus import Bus
from bus.client import PUBLISHER_HEADER, BusError, decode_published
from bus.query import BadRequest, Endpoint
from schemas import Event, EventType, Rejection
from schemas.forum import ForumModerated

from .model import ForumModel
from .queries import (
    LIST,
    SEARCH,
    STATS,
    THREAD,
    TOP,
    ListRequest,
    Posts,
    SearchRequest,
    Stats,
    StatsRequest,
    Thread,
    ThreadRequest,
    TopRequest,
)
from .rebuild import FORUM_SUBJECTS, scan, stream_allows_direct

_RETRYABLE = (nats.errors.Error, asyncio.TimeoutError, BusError)


def moderation_event_id(session_id: str, post_id: str) -> str:
    """Deterministic, so a retried or repeated decision is stored once."""
    return "mod-" + hashlib.sha256(f"{session_id}/{post_id}/hide".encode()).hexdigest()[:40]


class ForumService:
    def __init__(self, bus: Bus, *, source: str = "forum", resync_interval: float = 30.0) -> None:
        self.bus = bus
        self.source = source
        self.resync_interval = resync_interval
        self.model = ForumModel()
        self.live = False
        self.last_seq = 0  # the last stream sequence read by a scan
        self.skipped = 0
        self._buffer: list[tuple[str, bytes, str | None]] = []
        self._moderating: set[tuple[str, str]] = set()
        self.log = structlog.get_logger("forum").bind(service=source)

    # -- life cycle -------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        sub = await self.bus.nc.subscribe(FORUM_SUBJECTS, cb=self._on_msg)
        started = time.monotonic()
        while not stop.is_set():
            if await self._catch_up():
                break
            await asyncio.sleep(0.5)
        if stop.is_set():  # stopped before the log could be read
            await sub.unsubscribe()
            return
        buffered, self._buffer = self._buffer, []
        for subject, data, publisher in buffered:
            self._apply(subject, data, publisher)
        self.live = True
        self.log.info(
            "forum_rebuilt",
            events=self.model.applied,
            last_seq=self.last_seq,
            buffered=len(buffered),
            skipped=self.skipped,
            seconds=round(time.monotonic() - started, 3),
        )
        await self._moderate()
        serving = await self.bus.serve("forum", self.endpoints())
        self.log.info("forum_ready", sessions=len(self.model.sessions))
        reconnects = self.bus.nc.stats["reconnects"]
        next_resync = time.monotonic() + self.resync_interval
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            if stop.is_set():
                break
            if self.bus.nc.stats["reconnects"] != reconnects or time.monotonic() >= next_resync:
                reconnects = self.bus.nc.stats["reconnects"]
                next_resync = time.monotonic() + self.resync_interval
                if await self._catch_up():
                    await self._moderate()
        for s in (serving, sub):
            with contextlib.suppress(Exception):
                await s.unsubscribe()

    async def _catch_up(self) -> bool:
        """Apply the stream's forum events after ``last_seq``; False when the server
        could not be asked (the caller tries again later)."""
        try:
            direct = await stream_allows_direct(self.bus)
            if direct is None:
                self.log.warning("forum_no_stream", note="nothing to rebuild from yet")
                return True
            async for msg in scan(self.bus, self.last_seq + 1, direct=direct):
                self._apply(msg.subject, msg.data, msg.publisher)
                self.last_seq = msg.seq
            return True
        except _RETRYABLE as exc:
            self.log.warning("forum_scan_failed", error=f"{type(exc).__name__}: {exc}", last_seq=self.last_seq)
            return False

    # -- events -----------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        publisher = (msg.headers or {}).get(PUBLISHER_HEADER)
        if not self.live:
            self._buffer.append((msg.subject, msg.data, publisher))
            return
        event = self._apply(msg.subject, msg.data, publisher)
        if event is not None and event.type is EventType.FORUM_POSTED:
            await self._moderate(event.session_id, event.payload.post_id)

    def _apply(self, subject: str, data: bytes, publisher: str | None = None) -> Event | None:
        """Decode and apply; the event when it was new, else None. Invalid messages, and
        events claiming another identity than their publisher's, are skipped with a log
        line (the recorder records them as rejected)."""
        decoded = decode_published(data, subject, publisher)
        if isinstance(decoded, Rejection):
            self.skipped += 1
            self.log.warning("forum_event_skipped", subject=subject, reason=decoded.reason, event_id=decoded.event_id)
            return None
        return decoded if self.model.apply(decoded) else None

    async def _moderate(self, session_id: str | None = None, post_id: str | None = None) -> None:
        for sid, pid, reason in self.model.due_moderation(session_id, post_id):
            if (sid, pid) in self._moderating:
                continue
            self._moderating.add((sid, pid))
            try:
                post = self.model.sessions[sid].posts[pid]
                event = Event.create(
                    ForumModerated(post_id=pid, action="hide", reason=reason),
                    session_id=sid,
                    source=self.source,
                    causation=post.event_id,
                    id=moderation_event_id(sid, pid),
                )
                await self.bus.publish(event)
                self.model.apply(event)  # our own event also comes back; it is ignored by id
                self.log.info("post_moderated", session_id=sid, post_id=pid, action="hide", reason=reason)
            except _RETRYABLE as exc:  # the next catch-up tries again
                self.log.error("moderation_failed", session_id=sid, post_id=pid, error=f"{type(exc).__name__}: {exc}")
            finally:
                self._moderating.discard((sid, pid))

    # -- queries ----------------------------------------------------------------

    def endpoints(self) -> list[Endpoint[Any, Any]]:
        return [LIST.answer(self._list), SEARCH.answer(self._search), TOP.answer(self._top),
                THREAD.answer(self._thread), STATS.answer(self._stats)]

    async def _list(self, req: ListRequest, asker: str = "") -> Posts:
        return Posts(posts=self.model.list_posts(req.session_id, req.limit, req.tag, req.idea_id))

    async def _search(self, req: SearchRequest, asker: str = "") -> Posts:
        try:
            return Posts(posts=self.model.search(req.session_id, req.query, req.limit))
        except ValueError as exc:
            raise BadRequest(f"bad 'search' request: {exc}") from None

    async def _top(self, req: TopRequest, asker: str = "") -> Posts:
        return Posts(posts=self.model.top(req.session_id, req.limit))

    async def _thread(self, req: ThreadRequest, asker: str = "") -> Thread:
        return Thread.model_validate(self.model.thread(req.post_id, req.session_id))

    async def _stats(self, req: StatsRequest, asker: str = "") -> Stats:
        return Stats.model_validate(self.model.stats(req.session_id))


async def main() -> None:
    from services.runtime import service, service_id

    resync = float(os.environ.get("AAR_FORUM_RESYNC_S", "30"))
    async with service("forum") as (bus, stop, _log):
        await ForumService(bus, source=service_id("forum"), resync_interval=resync).run(stop)
