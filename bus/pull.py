"""A JetStream pull that takes only what the server has *now* (``no_wait``).

nats-py has no public call for this: ``PullSubscription.fetch(n, small_timeout)``
with nothing to deliver sends a second, lingering request and runs out its timeout,
and with many messages to deliver it returns only as many as arrive within that
timeout. So ``NoWaitPuller`` speaks the JetStream pull protocol itself, with nothing
but the client's public API (``new_inbox``, ``subscribe``, ``next_msg``, ``publish``):

- a request ``{"batch": n, "no_wait": true}`` is published to
  ``<prefix>.CONSUMER.MSG.NEXT.<stream>.<durable>`` with a reply subject of the
  puller's own inbox;
- the server answers on that reply subject with up to ``n`` messages, each with a
  ``$JS.ACK...`` reply subject (so ``msg.ack()`` works on the plain ``Msg``), then,
  when it has fewer than ``n``, a status message without a body or reply subject:
  header ``Status: 404`` (no messages), ``408`` (request expired) or ``409`` (e.g.
  too many waiting requests, the consumer deleted).

Each request gets a reply subject of its own (``<inbox>.<n>``, one wildcard
subscription for all), so the status that ends *this* request is told apart from a
late one of an earlier request (which must not cut this one short). A message that
arrives after its request gave up (its fetch timed out) stays in the subscription's
queue and is the first thing the next ``fetch`` returns: the server counts it as
delivered (it is pending an ack), so dropping it would leave it unprocessed until
``ack_wait`` redelivers it, and returning it twice would process it twice.

The behaviour this relies on (the request format, the statuses, that no_wait without
``expires`` answers at once) is pinned by ``tests/test_pull.py``, and nats-py by a
minor-version pin in ``pyproject.toml``.
"""

from __future__ import annotations

import asyncio
import itertools
import json

import nats.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

__all__ = ["DEFAULT_PREFIX", "END_STATUSES", "NoWaitPuller", "is_stream_msg", "status_of"]

DEFAULT_PREFIX = "$JS.API"  # nats.js.api.DEFAULT_PREFIX; another with a JetStream domain
STATUS_HEADER = "Status"  # nats.js.api.Header.STATUS, as nats-py parses "NATS/1.0 404 ..."
# Statuses that end a pull request: nothing (more) to deliver now, the request
# expired, or the server refused it (409: max waiting, max bytes, consumer deleted...).
END_STATUSES = frozenset({"404", "408", "409"})
# What a fetch cannot do while the connection is down; the client reconnects on its own.
UNAVAILABLE = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.ConnectionDrainingError,
    nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError,
)
UNAVAILABLE_SLEEP_S = 0.25
# The pending limits of nats-py's own JetStream subscriptions (its defaults for plain ones are
# half): a batch of large messages must not overflow the inbox and be dropped as a slow consumer.
PENDING_MSGS = 512 * 1024
PENDING_BYTES = 256 * 1024 * 1024

log = structlog.get_logger("bus.pull")


def status_of(msg: Msg) -> str | None:
    """The status code of a server status message (``"404"``...), else None."""
    headers = msg.headers
    return headers.get(STATUS_HEADER) if headers else None


def is_stream_msg(msg: Msg) -> bool:
    """True for a message delivered from the stream. Those always carry a reply
    subject (their ack subject); the server's status messages never do. (A stream
    message may carry a ``Status`` header of its publisher's: it is still returned,
    and acked, rather than taken for a status and never acknowledged.)"""
    return bool(msg.reply)


