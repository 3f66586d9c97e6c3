"""The gateway process (see the package docstring)."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.aio.msg import Msg

from bus import Bus
from bus.budget import ByteBudget
from bus.client import DUPLICATE_WINDOW_S, PUBLISHER_HEADER, msg_id, raw_key, reply_allowed
from bus.query import Empty
from bus.roles import DIRECT, INGEST_PREFIX, PUBLISH_BUDGETS, PUBLISHES, Role, role_of
from schemas import Event, Rejection, decode
from schemas.base import MAX_EVENT_BYTES, is_subject_token
from schemas.gateway import GatewayRefused, RefusalKind
from services.gateway.queries import HEALTH, GatewayHealth

SYSTEM_SESSION = "system"
# Each event costs the stream and the log more than its bytes (headers, index, the log's
# row): charged on top of its size, so that a flood of tiny events spends a budget too.
MESSAGE_COST = 512
ACK_WAIT_S = 10.0  # a forwarded event not acked by JetStream by then goes unanswered
MAX_REMEMBERED = 200_000  # msg ids kept for conflict detection (the duplicate window's worth)
BUDGETS_ENV = "AAR_PUBLISH_BUDGETS"  # JSON {role: bytes per minute}, over bus.roles.PUBLISH_BUDGETS

log = structlog.get_logger("gateway")


def ingest_subjects() -> list[str]:
    """The subjects the gateway listens on: one per event subject a gated role may
    publish (``aarin.*.<domain>.<event or *>.*``), each once."""
    seen: dict[str, None] = {}
    for role, patterns in PUBLISHES.items():
        if role in DIRECT:
            continue
        for pattern in patterns:
            event = pattern[:-1] + "*" if pattern.endswith(".>") else pattern
            seen.setdefault(f"{INGEST_PREFIX}.*.{event}.*", None)
    return list(seen)


def budgets_from_env(env: dict[str, str] | None = None) -> dict[Role, int]:
    """The publish budgets: the defaults, with ``AAR_PUBLISH_BUDGETS`` over them."""
    raw = (os.environ if env is None else env).get(BUDGETS_ENV, "")
    budgets = dict(PUBLISH_BUDGETS)
    if raw:
        try:
            given = json.loads(raw)
            budgets.update({Role(k): int(v) for k, v in given.items()})
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"{BUDGETS_ENV} must be a JSON object of role -> bytes per minute: {exc}") from None
    return budgets


@dataclass(slots=True)
class _Tally:
    """Refusals of one (identity, kind) in the current window, not yet reported."""

    first: GatewayRefused
    session: str
    opened: float
    count: int = 0
    bytes: int = 0


@dataclass(slots=True)
class _Forwarded:
    """An event sent on to the stream, waiting for JetStream's ack to be answered."""

    msg: Msg
    ack: asyncio.Future[Any]
    checked: Event | Rejection
    key: str  # its Nats-Msg-Id
    digest: bytes  # SHA-256 of its bytes
    session: str
    deadline: float  # monotonic: no ack by then, no answer (the publisher retries)


@dataclass(slots=True)
class _Stats:
    forwarded: int = 0
    rejected_forwarded: int = 0
    refused: dict[str, int] = field(default_factory=dict)


