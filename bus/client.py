"""The typed bus client every AAR process uses.

- connects with reconnect-forever, as one identity, with that identity's own inbox
  prefix (the only one it may subscribe to);
- ``publish(event)``: the gateway's roles hand the event to the gateway (request/reply
  on ``aarin.<session>.<type>.<identity>``, answered once it is in the stream, or with
  the reason it was refused: :class:`PublishRefused`); admin, the recorder and the
  gateway publish into the stream themselves, failing fast with :class:`PublishDenied`
  when the server refuses the subject. Either way ``Nats-Msg-Id`` is the publisher's
  identity and the event id (:func:`msg_id`): a retried publish is stored once, and no
  one can make the stream drop someone else's event as a "duplicate";
- ``pull(...)`` opens a durable pull consumer with explicit acks;
- ``request``/``serve`` are request/reply helpers for queries (never events); a
  request names the asker, ``aarq.<service>.<name>.<identity>``, so a service knows
  who asks (the server guarantees the last token).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import itertools
import json
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any, TypeVar

import nats
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from pydantic import BaseModel, ValidationError

from schemas import Event, Rejection, decode
from schemas.base import MAX_EVENT_BYTES

from .query import MAX_IN_FLIGHT, MAX_IN_FLIGHT_PER_ASKER, Busy, Endpoint, Query, QueryReply, Res
from .roles import DIRECT, INGEST_PREFIX, QUERY_PREFIX, STREAM, Role, inbox_prefix
from .settings import BusSettings

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)

DUPLICATE_WINDOW_S = 120.0
RESEND_S = 2.0  # an event the gateway has not answered within this is sent again
_DENIED_RE = re.compile(r'Permissions Violation for Publish to "?([^"\s]+)"?', re.IGNORECASE)


class BusError(RuntimeError):
    pass


class PublishDenied(BusError):
    """The server refused this user's publish (subject permissions)."""


class PublishTimeout(BusError):
    pass


