"""The typed bus client every AAR process uses.

- connects with reconnect-forever;
- ``publish(event)`` sets ``Nats-Msg-Id`` to the event id (a retried publish is
  stored once) and fails fast with :class:`PublishDenied` when the server
  refuses the subject for this user;
- ``pull(...)`` opens a durable pull consumer with explicit acks;
- ``request``/``serve`` are request/reply helpers for queries (never events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import nats
import nats.js.errors
import structlog
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from pydantic import BaseModel

from schemas import Event

from .roles import QUERY_PREFIX, STREAM
from .settings import BusSettings

log = structlog.get_logger(__name__)

M = TypeVar("M", bound=BaseModel)

DUPLICATE_WINDOW_S = 120.0
_DENIED_RE = re.compile(r'Permissions Violation for Publish to "?([^"\s]+)"?', re.IGNORECASE)


class BusError(RuntimeError):
    pass


class PublishDenied(BusError):
    """The server refused this user's publish (subject permissions)."""


class PublishTimeout(BusError):
    pass


class QueryError(BusError):
    """A query service answered with an error."""


class QueryReply(BaseModel):
    ok: bool
    result: Any = None
    error: str | None = None


def query_subject(service: str, name: str) -> str:
    return f"{QUERY_PREFIX}.{service}.{name}"


class Bus:
    """A connection to NATS/JetStream for one process."""

    def __init__(self, nc: NatsClient, settings: BusSettings, name: str) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.settings = settings
        self.name = name
        self._denials: dict[str, asyncio.Future[str]] = {}
        self._closing = False

    # -- connection -------------------------------------------------------

    @classmethod
    async def connect(
        cls, settings: BusSettings | None = None, *, name: str = "aar", connect_timeout: float = 5.0
    ) -> "Bus":
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

    async def __aenter__(self) -> "Bus":
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
            max_msg_size=8 * 1024 * 1024,
        )
        try:
            await self.js.stream_info(STREAM)
            await self.js.update_stream(config)
        except NotFoundError:
            await self.js.add_stream(config)

    # -- publishing -------------------------------------------------------

    async def publish(self, event: Event[Any], *, timeout: float = 10.0) -> int:
        """Publish to JetStream; returns the stream sequence once stored."""
        return (await self.publish_many([event], timeout=timeout))[0]

    async def publish_many(self, events: Sequence[Event[Any]], *, timeout: float = 10.0) -> list[int]:
        """Publish several events concurrently (pipelined), in order of submission."""
        return await self.publish_raw_many(
            [(e.subject, e.to_json(), e.id) for e in events], timeout=timeout
        )

    async def publish_raw_many(
        self, items: Sequence[tuple[str, bytes, str | None]], *, timeout: float = 10.0
    ) -> list[int]:
        """Publish (subject, bytes, msg_id) triples; raw bytes let tests and
        benchmarks send malformed data. Raises PublishDenied/PublishTimeout."""
        loop = asyncio.get_running_loop()
        denials: dict[str, asyncio.Future[str]] = {}
        for subject, _, _ in items:
            key = subject.lower()
            if key not in self._denials or self._denials[key].done():
                self._denials[key] = loop.create_future()
            denials[key] = self._denials[key]
        acks = []
        for subject, data, msg_id in items:
            headers = {"Nats-Msg-Id": msg_id} if msg_id else None
            acks.append(await self.js.publish_async(subject, data, headers=headers))
        gathered = asyncio.gather(*acks)
        denied = asyncio.ensure_future(asyncio.wait(list(denials.values()), return_when=asyncio.FIRST_COMPLETED))
        try:
            done, _ = await asyncio.wait({gathered, denied}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
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
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
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
            msg = await self.nc.request(query_subject(service, name), data, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise QueryError(f"no {service} service is answering {name!r}") from None
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            raise QueryError(f"{service} did not answer {name!r} within {timeout}s") from None
        reply = QueryReply.model_validate_json(msg.data)
        if not reply.ok:
            raise QueryError(reply.error or "query failed")
        return reply.result

    async def serve(
        self,
        service: str,
        handlers: dict[str, Callable[[bytes], Awaitable[Any]]],
        *,
        queue: str | None = None,
    ) -> Any:
        """Answer ``aarq.<service>.<name>`` requests. A handler's exception
        becomes an error reply; the service keeps running."""

        async def on_msg(msg: Msg) -> None:
            name = msg.subject.rsplit(".", 1)[-1]
            handler = handlers.get(name)
            if handler is None:
                reply = QueryReply(ok=False, error=f"unknown query {name!r}; known: {sorted(handlers)}")
            else:
                try:
                    reply = QueryReply(ok=True, result=await handler(msg.data))
                except Exception as exc:  # reported to the caller, never fatal
                    reply = QueryReply(ok=False, error=f"{type(exc).__name__}: {exc}")
            if msg.reply:
                await msg.respond(reply.model_dump_json().encode())

        return await self.nc.subscribe(f"{QUERY_PREFIX}.{service}.*", queue=queue or service, cb=on_msg)


def _json_bytes(body: dict[str, Any]) -> bytes:
    return json.dumps(body, default=str).encode()
