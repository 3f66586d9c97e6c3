"""The recorder: every event on ``aar.>`` into ``events.duckdb``.

- one durable pull consumer (``recorder``), batches of up to ``batch`` messages;
- a batch is committed to an inbox file (``events.inbox-0.duckdb`` or ``-1``) in
  one transaction, *then* acknowledged: a crash before the commit means
  redelivery; a mover task folds the inboxes into the log, where redelivered
  events are ignored on their id, and checkpoints the log, without ever holding
  up a commit or an ack (see ``inbox``);
- messages that are not valid events go to ``rejected_events`` with the reason
  and raw bytes, and a ``recorder.rejected`` event is published;
- ``max_deliver`` exhaustion on any consumer (advisory) becomes a
  ``recorder.dead_lettered`` event;
- read-only audit SQL is answered on ``aarq.recorder.audit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from typing import Any

import nats.errors
import structlog
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from aar.paths import AarHome
from bus import Bus, PublishDenied
from bus.roles import STREAM
from schemas import Event, Rejection, decode
from schemas.recorder import RecorderDeadLettered, RecorderRejected

from .store import EventStore, Recorded, RejectedRecord

DURABLE = "recorder"
SYSTEM_SESSION = "system"
# A fetch this large means a backlog: fetch more while the previous batch commits.
# (Smaller ones wait for the commit instead of asking the server again and again.)
BACKLOG = 100

log = structlog.get_logger("recorder")


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
        checkpoint_wal_bytes: int = 8_000_000,
        idle_after: float = 0.2,
        move_every: float = 0.2,
    ) -> None:
        self.bus = bus
        self.store = store
        self.source = source
        self.batch = batch
        self.fetch_timeout = fetch_timeout
        self.ack_wait = ack_wait
        self.linger = linger
        # The mover checkpoints the log when nothing was committed for ``idle_after``
        # seconds, and under load once its WAL passes this cap (at 2k events/s every
        # ~5 s). Commits go on into the inbox meanwhile, but a checkpoint keeps DuckDB's
        # threads busy: on 2 cores a 32 MB one (~0.4-0.7 s) slowed the commits during it
        # past 80 ms, while 8 MB ones (~0.1-0.2 s) did not (bench/bus.py, 60 s at 2k/s).
        self.checkpoint_wal_bytes = checkpoint_wal_bytes
        self.idle_after = idle_after
        # At most one move per ``move_every`` s: a move is a transaction with a fixed
        # cost, so under load each folds in several commits (bounds how long an acked
        # event takes to show in the views, checkpoints aside).
        self.move_every = move_every
        self.checkpoints = 0
        self.moves = 0
        self._refresh_after = 0.0  # monotonic time before which a failed refresh is not retried
        self._committed = asyncio.Event()  # set after each commit: there is something to move
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
        self.log.info("recorder_ready", db=str(self.store.path),
                      inboxes=[str(p) for p in self.store.inbox_paths], **self.counts)
        done = asyncio.Event()
        mover = asyncio.create_task(self._mover(done))
        try:
            await self._receive(sub, stop)
        finally:
            done.set()
            self._committed.set()  # wake the mover now, not after ``idle_after``
            await mover  # its last move folds in everything committed

    async def _receive(self, sub: Any, stop: asyncio.Event) -> None:
        # Pipelined: while batch n commits in a worker thread (DuckDB releases the
        # GIL), what arrives meanwhile is fetched and decoded; once the commit is done
        # the buffer is topped up (no waiting) and committed at once. Acks still
        # follow each commit.
        loop = asyncio.get_running_loop()
        committing: asyncio.Task[None] | None = None
        pending = _Pending()
        last_start = float("-inf")  # when the latest commit began (loop time)
        backlog = False  # the latest fetch was large: more is waiting on the server
        try:
            while not stop.is_set():
                room = self.batch - len(pending.msgs)
                got = 0
                if room > 0:
                    # Wait for messages only when there is nothing else to do.
                    idle = committing is None and not pending.msgs
                    msgs = await self._fetch(sub, room, self.fetch_timeout if idle else 0.0, backlog)
                    pending.add(*msgs)
                    got = len(msgs)
                    backlog = got >= BACKLOG
                if committing is not None:
                    if not committing.done():
                        if got >= BACKLOG and len(pending.msgs) < self.batch:
                            continue  # a backlog: keep fetching and decoding during the commit
                        await committing
                        continue  # top up with what arrived during that commit
                    committing.result()
                    committing = None
                if not pending.msgs:
                    continue
                # Adaptive linger: a small batch right after the previous commit waits
                # for the rest of ``linger`` (each DuckDB transaction has a fixed cost,
                # so at high rates this keeps batches large). At low rates the previous
                # commit is long past and nothing waits.
                wait = last_start + self.linger - loop.time()
                if len(pending.msgs) < self.batch and wait > 0.001:
                    await asyncio.sleep(wait)
                    continue
                last_start = loop.time()
                committing = asyncio.create_task(self.commit(pending))
                pending = _Pending()
        finally:
            if committing is not None:
                await committing

    async def _mover(self, done: asyncio.Event) -> None:
        """Fold the inboxes into the log after commits (at most every ``move_every`` s,
        so under load each move takes many commits), recycle the idle inbox, checkpoint
        the log past its WAL cap, and when idle catch the projections up and checkpoint.
        Never stops on an error: what was not moved stays in the inbox and is moved
        at the next try (or by the next store to open the log)."""
        dirty = False  # moved since the last idle refresh and checkpoint
        while True:
            try:
                if not self._committed.is_set() and not done.is_set():
                    try:
                        await asyncio.wait_for(self._committed.wait(), self.idle_after)
                    except TimeoutError:
                        if dirty:  # idle: catch the projections up, checkpoint now rather than later
                            await self.refresh_projections()
                            dirty = not await self.checkpoint("idle")
                        continue
                self._committed.clear()
                started = time.monotonic()
                if await self.move():
                    dirty = True
                if done.is_set() and not self._committed.is_set():
                    return
                await self.recycle()
                if self.store.wal_bytes() >= self.checkpoint_wal_bytes:
                    await self.checkpoint("wal_size")  # ``dirty`` stays: projections at idle
                else:  # the rest of ``move_every``, cut short by a stop
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(done.wait(), max(0.0, started + self.move_every - time.monotonic()))
            except Exception as exc:  # noqa: BLE001 - the events are safe in the inbox
                self.log.error("move_failed", error=f"{type(exc).__name__}: {exc}"[:500])
                if done.is_set():
                    return  # the store folds the inbox in again when it closes or next opens
                await asyncio.sleep(1.0)
                self._committed.set()

    async def move(self) -> bool:
        """Fold the inboxes into the log; True when something was moved."""
        started = time.perf_counter()
        moved = await asyncio.to_thread(self.store.move)
        if not moved.upto:
            return False
        self.moves += 1
        self.counts["events"] += moved.events
        self.counts["rejected"] += moved.rejected
        self.log.debug(
            "batch_moved", new=moved.events, rejected=moved.rejected, upto=moved.upto,
            recorded_upto=moved.recorded_upto.timestamp() if moved.recorded_upto else None,
            ms=(time.perf_counter() - started) * 1000,
        )
        return True

    async def _fetch(self, sub: Any, n: int, timeout: float, backlog: bool) -> list[Msg]:
        """Up to ``n`` messages. ``timeout`` > 0: wait up to that long for the first
        to arrive. Otherwise only what the server has now: after a large fetch
        (a backlog) nats-py's fetch, which streams big batches fastest; after a small
        one a ``no_wait`` pull, which answers at once even when nothing is there."""
        if timeout > 0:
            return await Bus.fetch(sub, n, timeout)
        if backlog:
            return await Bus.fetch(sub, n, self.fetch_timeout)
        return await fetch_available(sub, n)

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

    async def commit(self, batch: _Pending) -> None:
        msgs, rejected = batch.msgs, batch.rejected
        started = time.perf_counter()
        # DuckDB work off the event loop: heartbeats and queries keep flowing.
        written = await asyncio.to_thread(self.store.append, batch.events, rejected)
        appended = time.perf_counter()
        self._committed.set()
        for msg in msgs:
            await msg.ack()
        self.batches += 1
        self.last_batch_ms = (time.perf_counter() - started) * 1000
        if rejected:
            await self._announce_rejections(rejected)
        self.log.debug(
            "batch_committed", received=len(msgs), written=written, rejected=len(rejected), ms=self.last_batch_ms,
            append_ms=(appended - started) * 1000,  # the DuckDB write; the rest is acks
            queued_ms=(started - batch.first) * 1000,  # first message fetched -> write began
        )

    async def refresh_projections(self) -> None:
        """Catch the typed projections up. A failure is logged and retried a minute
        later: the views stay exact without them (they parse the rest), only slower."""
        if time.monotonic() < self._refresh_after:
            return
        started = time.perf_counter()
        try:
            added = await asyncio.to_thread(self.store.refresh_projections)
        except Exception as exc:  # noqa: BLE001 - derived data must never stop the recorder
            self._refresh_after = time.monotonic() + 60.0
            self.log.error("projections_refresh_failed", error=f"{type(exc).__name__}: {exc}"[:500])
            return
        if added:
            self.log.debug("projections_refreshed", rows=added, ms=(time.perf_counter() - started) * 1000)

    async def checkpoint(self, reason: str) -> bool:
        """Checkpoint; False when DuckDB declined (an audit query was open): the caller
        tries again at its next chance."""
        wal = self.store.wal_bytes()
        started = time.perf_counter()
        done = await asyncio.to_thread(self.store.checkpoint)
        ms = (time.perf_counter() - started) * 1000
        if done:
            self.checkpoints += 1
            self.log.debug("checkpointed", reason=reason, wal_bytes=wal, ms=ms)
        else:
            self.log.debug("checkpoint_deferred", reason=reason, wal_bytes=wal, ms=ms)
        return done

    async def recycle(self) -> None:
        """Empty and checkpoint the idle inbox file once it is all in the log."""
        started = time.perf_counter()
        if await asyncio.to_thread(self.store.recycle):
            self.log.debug("inbox_recycled", ms=(time.perf_counter() - started) * 1000)

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
        return {**self.counts, "batches": self.batches, "last_batch_ms": self.last_batch_ms,
                "checkpoints": self.checkpoints, "wal_bytes": self.store.wal_bytes(), "moves": self.moves,
                "inbox": self.store.pending(), "pid": os.getpid()}


async def fetch_available(sub: JetStreamContext.PullSubscription, batch: int, timeout: float = 1.0) -> list[Msg]:
    """Up to ``batch`` messages the consumer can deliver *now*, never waiting for new
    ones: a pull request with ``no_wait`` and no ``expires``, which the server answers
    with what it has and then a 404 status (~1 ms for an empty answer).
    ``sub.fetch(batch, small_timeout)`` is no substitute: with nothing to deliver it
    sends a second, lingering request and runs out its timeout, and with many messages
    to deliver it returns as few as arrive within that timeout. nats-py has no public
    call for this, so this uses the same subscription internals as its ``fetch``."""
    queue = sub._sub._pending_queue  # noqa: SLF001 - leftovers of earlier pull requests first
    msgs: list[Msg] = []
    while not queue.empty() and len(msgs) < batch:
        msg = queue.get_nowait()
        sub._sub._pending_size -= len(msg.data)  # noqa: SLF001
        if not JetStreamContext.is_status_msg(msg):
            msgs.append(msg)
    if len(msgs) >= batch:
        return msgs
    request = json.dumps({"batch": batch - len(msgs), "no_wait": True}).encode()
    try:
        await sub._nc.publish(sub._nms, request, sub._deliver)  # noqa: SLF001
        while len(msgs) < batch:
            msg = await sub._sub.next_msg(timeout)  # noqa: SLF001
            if JetStreamContext.is_status_msg(msg):
                break  # 404 no (more) messages, or a stale status of an earlier request
            msgs.append(msg)
    except (nats.errors.TimeoutError, asyncio.TimeoutError):
        pass  # no answer (yet): the caller simply asks again
    except (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError,
            nats.errors.StaleConnectionError) as exc:
        log.warning("fetch_unavailable", error=type(exc).__name__)
        await asyncio.sleep(0.25)  # the client reconnects on its own
    return msgs


class _Pending:
    """Messages fetched and decoded, not yet committed."""

    def __init__(self) -> None:
        self.msgs: list[Msg] = []
        self.events: list[Recorded] = []
        self.rejected: list[RejectedRecord] = []
        self.first = 0.0  # perf_counter when the first message was fetched

    def add(self, *msgs: Msg) -> None:
        if not msgs:
            return
        if not self.msgs:
            self.first = time.perf_counter()
        self.msgs.extend(msgs)
        events, rejected = Recorder.decode(list(msgs))
        self.events.extend(events)
        self.rejected.extend(rejected)


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
