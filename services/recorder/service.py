"""The recorder: every event on ``aar.>`` into ``events.duckdb``.

- one durable pull consumer (``recorder``), batches of up to ``batch`` messages;
- a batch is written in one transaction, *then* acknowledged: a crash before
  the commit means redelivery, and redelivered events are ignored on their id;
- messages that are not valid events go to ``rejected_events`` with the reason
  and raw bytes, and a ``recorder.rejected`` event is published;
- ``max_deliver`` exhaustion on any consumer (advisory) becomes a
  ``recorder.dead_lettered`` event;
- read-only audit SQL is answered on ``aarq.recorder.audit``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

import structlog
from nats.aio.msg import Msg

from aar.paths import AarHome
from bus import Bus, PublishDenied
from bus.roles import STREAM
from schemas import Event, Rejection, decode
from schemas.recorder import RecorderDeadLettered, RecorderRejected

from .store import EventStore, Recorded, RejectedRecord

DURABLE = "recorder"
SYSTEM_SESSION = "system"


class Recorder:
    def __init__(
        self,
        bus: Bus,
        store: EventStore,
        *,
        source: str = "recorder",
        batch: int = 2000,
        fetch_timeout: float = 0.05,
        ack_wait: float = 5.0,
        linger: float = 0.02,
    ) -> None:
        self.bus = bus
        self.store = store
        self.source = source
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.ack_wait = ack_wait
        self.linger = linger
        self.batches = 0
        self.last_batch_ms = 0.0
        self.counts: dict[str, int] = {"events": 0, "rejected": 0}
        self.log = structlog.get_logger("recorder").bind(service=source)

    async def run(self, stop: asyncio.Event) -> None:
        # Explicit acks, one per message. (AckPolicy.ALL would be cheaper but is not
        # safe: after a crash, new messages arrive before the dead process's unacked
        # ones are redelivered, and acking a new one would ack those too, unrecorded.)
        sub = await self.bus.pull(DURABLE, "aar.>", ack_wait=self.ack_wait, max_deliver=-1, max_ack_pending=50_000)
        self.counts = await asyncio.to_thread(self.store.counts)
        await self.bus.serve("recorder", {"audit": self._audit, "health": self._health})
        await self.bus.nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.*", cb=self._on_max_deliveries
        )
        self.log.info("recorder_ready", db=str(self.store.path), **self.counts)
        # Pipelined: while batch n commits in a worker thread (DuckDB releases the
        # GIL), batch n+1 is fetched and decoded. Acks still follow each commit.
        committing: asyncio.Task[None] | None = None
        dirty = False  # WAL holds commits not yet checkpointed
        try:
            while not stop.is_set():
                msgs = await self._fetch_batch(sub)
                if not msgs:
                    if committing is not None:
                        await committing
                        committing = None
                    elif dirty:  # idle: checkpoint now rather than inside a commit later
                        await asyncio.to_thread(self.store.checkpoint)
                        dirty = False
                    continue
                decoded = self.decode(msgs)
                if committing is not None:
                    await committing
                committing = asyncio.create_task(self.commit(msgs, *decoded))
                dirty = True
        finally:
            if committing is not None:
                await committing

    async def _fetch_batch(self, sub: Any) -> list[Msg]:
        """Up to ``batch`` messages. When fewer arrive, keep collecting for up to
        ``linger`` seconds: each DuckDB transaction has a fixed cost of ~10 ms, so at
        moderate rates a few ms of waiting saves far more than it costs."""
        msgs = await Bus.fetch(sub, self.batch, self.fetch_timeout)
        if not msgs or len(msgs) >= self.batch or self.linger <= 0:
            return msgs
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.linger
        while len(msgs) < self.batch and (left := deadline - loop.time()) > 0.001:
            more = await Bus.fetch(sub, self.batch - len(msgs), left)
            if not more:
                break
            msgs.extend(more)
        return msgs

    @staticmethod
    def decode(msgs: list[Msg]) -> tuple[list[Recorded], list[RejectedRecord]]:
        events: list[Recorded] = []
        rejected: list[RejectedRecord] = []
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            item = decode(msg.data, msg.subject)
            if isinstance(item, Rejection):
                rejected.append(RejectedRecord(item, seq))
            else:
                events.append(Recorded(item, seq))
        return events, rejected

    async def commit(self, msgs: list[Msg], events: list[Recorded], rejected: list[RejectedRecord]) -> None:
        started = time.perf_counter()
        # DuckDB work off the event loop: heartbeats and queries keep flowing.
        new, new_rejected = await asyncio.to_thread(self.store.append, events, rejected)
        self.counts["events"] += new
        self.counts["rejected"] += new_rejected
        for msg in msgs:
            await msg.ack()
        self.batches += 1
        self.last_batch_ms = (time.perf_counter() - started) * 1000
        if rejected:
            await self._announce_rejections(rejected)
        self.log.debug("batch_committed", received=len(msgs), new=new, rejected=len(rejected), ms=self.last_batch_ms)

    async def _announce_rejections(self, rejected: list[RejectedRecord]) -> None:
        for rec in rejected:
            rej = rec.rejection
            self.log.warning("event_rejected", reason=rej.reason[:300], subject=rej.subject, stream_seq=rec.stream_seq)
            session = _session_of(rej.subject) or SYSTEM_SESSION
            event = Event.create(
                RecorderRejected(reason=rej.reason, subject=rej.subject, stream_seq=rec.stream_seq, raw_size=len(rej.raw)),
                session_id=session,
                source=self.source,
                id=f"rej-{rec.stream_seq}",  # deterministic: a re-announcement is deduplicated
            )
            try:
                await self.bus.publish(event)
            except (PublishDenied, Exception) as exc:  # noqa: BLE001 - the row is already stored
                self.log.error("rejection_announce_failed", error=str(exc))

    async def _on_max_deliveries(self, msg: Msg) -> None:
        try:
            advisory = json.loads(msg.data)
            seq = int(advisory["stream_seq"])
            consumer = str(advisory.get("consumer", ""))
            original = await self.bus.js.get_msg(STREAM, seq)
            item = decode(original.data or b"", original.subject)
            session = _session_of(original.subject) or SYSTEM_SESSION
            event = Event.create(
                RecorderDeadLettered(
                    consumer=consumer,
                    stream_seq=seq,
                    deliveries=int(advisory.get("deliveries", 0)),
                    original_event_id=item.id if isinstance(item, Event) else item.event_id,
                    original_type=item.type.value if isinstance(item, Event) else item.event_type,
                    original_subject=original.subject,
                ),
                session_id=session,
                source=self.source,
                causation=item.id if isinstance(item, Event) else None,
                correlation_id=item.correlation_id if isinstance(item, Event) else None,
                id=f"dlq-{consumer}-{seq}",
            )
            await self.bus.publish(event)
            self.log.warning("dead_lettered", consumer=consumer, stream_seq=seq, subject=original.subject)
        except Exception as exc:  # noqa: BLE001 - an advisory must never stop the recorder
            self.log.error("dead_letter_failed", error=str(exc))

    async def _audit(self, data: bytes) -> Any:
        request = json.loads(data)
        result = await asyncio.to_thread(self.store.query, str(request.get("sql", "")))
        return result.model_dump()

    async def _health(self, data: bytes) -> Any:
        return {**self.counts, "batches": self.batches, "last_batch_ms": self.last_batch_ms, "pid": os.getpid()}


def _session_of(subject: str | None) -> str | None:
    if not subject:
        return None
    parts = subject.split(".")
    if len(parts) >= 3 and parts[0] == "aar":
        from schemas.base import is_subject_token

        return parts[1] if is_subject_token(parts[1]) else None
    return None


async def main() -> None:
    from services.runtime import service, service_id

    home = AarHome.from_env().ensure()
    async with service("recorder") as (bus, stop, log):
        store = EventStore(home.events_db)
        try:
            await Recorder(bus, store, source=service_id("recorder")).run(stop)
        finally:
            store.close()