class NoWaitPuller:
    """Pulls from the durable pull consumer ``durable`` of ``stream`` only what is
    available now, never waiting for new messages (see the module docstring).

    Use it beside (not instead of) a ``PullSubscription`` on the same consumer: it
    has its own inbox, so the two never take each other's messages. One fetch at a
    time (a lock serialises them: each reads the answer of its own request)."""

    def __init__(self, nc: NatsClient, stream: str, durable: str, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.nc = nc
        self.stream = stream
        self.durable = durable
        self.subject = f"{prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = ""
        self._sub: Subscription | None = None
        self._requests = itertools.count(1)
        self._lock = asyncio.Lock()

    @property
    def leftovers(self) -> int:
        """Messages (status messages included) received but not yet returned: late
        answers to earlier requests, which the next ``fetch`` returns first."""
        return self._sub.pending_msgs if self._sub is not None else 0

    async def fetch(self, batch: int, timeout: float = 1.0) -> list[Msg]:
        """Up to ``batch`` messages the consumer can deliver now: first those that
        arrived late for earlier requests, then the answer to a ``no_wait`` request
        for the rest, until its end status, ``batch`` messages, or ``timeout``
        seconds (what arrives after that is returned by the next fetch). Status
        messages are never returned. ``timeout`` <= 0: only what already arrived,
        no request. While the connection is down: a warning, a 0.25 s pause, and
        only what already arrived (the caller simply asks again)."""
        if batch < 1:
            raise ValueError(f"batch must be at least 1, not {batch}")
        loop = asyncio.get_running_loop()
        async with self._lock:
            deadline = loop.time() + timeout  # the whole fetch, its request included
            msgs: list[Msg] = []
            try:
                sub = await self._subscription()
                await self._take_leftovers(sub, batch, msgs)
                if len(msgs) >= batch or timeout <= 0:
                    return msgs
                if not self.nc.is_connected:
                    raise nats.errors.ConnectionReconnectingError
                reply = f"{self._inbox}.{next(self._requests)}"
                request = json.dumps({"batch": batch - len(msgs), "no_wait": True}).encode()
                await self.nc.publish(self.subject, request, reply=reply)
                await self._read_answer(sub, reply, batch, deadline, msgs)
            except UNAVAILABLE as exc:
                log.warning("fetch_unavailable", error=type(exc).__name__, stream=self.stream, durable=self.durable)
                await asyncio.sleep(UNAVAILABLE_SLEEP_S)
            return msgs

    async def close(self) -> None:
        """Unsubscribe the inbox. Messages received and not returned are not acked:
        the server redelivers them after ``ack_wait``."""
        async with self._lock:
            sub, self._sub = self._sub, None
            if sub is None:
                return
            try:
                await sub.unsubscribe()
            except (*UNAVAILABLE, nats.errors.BadSubscriptionError):
                pass  # closed with the connection, or already gone

    async def _subscription(self) -> Subscription:
        # Subscribed at the first fetch (a constructor cannot await); nats-py
        # re-subscribes it by itself after a reconnect.
        if self._sub is None:
            self._inbox = self.nc.new_inbox()
            # as large as nats-py's pull subscriptions allow: a batch of big events must fit
            self._sub = await self.nc.subscribe(f"{self._inbox}.*", pending_msgs_limit=PENDING_MSGS,
                                                pending_bytes_limit=PENDING_BYTES)
        return self._sub

    @staticmethod
    async def _take_leftovers(sub: Subscription, batch: int, msgs: list[Msg]) -> None:
        # Only this puller reads ``sub`` (under the lock), so with ``pending_msgs``
        # > 0 ``next_msg`` returns at once.
        while sub.pending_msgs > 0 and len(msgs) < batch:
            msg = await sub.next_msg(timeout=None)
            if is_stream_msg(msg):
                msgs.append(msg)
            # else the status of an earlier request (its messages are counted anyway)

    async def _read_answer(self, sub: Subscription, reply: str, batch: int, deadline: float, msgs: list[Msg]) -> None:
        loop = asyncio.get_running_loop()
        while len(msgs) < batch:
            left = deadline - loop.time()
            if left <= 0:
                return
            try:
                msg = await sub.next_msg(timeout=left)
            except (TimeoutError, nats.errors.TimeoutError):
                return  # no (complete) answer in time: the rest comes with the next fetch
            if is_stream_msg(msg):
                msgs.append(msg)  # of this request, or a late one of an earlier request
            elif msg.subject == reply and status_of(msg) in END_STATUSES:
                if status_of(msg) == "409":
                    log.warning("pull_refused", stream=self.stream, durable=self.durable,
                                description=(msg.headers or {}).get("Description", ""))
                return
            # else: the status of an earlier request, a heartbeat: skip