class PublishRefused(BusError):
    """The gateway refused the event (too large, over the publish budget, invalid, or
    claiming another identity); ``code`` says which, the message says why."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


# Every message of the stream names its publisher: the gateway writes the verified
# identity of what it forwards; admin, the recorder and the gateway name themselves.
PUBLISHER_HEADER = "Aar-Publisher"


def decode_msg(msg: Msg) -> Event | Rejection:
    """An event from the stream (or a core subscription on it), checked against its
    subject and against the publisher its header names. Use this (or
    :func:`decode_published`), not ``decode``, on every message from the bus."""
    return decode_published(msg.data, msg.subject, (msg.headers or {}).get(PUBLISHER_HEADER))


def decode_published(data: bytes, subject: str | None, publisher: str | None) -> Event | Rejection:
    """``decode`` for a message of the stream with its ``Aar-Publisher`` header: none (a
    message that came in some other way: a server's reply aimed at the stream, say) is
    refused; ``admin`` may publish in any name (replays, operators); any other identity
    only in its own."""
    if publisher is None:
        checked = decode(data, subject)
        return Rejection(
            reason="no verified publisher: the message names none (only what the gateway, the recorder and admin "
                   "publish enters the stream)", raw=bytes(data), subject=subject,
            event_id=checked.id if isinstance(checked, Event) else checked.event_id,
            event_type=checked.type.value if isinstance(checked, Event) else checked.event_type,
            session_id=checked.session_id)
    return decode(data, subject, publisher=None if publisher == Role.ADMIN.value else publisher)


def msg_id(identity: str, key: str) -> str:
    """``Nats-Msg-Id`` of a message: who publishes it and its event id (``key``). JetStream
    stores a retry by the same publisher once, and no publisher can make it drop another
    one's message: the gateway writes this header itself, from the verified identity.
    (A second, different message under an id the same publisher used within the
    duplicate window is dropped by JetStream; the gateway notices it and records a
    conflict, see :mod:`services.gateway`.)"""
    return f"{identity}.{key}"


def raw_key(data: bytes) -> str:
    """The dedupe key of bytes that hold no event id (they do not decode)."""
    return "raw." + hashlib.sha256(data).hexdigest()[:40]


def ingest_subject(subject: str, identity: str) -> str:
    """``aar.<session>.<domain>.<event>`` -> the gateway's ``aarin.<...>.<identity>``."""
    head, _, rest = subject.partition(".")
    return f"{INGEST_PREFIX}.{rest}.{identity}" if head == "aar" else f"{INGEST_PREFIX}.{subject}.{identity}"


class QueryError(BusError):
    """A query service answered with an error (``error_type``: the reply's, e.g.
    ``BadRequest`` or the handler's exception class; None when nothing answered)."""

    def __init__(self, message: str, error_type: str | None = None) -> None:
        super().__init__(message)
        self.error_type = error_type


def reply_allowed(msg: Msg, asker: str) -> bool:
    """Whether ``msg`` may be answered: its reply subject is in the asker's own inbox.
    A responder's ``allow_responses`` lets it publish to whatever reply subject came with
    a request, so without this check an asker could aim the answer anywhere: into the
    stream (``aar.*``), at the JetStream API (``$JS.API.STREAM.DELETE.AAR``), at another
    service (``aarq.recorder.audit.scorer``) or at the gateway in another's name."""
    return bool(msg.reply) and bool(asker) and msg.reply.startswith(inbox_prefix(asker) + ".")


def query_subject(service: str, name: str, identity: str = "*") -> str:
    """``aarq.<service>.<name>.<asker>``; ``*``: the pattern a service subscribes to."""
    return f"{QUERY_PREFIX}.{service}.{name}.{identity}"


class Bus:
    """A connection to NATS/JetStream for one process."""

    def __init__(self, nc: NatsClient, settings: BusSettings, name: str) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.settings = settings
        self.name = name
        self.identity = settings.identity
        role = settings.role
        # The gateway's roles publish through it; admin (no user), the recorder and the
        # gateway itself into the stream.
        self.gated = role is not None and role not in DIRECT and settings.user is not None
        self._denials: dict[str, asyncio.Future[str]] = {}
        self._closing = False
        self._replies: dict[str, asyncio.Future[Msg]] = {}
        self._reply_sub: Any = None
        self._reply_prefix = ""
        self._counter = itertools.count()

    # -- connection -------------------------------------------------------

    @classmethod
    async def connect(
        cls, settings: BusSettings | None = None, *, name: str = "aar", connect_timeout: float = 5.0
    ) -> Bus:
        settings = settings or BusSettings.from_env()
        bus: Bus | None = None

        async def error_cb(exc: Exception) -> None:
            if bus is not None:
                bus._on_error(exc)

        async def disconnected_cb() -> None:
            if bus is None or not bus._closing:
                log.warning("nats_disconnected", name=name)

        async def reconnected_cb() -> None:
            log.info("nats_reconnected", name=name)

        nc = await nats.connect(
            settings.url,
            user=settings.user,
            password=settings.password,
            name=name,
            max_reconnect_attempts=-1,  # reconnect forever
            reconnect_time_wait=0.5,
            connect_timeout=connect_timeout,
            allow_reconnect=True,
            error_cb=error_cb,
            disconnected_cb=disconnected_cb,
            reconnected_cb=reconnected_cb,
            pending_size=64 * 1024 * 1024,
            drain_timeout=2,
            inbox_prefix=inbox_prefix(settings.identity),
        )
        bus = cls(nc, settings, name)
        return bus

    def _on_error(self, exc: Exception) -> None:
        match = _DENIED_RE.search(str(exc))
        if match:
            subject = match.group(1).lower()  # nats-py lowercases server errors
            future = self._denials.get(subject)
            if future is not None and not future.done():
                future.set_result(str(exc))
            log.warning("publish_denied", subject=subject, user=self.settings.user)
            return
        log.warning("nats_error", error=str(exc), name=self.name)

    async def close(self) -> None:
        self._closing = True
        with contextlib.suppress(Exception):
            await self.nc.flush(timeout=2)  # pending publishes and acks reach the server
        if not self.nc.is_closed:
            with contextlib.suppress(Exception):
                await self.nc.close()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- stream -----------------------------------------------------------

    async def ensure_stream(self) -> None:
        """Create (or update) the ``AAR`` stream over ``aar.>`` (admin only)."""
        config = StreamConfig(
            name=STREAM,
            subjects=["aar.>"],
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW_S,
            # An event is at most MAX_EVENT_BYTES (the gateway says so to the publisher);
            # the stream refuses anything larger from anyone, headers included.
            max_msg_size=MAX_EVENT_BYTES + 4096,
        )
        try:
            await self.js.stream_info(STREAM)
            await self.js.update_stream(config)
        except NotFoundError:
            await self.js.add_stream(config)

    # -- publishing -------------------------------------------------------

    async def publish(self, event: Event, *, timeout: float = 10.0) -> int:
        """Publish to the stream; returns the stream sequence once stored."""
        return (await self.publish_many([event], timeout=timeout))[0]

    async def publish_many(self, events: Sequence[Event], *, timeout: float = 10.0) -> list[int]:
        """Publish several events concurrently (pipelined), in order of submission."""
        return await self.publish_raw_many([(e.subject, e.to_json(), e.id) for e in events], timeout=timeout)

    async def publish_raw_many(
        self, items: Sequence[tuple[str, bytes, str | None]], *, timeout: float = 10.0
    ) -> list[int]:
        """Publish (subject, bytes, event id) triples, in order; raw bytes let tests and
        benchmarks send malformed data. The id keys JetStream's deduplication (None: no
        ``Nats-Msg-Id``, never deduplicated; through the gateway, the gateway sets it).
        Raises PublishDenied / PublishRefused / PublishTimeout."""
        if self.gated:
            return await self._through_gateway(items, timeout)
        loop = asyncio.get_running_loop()
        denials: dict[str, asyncio.Future[str]] = {}
        for subject, _, _ in items:
            key = subject.lower()
            if key not in self._denials or self._denials[key].done():
                self._denials[key] = loop.create_future()
            denials[key] = self._denials[key]
        acks = []
        for subject, data, dedupe in items:
            headers = {PUBLISHER_HEADER: self.identity}
            if dedupe:
                headers["Nats-Msg-Id"] = msg_id(self.identity, dedupe)
            acks.append(await self.js.publish_async(subject, data, headers=headers))
        gathered = asyncio.gather(*acks)
        denied = asyncio.ensure_future(asyncio.wait(list(denials.values()), return_when=asyncio.FIRST_COMPLETED))
        try:
            racing: set[asyncio.Future[Any]] = {gathered, denied}
            done, _ = await asyncio.wait(racing, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            if gathered in done:
                return [ack.seq for ack in gathered.result()]
            if denied in done:
                subjects = sorted(s for s, f in denials.items() if f.done())
                raise PublishDenied(f"user {self.settings.user!r} may not publish to {', '.join(subjects)}")
            raise PublishTimeout(f"no JetStream ack within {timeout}s for {len(items)} message(s)")
        finally:
            denied.cancel()
            if not gathered.done():
                gathered.cancel()
                with contextlib.suppress(BaseException):
                    await gathered
            for subject, future in denials.items():
                if self._denials.get(subject) is future and not future.done():
                    del self._denials[subject]

    async def _through_gateway(self, items: Sequence[tuple[str, bytes, str | None]], timeout: float) -> list[int]:
        """Hand events to the gateway, in order, and wait for its answers. Retried
        while no gateway answers (it may be restarting) until ``timeout``: a retry is
        the same event, which the stream stores once."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        if self._reply_sub is None:
            self._reply_prefix = self.nc.new_inbox()
            self._reply_sub = await self.nc.subscribe(f"{self._reply_prefix}.*", cb=self._on_reply)
        subjects = [ingest_subject(subject, self.identity) for subject, _, _ in items]
        denials = self._watch_denials(subjects)
        seqs: list[int | None] = [None] * len(items)
        todo = list(range(len(items)))
        try:
            while todo:
                futures: dict[int, asyncio.Future[Msg]] = {}
                for i in todo:
                    token = f"{self._reply_prefix}.{next(self._counter)}"
                    futures[i] = self._replies[token] = loop.create_future()
                    await self.nc.publish(subjects[i], items[i][1], reply=token)
                waiting: list[asyncio.Future[Any]] = [*futures.values(), *denials.values()]
                resend_at = loop.time() + RESEND_S  # unanswered by then: sent again (stored once)
                while not self._denied(denials) and not all(f.done() for f in futures.values()):
                    left = min(deadline, resend_at) - loop.time()
                    if left <= 0:
                        break
                    await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                if refused := self._denied(denials):
                    raise PublishDenied(f"user {self.settings.user!r} may not publish to {', '.join(refused)}")
                again: list[int] = []
                for i, future in futures.items():
                    if not future.done() or (future.result().headers or {}).get("Status") == "503":
                        again.append(i)  # no answer yet, or no gateway answering
                        continue
                    answer = json.loads(future.result().data or b"{}")
                    if "error" in answer:
                        raise PublishRefused(str(answer.get("code", "refused")), str(answer["error"]))
                    if answer.get("conflict"):
                        log.warning("publish_conflict", subject=items[i][0], detail=str(answer["conflict"])[:300])
                    seqs[i] = int(answer["seq"])
                for token in [t for t, f in self._replies.items() if f in futures.values()]:
                    self._replies.pop(token).cancel()
                if again and loop.time() >= deadline:
                    raise PublishTimeout(f"the gateway did not take {len(again)} event(s) within {timeout}s "
                                         "(is the gateway running?)")
                if again:
                    await asyncio.sleep(min(0.25, max(0.0, deadline - loop.time())))
                todo = again
        finally:
            for key, denial in denials.items():
                if self._denials.get(key) is denial and not denial.done():
                    del self._denials[key]
        return [int(s) for s in seqs if s is not None]

    def _watch_denials(self, subjects: Sequence[str]) -> dict[str, asyncio.Future[str]]:
        """A future per subject, set when the server refuses this user a publish there."""
        loop = asyncio.get_running_loop()
        denials: dict[str, asyncio.Future[str]] = {}
        for subject in subjects:
            key = subject.lower()  # nats-py lowercases server errors
            if key not in self._denials or self._denials[key].done():
                self._denials[key] = loop.create_future()
            denials[key] = self._denials[key]
        return denials

    @staticmethod
    def _denied(denials: dict[str, asyncio.Future[str]]) -> list[str]:
        return sorted(s for s, f in denials.items() if f.done())

    async def _on_reply(self, msg: Msg) -> None:
        future = self._replies.get(msg.subject)
        if future is not None and not future.done():
            future.set_result(msg)

    # -- consuming --------------------------------------------------------

    async def pull(
        self,
        durable: str,
        filter_subject: str = "aar.>",
        *,
        ack_wait: float = 30.0,
        max_deliver: int = 5,
        max_ack_pending: int = 20_000,
        deliver_policy: DeliverPolicy = DeliverPolicy.ALL,
    ) -> JetStreamContext.PullSubscription:
        """A durable pull consumer with explicit acks, shared by every process
        that opens the same ``durable`` name (they split the messages)."""
        config = ConsumerConfig(
            durable_name=durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ack_wait,
            max_deliver=max_deliver,
            max_ack_pending=max_ack_pending,
            deliver_policy=deliver_policy,
            filter_subject=filter_subject,
        )
        return await self.js.pull_subscribe(filter_subject, durable=durable, stream=STREAM, config=config)

    @staticmethod
    async def fetch(
        sub: JetStreamContext.PullSubscription, batch: int, timeout: float
    ) -> list[Msg]:
        """Fetch up to ``batch`` messages; an empty list when none arrive in time,
        or while the server is unreachable or restarting (the client reconnects
        on its own; the caller simply tries again)."""
        try:
            return await sub.fetch(batch, timeout=timeout)
        except (TimeoutError, nats.errors.TimeoutError):
            return []
        except (nats.js.errors.ServiceUnavailableError, nats.errors.ConnectionClosedError,
                nats.errors.ConnectionReconnectingError, nats.errors.StaleConnectionError,
                nats.errors.NoRespondersError) as exc:
            log.warning("fetch_unavailable", error=type(exc).__name__)
            await asyncio.sleep(0.25)
            return []

    @staticmethod
    @contextlib.asynccontextmanager
    async def heartbeat(msg: Msg, interval: float) -> AsyncIterator[None]:
        """Send ``in_progress`` every ``interval`` seconds while a long job runs,
        so the server does not redeliver it to another worker."""

        async def beat() -> None:
            while True:
                await asyncio.sleep(interval)
                with contextlib.suppress(Exception):
                    await msg.in_progress()

        task = asyncio.create_task(beat())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- queries (request/reply) -----------------------------------------

    async def request(self, service: str, name: str, body: BaseModel | dict[str, Any], *, timeout: float = 10.0) -> Any:
        data = body.model_dump_json().encode() if isinstance(body, BaseModel) else _json_bytes(body)
        try:
            msg = await self.nc.request(query_subject(service, name, self.identity), data, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise QueryError(f"no {service} service is answering {name!r}") from None
        except (TimeoutError, nats.errors.TimeoutError):
            raise QueryError(f"{service} did not answer {name!r} within {timeout}s") from None
        reply = QueryReply.model_validate_json(msg.data)
        if not reply.ok:
            raise QueryError(reply.error or "query failed", reply.error_type)
        return reply.result

    async def ask(self, query: Query[Any, Res], request: BaseModel, *, timeout: float = 10.0) -> Res:
        """Ask ``query`` and get its response model (QueryError when the service refuses)."""
        if not isinstance(request, query.request):
            raise TypeError(f"{query.service}.{query.name} takes a {query.request.__name__}")
        result = await self.request(query.service, query.name, request, timeout=timeout)
        try:
            return query.response.model_validate(result)
        except ValidationError as exc:
            raise QueryError(f"{query.service} answered {query.name!r} with an unexpected shape: {exc}") from None

    async def serve(
        self,
        service: str,
        endpoints: Sequence[Endpoint[Any, Any]],
        *,
        queue: str | None = None,
    ) -> Any:
        """Answer ``aarq.<service>.<name>.<asker>`` requests, each in a task of its own
        (a slow one holds up no other). An :class:`Endpoint` validates the request into
        its model first (bus/query.py); a request that does not validate, or whose reply
        subject is not in the asker's own inbox, never reaches a handler. A handler's
        exception becomes an error reply; the service keeps running."""
        handlers: dict[str, Endpoint[Any, Any]] = {}
        for endpoint in endpoints:
            if endpoint.query.service != service:
                raise ValueError(f"{endpoint.query.service}.{endpoint.query.name} is not a {service} query")
            handlers[endpoint.query.name] = endpoint
        answering: set[asyncio.Task[None]] = set()
        per_asker: collections.Counter[str] = collections.Counter()

        async def answer(msg: Msg) -> None:
            tokens = msg.subject.split(".")
            name, asker = (tokens[2], tokens[3]) if len(tokens) == 4 else (tokens[-1], "")
            if not reply_allowed(msg, asker):
                if msg.reply:
                    log.warning("reply_refused", service=service, query=name, asker=asker, reply=msg.reply[:120])
                return  # checked first: a request nobody may be answered is never handled
            handler = handlers.get(name)
            if handler is None:
                reply = QueryReply(ok=False, error_type="UnknownQuery",
                                   error=f"unknown query {name!r}; known: {sorted(handlers)}")
            elif len(answering) > MAX_IN_FLIGHT or (
                    asker != Role.ADMIN.value and per_asker[asker] >= MAX_IN_FLIGHT_PER_ASKER):
                # (admin, the operators' own identity, is held to the service's total only)
                reply = QueryReply(ok=False, error_type=Busy.__name__,
                                   error=f"Busy: {service} is busy with {per_asker[asker]} request(s) of {asker} "
                                         f"and {len(answering) - 1} in all; ask again later")
            else:
                per_asker[asker] += 1
                try:
                    reply = QueryReply(ok=True, result=await handler(msg.data, asker))
                except Exception as exc:  # noqa: BLE001 - reported to the caller, never fatal
                    reply = QueryReply(ok=False, error=f"{type(exc).__name__}: {exc}", error_type=type(exc).__name__)
                finally:
                    per_asker[asker] -= 1
                    if per_asker[asker] <= 0:
                        del per_asker[asker]
            try:
                await msg.respond(reply.model_dump_json().encode())
            except Exception as exc:  # noqa: BLE001 - e.g. over max_payload: say so instead
                with contextlib.suppress(Exception):
                    await msg.respond(QueryReply(ok=False, error=f"the answer could not be sent: "
                                                 f"{type(exc).__name__}: {exc}"[:2000]).model_dump_json().encode())

        async def on_msg(msg: Msg) -> None:
            # Each request in a task of its own: a slow one never holds up the others.
            task = asyncio.create_task(answer(msg))
            answering.add(task)
            task.add_done_callback(answering.discard)

        return await self.nc.subscribe(query_subject(service, "*"), queue=queue or service, cb=on_msg)


def _json_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body, default=str).encode()
