"""Live events for open pages: one core NATS subscription to every session's events
(``aar.*.>``, the dashboard role's only watch), fanned out to each connected page's
Server-Sent Events stream. Nothing polls: a page hears of an event when NATS delivers it.

A page that cannot keep up loses the oldest of its queued events, never the stream:
it is told how many it missed (``lagged``) and reloads what it shows from the log.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import orjson

QUEUE = 1_000  # events a page may fall behind by
PAYLOAD_CHARS = 600  # of each event's payload sent to pages
HEARTBEAT_S = 15.0


def summary(data: bytes) -> dict[str, Any] | None:
    """What a page gets of an event message (None: not an event envelope)."""
    try:
        env = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(env, dict) or not isinstance(env.get("type"), str) or not isinstance(env.get("session_id"), str):
        return None
    payload: dict[str, Any] = env["payload"] if isinstance(env.get("payload"), dict) else {}
    agent = payload.get("agent_id") if isinstance(payload.get("agent_id"), str) else None
    return {"id": str(env.get("id", "")), "type": env["type"], "session_id": env["session_id"],
            "source": str(env.get("source", "")), "time": str(env.get("time", "")), "agent_id": agent,
            "payload": orjson.dumps(payload).decode()[:PAYLOAD_CHARS]}


@dataclass(eq=False)  # hashed by identity: a set holds each one
class Watcher:
    session_id: str | None
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(QUEUE))
    lagged: int = 0
    closing: bool = False


class Hub:
    """Fan-out of event summaries to the watchers (each an open page's stream)."""

    def __init__(self) -> None:
        self.watchers: set[Watcher] = set()
        self.delivered = 0
        self.connected = False  # whether a NATS subscription feeds it
        self.closed = False

    def close(self) -> None:
        """End every open stream (the server is stopping: its pages reconnect later)."""
        self.closed = True
        for w in list(self.watchers):
            w.closing = True
            with contextlib.suppress(asyncio.QueueFull):
                w.queue.put_nowait({})

    def publish(self, event: dict[str, Any]) -> None:
        self.delivered += 1
        for w in list(self.watchers):
            if w.session_id is not None and w.session_id != event["session_id"]:
                continue
            if w.queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    w.queue.get_nowait()
                w.lagged += 1
            w.queue.put_nowait(event)

    @contextlib.contextmanager
    def watch(self, session_id: str | None) -> Any:
        w = Watcher(session_id)
        self.watchers.add(w)
        try:
            yield w
        finally:
            self.watchers.discard(w)

    async def stream(self, session_id: str | None, disconnected: Any) -> AsyncIterator[bytes]:
        """Server-Sent Events for one page: ``event`` messages, ``lagged`` notices and
        heartbeat comments; ends when ``disconnected()`` says the page has gone."""
        with self.watch(session_id) as w:
            yield b"retry: 1000\n: " + (b"live" if self.connected else b"no live feed: the log only") + b"\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(w.queue.get(), HEARTBEAT_S)
                except TimeoutError:
                    if await disconnected():
                        return
                    yield b": heartbeat\n\n"
                    continue
                if w.closing or self.closed:
                    return
                if w.lagged:
                    yield b"event: lagged\ndata: " + str(w.lagged).encode() + b"\n\n"
                    w.lagged = 0
                yield b"event: event\ndata: " + orjson.dumps(event) + b"\n\n"


async def feed(hub: Hub, bus: Any) -> Any:
    """Subscribe ``bus`` (the dashboard's identity, or admin) to every session's events
    and pass each one to ``hub``; returns the subscription."""
    async def on_message(msg: Any) -> None:
        event = summary(msg.data)
        if event is not None:
            hub.publish(event)

    sub = await bus.nc.subscribe("aar.*.>", cb=on_message)
    hub.connected = True
    return sub