class Gateway:
    def __init__(
        self,
        bus: Bus,
        *,
        source: str = "gateway",
        budgets: dict[Role, int] | None = None,
        max_event_bytes: int = MAX_EVENT_BYTES,
        window_s: float = 10.0,
    ) -> None:
        self.bus = bus
        self.source = source
        self.budgets = budgets if budgets is not None else dict(PUBLISH_BUDGETS)
        self.max_event_bytes = max_event_bytes
        self.window_s = window_s
        self._buckets: dict[str, ByteBudget] = {}
        # Forwarded events in the order they were sent, answered in that order by one task
        # (no task per message: the door's cost per event is most of what it adds).
        self._forwarded: collections.deque[_Forwarded] = collections.deque()
        self._more = asyncio.Event()
        # msg id -> SHA-256 of what was stored under it, for the stream's duplicate window
        self._recent: dict[str, bytes] = {}
        self._recent_times: collections.deque[tuple[float, str]] = collections.deque()
        self._tallies: dict[tuple[str, RefusalKind], _Tally] = {}
        self.stats = _Stats()
        self.log = log.bind(service=source)

    async def run(self, stop: asyncio.Event) -> None:
        # One subscription per subject an identity may use, agents' apart from the services':
        # each has its own buffer and its own turn on the event loop, so a flood of agent
        # events (over budget or not) can overflow only the agents' buffers.
        subs = [await self.bus.nc.subscribe(subject, queue="gateway", cb=self._on_msg, pending_msgs_limit=20_000,
                                            pending_bytes_limit=64 * 1024 * 1024) for subject in ingest_subjects()]
        await self.bus.serve("gateway", [HEALTH.answer(self._health)])
        self.log.info("gateway_ready", budgets={r.value: b for r, b in self.budgets.items()},
                      max_event_bytes=self.max_event_bytes)
        flusher = asyncio.create_task(self._flush_loop(stop))
        answerer = asyncio.create_task(self._answer_loop())
        try:
            await stop.wait()
        finally:
            for sub in subs:
                with contextlib.suppress(Exception):
                    await sub.drain()  # what arrived is still forwarded ...
            with contextlib.suppress(TimeoutError):  # ... and answered
                await asyncio.wait_for(self._drained(), 10.0)
            for task in (flusher, answerer):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await self._flush(force=True)

    # -- one message --------------------------------------------------------------

    async def _on_msg(self, msg: Msg) -> None:
        try:
            await self._handle(msg)
        except Exception as exc:
            self.log.exception("gateway_message_failed", subject=msg.subject[:200], error=str(exc)[:300])

    async def _handle(self, msg: Msg) -> None:
        tokens = msg.subject.split(".")
        data = msg.data
        # The server checked the identity token (each identity may use only its own) and
        # the domain and event (its permissions); the session token is checked here.
        if len(tokens) != 5 or not is_subject_token(tokens[1]) or not is_subject_token(tokens[4]):
            await self._refuse(msg, tokens[-1] if tokens else "?", RefusalKind.BAD_SUBJECT,
                               f"subject {msg.subject[:200]!r} is not {INGEST_PREFIX}.<session>.<domain>.<event>.<identity>")
            return
        _, session, domain, name, identity = tokens
        if len(data) > self.max_event_bytes:
            await self._refuse(msg, identity, RefusalKind.TOO_LARGE,
                               f"{len(data):,} bytes is over the {self.max_event_bytes:,}-byte limit of an event",
                               session=session)
            return
        bucket = self._bucket(identity)
        cost = len(data) + MESSAGE_COST  # what it costs the store, not only its bytes
        if bucket is not None and not bucket.take(cost):
            wait = bucket.retry_after(cost)
            await self._refuse(msg, identity, RefusalKind.OVER_BUDGET,
                               f"{identity} is over its publish budget of {bucket.per_minute:,} bytes per minute "
                               f"(each event counts {MESSAGE_COST} bytes more than its size); retry in {wait:.1f}s",
                               session=session)
            return
        target = f"aar.{session}.{domain}.{name}"
        checked = decode(data, target, publisher=identity)
        key = msg_id(identity, checked.id if isinstance(checked, Event) else raw_key(data))
        digest = hashlib.sha256(data).digest()
        headers = {"Nats-Msg-Id": key, PUBLISHER_HEADER: identity}
        ack = await self.bus.js.publish_async(target, data, headers=headers)
        self._forwarded.append(_Forwarded(msg, ack, checked, key, digest, session, time.monotonic() + ACK_WAIT_S))
        self._more.set()

    async def _answer_loop(self) -> None:
        """Answer each forwarded event once JetStream has acked it, in order."""
        while True:
            if not self._forwarded:
                self._more.clear()
                await self._more.wait()
                continue
            item = self._forwarded[0]
            if not item.ack.done():
                await asyncio.wait({item.ack}, timeout=max(0.0, item.deadline - time.monotonic()))
            self._forwarded.popleft()
            try:
                await self._answer(item)
            except Exception as exc:  # noqa: BLE001 - one answer must never stop the others
                self.log.error("answer_failed", subject=item.msg.subject[:200], error=f"{type(exc).__name__}: {exc}"[:300])

    async def _drained(self) -> None:
        while self._forwarded:
            await asyncio.sleep(0.01)

    async def _answer(self, item: _Forwarded) -> None:
        msg, checked, key, digest, session = item.msg, item.checked, item.key, item.digest, item.session
        if not item.ack.done() or item.ack.cancelled() or item.ack.exception() is not None:
            why = "no ack from JetStream" if not item.ack.done() or item.ack.cancelled() else repr(item.ack.exception())
            self.log.warning("forward_failed", subject=msg.subject[:200], error=why[:300])
            return  # no answer: the publisher retries the same event
        stored = item.ack.result()
        seen = self._recent.get(key)
        if not stored.duplicate:
            self._remember(key, digest)
        elif seen is not None and seen != digest:
            # JetStream kept the first message under this id and dropped this one: a
            # different body under an id the publisher already used. Not silent.
            identity, _, event_id = key.partition(".")
            why = (f"event id {event_id!r} was already published by {identity} with different bytes "
                   f"(stream sequence {stored.seq}); this copy was not stored")
            await self._refuse(msg, identity, RefusalKind.CONFLICT, why, session=session, reply=False)
            await self._reply(msg, {"seq": stored.seq, "duplicate": True, "conflict": why})
            return
        if isinstance(checked, Rejection):
            self.stats.rejected_forwarded += 1
            code = "impersonation" if "publisher's identity" in checked.reason else "invalid"
            answer: dict[str, Any] = {"error": f"recorded as rejected: {checked.reason}", "code": code,
                                      "seq": stored.seq}
        else:
            self.stats.forwarded += 1
            answer = {"seq": stored.seq, "duplicate": bool(stored.duplicate)}
        await self._reply(msg, answer)

    async def _reply(self, msg: Msg, answer: dict[str, Any]) -> None:
        """Answer into the publisher's own inbox only (``bus.client.reply_allowed``): the
        identity token of the subject is the publisher, checked by the server."""
        if reply_allowed(msg, msg.subject.rsplit(".", 1)[-1]):
            with contextlib.suppress(Exception):
                await self.bus.nc.publish(msg.reply, json.dumps(answer).encode())
        elif msg.reply:
            self.stats.refused["reply"] = self.stats.refused.get("reply", 0) + 1

    def _remember(self, key: str, digest: bytes) -> None:
        now = time.monotonic()
        self._recent[key] = digest
        self._recent_times.append((now, key))
        while self._recent_times and (self._recent_times[0][0] < now - DUPLICATE_WINDOW_S
                                      or len(self._recent_times) > MAX_REMEMBERED):
            _, old = self._recent_times.popleft()
            self._recent.pop(old, None)

    def _bucket(self, identity: str) -> ByteBudget | None:
        bucket = self._buckets.get(identity)
        if bucket is None:
            try:
                per_minute = self.budgets.get(role_of(identity))
            except ValueError:
                per_minute = min(self.budgets.values(), default=None)
            if per_minute is None:
                return None
            bucket = self._buckets[identity] = ByteBudget(per_minute)
        return bucket

    # -- refusals -----------------------------------------------------------------

    async def _refuse(self, msg: Msg, identity: str, kind: RefusalKind, why: str, *, session: str = "",
                      reply: bool = True) -> None:
        self.stats.refused[kind.value] = self.stats.refused.get(kind.value, 0) + 1
        if reply:
            await self._reply(msg, {"error": why, "code": kind.value})
        identity = identity if is_subject_token(identity) else "unknown"
        key = (identity, kind)
        tally = self._tallies.get(key)
        if tally is None:
            try:
                role = role_of(identity).value
            except ValueError:
                role = "unknown"
            first = GatewayRefused(
                identity=identity, role=role, kind=kind, count=1, bytes=len(msg.data),
                first_subject=msg.subject[:300], first_size=len(msg.data),
                first_sha256=hashlib.sha256(msg.data).hexdigest(), detail=why[:4000],
            )
            sid = session if is_subject_token(session) else SYSTEM_SESSION
            self._tallies[key] = _Tally(first, sid, time.monotonic())
            self.log.warning("refused", identity=identity, kind=kind.value, detail=why[:300])
            await self._record(first, sid)  # the first of a window at once
        else:
            tally.count += 1
            tally.bytes += len(msg.data)

    async def _flush_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(min(1.0, self.window_s))
            await self._flush()

    async def _flush(self, *, force: bool = False) -> None:
        """Report each window's remaining refusals (their count and bytes) once it closes."""
        now = time.monotonic()
        for key, tally in list(self._tallies.items()):
            if not force and now - tally.opened < self.window_s:
                continue
            del self._tallies[key]
            if tally.count:
                summary = tally.first.model_copy(update={
                    "count": tally.count, "bytes": tally.bytes, "window_s": round(now - tally.opened, 3),
                    "detail": f"{tally.count} more refused after the first in {now - tally.opened:.1f}s: "
                              f"{tally.first.detail}"[:4000],
                })
                await self._record(summary, tally.session)

    async def _record(self, refusal: GatewayRefused, session: str) -> None:
        try:
            await self.bus.publish(Event.create(refusal, session_id=session, source=self.source))
        except Exception as exc:  # noqa: BLE001 - the refusal was answered; the log line stays
            self.log.error("refusal_not_recorded", error=f"{type(exc).__name__}: {exc}"[:300])

    async def _health(self, request: Empty, asker: str = "") -> GatewayHealth:
        return GatewayHealth(forwarded=self.stats.forwarded, rejected_forwarded=self.stats.rejected_forwarded,
                             refused=dict(self.stats.refused), identities=len(self._buckets), pid=os.getpid())


async def main() -> None:
    from services.runtime import service, service_id

    budgets = budgets_from_env()
    async with service("gateway") as (bus, stop, _log):
        await Gateway(bus, source=service_id("gateway"), budgets=budgets).run(stop)
