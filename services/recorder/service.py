"""The recorder: every event on ``aar.>`` into ``events.duckdb``.

- one durable pull consumer (``recorder``), batches of up to ``batch`` messages;
- a batch is committed to an inbox file (``events.inbox-0.duckdb`` or ``-1``) in
  one transaction, *then* acknowledged: a crash before the commit means
  redelivery; a mover task folds the inboxes into the log, where redelivered
  events are ignored on their id, and checkpoints the log, without ever holding
  up a commit or an ack (see ``inbox``);
- messages that are not valid events go to ``rejected_events`` with the reason
  and raw bytes, and a ``recorder.rejected`` event is published; so do events the
  log cannot store as they are, and conflicts (an id already recorded with another
  body). No message can crash the recorder or hold up the ones after it (``poison``);
  a batch that cannot be stored at all is not acknowledged (the server redelivers it);
- ``max_deliver`` exhaustion on any consumer (advisory) becomes a
  ``recorder.dead_lettered`` event;
- read-only audit SQL is answered on ``aarq.recorder.audit``, on a thread pool of
  its own (``audit_pool``), never the executor the appends and moves use.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from datetime import datetime
from typing import Any

import structlog
from nats.aio.msg import Msg

from bus import Bus, PublishDenied, decode_msg
from bus.pull import NoWaitPuller
from bus.query import Empty
from bus.roles import STREAM
from core.audit import AuditFailed, AuditRequest, AuditResult
from core.paths import AarHome
from schemas import Event, Rejection, decode
from schemas.base import MAX_NAME, MAX_TEXT, derived_id  # (the longest reason and subject of a recorder.rejected)
from schemas.recorder import RecorderDeadLettered, RecorderRejected

from . import poison
from .audit import MAX_BYTES, MAX_ROWS
from .audit_pool import DEFAULT_QUEUE, DEFAULT_WORKERS, AuditPool
from .queries import AUDIT, HEALTH, RecorderHealth
from .store import EventStore, Recorded, RejectedRecord

DURABLE = "recorder"
SYSTEM_SESSION = "system"
# A fetch this large means a backlog: fetch more while the previous batch commits.
# (Smaller ones wait for the commit instead of asking the server again and again.)
BACKLOG = 100
# Room left in a reply for the envelope around the rows (ok, error, columns, ...).
REPLY_MARGIN = 32 * 1024
# After a batch could not be stored at all (the store is failing, not a message).
COMMIT_RETRY_S = 1.0

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
        audit_workers: int = DEFAULT_WORKERS,
        audit_queue: int = DEFAULT_QUEUE,
        audit_timeout_s: float | None = None,
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
        self.failed_commits = 0
        self.log = structlog.get_logger("recorder").bind(service=source)
        # Audits on threads of their own: the appends and moves (asyncio's default
        # executor) never queue behind them.
        self.audits = AuditPool(store, workers=audit_workers, queue=audit_queue, timeout_s=audit_timeout_s)

    async def run(self, stop: asyncio.Event) -> None:
        # Explicit acks, one per message. (AckPolicy.ALL would be cheaper but is not
        # safe: after a crash, new messages arrive before the dead process's unacked
        # ones are redelivered, and acking a new one would ack those too, unrecorded.)
        sub = await self.bus.pull(DURABLE, "aar.>", ack_wait=self.ack_wait, max_deliver=-1, max_ack_pending=50_000)
        self._puller = NoWaitPuller(self.bus.nc, STREAM, DURABLE)  # the same consumer, its own inbox
        self.counts = await asyncio.to_thread(self.store.counts)
        await self.bus.serve("recorder", [AUDIT.answer(self._audit), HEALTH.answer(self._health)])
        await self.bus.nc.subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.*", cb=self._on_max_deliveries
        )
        self.log.info("recorder_ready", db=str(self.store.path),
                      inboxes=[str(p) for p in self.store.inbox_paths], chain_batch=self.store.chain_batch,
                      chain_head=self.store.chain_head, **self.counts)
        done = asyncio.Event()
        mover = asyncio.create_task(self._mover(done))
        try:
            await self._receive(sub, stop)
        finally:
            await self._puller.close()
            self.audits.close()  # running audits are interrupted: nothing waits for them
            done.set()
            self._committed.set()  # wake the mover now, not after ``idle_after``
            await mover  # its last move folds in everything committed
            self.log.info("recorder_stopped", chain_batch=self.store.chain_batch, chain_head=self.store.chain_head)

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
            ms=(time.perf_counter() - started) * 1000, chain_batch=moved.chain_batch, chain_head=moved.chain_head,
        )
        for made in moved.made:  # conflicts, and rows the log refused
            await self._announce(made.stream_seq, made.subject, made.reason, made.raw_size)
        return True

    async def _fetch(self, sub: Any, n: int, timeout: float, backlog: bool) -> list[Msg]:
        """Up to ``n`` messages. ``timeout`` > 0: wait up to that long for the first
        to arrive. Otherwise only what the server has now: after a large fetch
        (a backlog) nats-py's fetch, which streams big batches fastest; after a small
        one a ``no_wait`` pull, which answers at once even when nothing is there.
        Messages that came late for an earlier ``no_wait`` pull go first (nats-py's
        fetch does not see them: the puller has its own inbox), so they are not left
        to wait out ``ack_wait`` and be delivered a second time."""
        if self._puller.leftovers:
            return await fetch_available(self._puller, n)
        if timeout > 0:
            return await Bus.fetch(sub, n, timeout)
        if backlog:
            return await Bus.fetch(sub, n, self.fetch_timeout)
        return await fetch_available(self._puller, n)

    @staticmethod
    def decode(msgs: list[Msg]) -> tuple[list[Recorded], list[RejectedRecord]]:
        """Each message as an event or a rejection; never raises, whatever it holds."""
        events: list[Recorded] = []
        rejected: list[RejectedRecord] = []
        for msg in msgs:
            seq, stamp = _position(msg)
            item = _decode(msg)
            if isinstance(item, Event):
                events.append(Recorded(item, seq, msg.data))
            else:
                rejected.append(RejectedRecord(item, seq, stamp))
        return events, rejected

    async def commit(self, batch: _Pending) -> None:
        """Store the batch, then acknowledge it. If it cannot be stored at all (the
        store is failing: no message can cause that, see ``poison``), nothing is
        acknowledged: the server redelivers it, and the recorder goes on."""
        msgs, rejected = batch.msgs, batch.rejected
        started = time.perf_counter()
        try:
            # DuckDB work off the event loop: heartbeats and queries keep flowing.
            written = await asyncio.to_thread(self.store.append_batch, batch.events, rejected)
        except Exception as exc:  # noqa: BLE001 - never ack what was not stored; never die of it
            self.failed_commits += 1
            self.log.error("commit_failed", messages=len(msgs), error=f"{type(exc).__name__}: {exc}"[:500],
                           hint="not acknowledged: the server redelivers these messages")
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.nak(delay=COMMIT_RETRY_S)
            await asyncio.sleep(COMMIT_RETRY_S)
            return
        appended = time.perf_counter()
        self._committed.set()
        for msg in msgs:
            try:
                await msg.ack()
            except Exception as exc:  # noqa: BLE001 - stored: a redelivery is deduplicated
                self.log.warning("ack_failed", error=f"{type(exc).__name__}: {exc}"[:300])
        self.batches += 1
        self.last_batch_ms = (time.perf_counter() - started) * 1000
        for rec in rejected:
            rej = rec.rejection
            await self._announce(rec.stream_seq, getattr(rej, "subject", None), getattr(rej, "reason", ""),
                                 len(poison.raw_bytes(getattr(rej, "raw", b""))), rec.stream_time)
        for made in written.made:  # events that could not be stored as they were
            await self._announce(made.stream_seq, made.subject, made.reason, made.raw_size)
        self.log.debug(
            "batch_committed", received=len(msgs), written=written.rows, rejected=len(rejected) + len(written.made),
            ms=self.last_batch_ms,
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

    async def _announce(self, stream_seq: int | None, subject: str | None, reason: str, raw_size: int,
                        stamp: Any = None) -> None:
        """Publish ``recorder.rejected`` for a stored rejection. Never raises: the row is
        stored whatever happens here. Its id is derived (keyed: nobody else can predict and
        claim it) from the stream sequence, and its time is the message's time in the
        stream, so announcing again is the same event (deduplicated)."""
        try:
            reason_text = poison.storable(reason, MAX_TEXT) or ""
            subject_text = poison.storable(subject, MAX_NAME)
            self.log.warning("event_rejected", reason=reason_text[:300], subject=subject_text, stream_seq=stream_seq)
            if stream_seq is None or stream_seq < 0:
                return  # not from the stream: nothing to name it by
            event = Event.create(
                RecorderRejected(reason=reason_text, subject=subject_text, stream_seq=stream_seq, raw_size=raw_size),
                session_id=_session_of(subject_text) or SYSTEM_SESSION,
                source=self.source,
                id=derived_id("rej-", stream_seq),
                time=stamp if isinstance(stamp, datetime) and stamp.tzinfo is not None else None,
            )
            await self.bus.publish(event)
        except (PublishDenied, Exception) as exc:  # noqa: BLE001 - the row is already stored
            self.log.error("rejection_announce_failed", stream_seq=stream_seq, error=f"{type(exc).__name__}: {exc}"[:500])

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
                id=derived_id("dlq-", consumer, seq),
            )
            await self.bus.publish(event)
            self.log.warning("dead_lettered", consumer=consumer, stream_seq=seq, subject=original.subject)
        except Exception as exc:  # noqa: BLE001 - an advisory must never stop the recorder
            self.log.error("dead_letter_failed", error=str(exc))

    async def _audit(self, request: AuditRequest, asker: str = "") -> AuditResult:
        """An ``core.audit.AuditRequest`` (``{"sql": ..., "params"?: [...], "timeout_s"?: ...,
        "max_rows"?: ...}``) -> the result (see ``audit.run_query``), cut to fit one NATS
        reply. A malformed request or a bad parameter is an ``AuditRefused`` /
        ``AuditParamError`` reply naming what is wrong; a statement the database cannot
        answer (an unknown column) an ``AuditFailed`` one."""
        import duckdb

        max_rows = None if request.max_rows is None else min(request.max_rows, MAX_ROWS)
        room = self._reply_room()
        try:
            result = await self.audits.run(request.sql, request.params, timeout_s=request.timeout_s,
                                           max_bytes=room, max_rows=max_rows)
        except duckdb.Error as exc:
            raise AuditFailed(f"{type(exc).__name__}: {exc}") from None
        # The estimate in run_query is generous; still, never send what the server refuses.
        while len(result.model_dump_json().encode("utf-8", "backslashreplace")) > room and result.rows:
            keep = len(result.rows) // 2
            result = AuditResult(columns=result.columns, rows=result.rows[:keep], truncated=True,
                                 truncated_reason=f"the result did not fit one reply ({room:,} bytes): only "
                                                  f"the first {keep:,} rows are returned")
        return result

    def _reply_room(self) -> int:
        """Bytes of rows one reply may carry (the server's max_payload, less a margin)."""
        try:
            payload = int(self.bus.nc.max_payload)
        except (AttributeError, TypeError, ValueError):
            payload = 1024 * 1024
        return max(4096, min(MAX_BYTES, payload - REPLY_MARGIN))

    async def _health(self, request: Empty, asker: str = "") -> RecorderHealth:
        return RecorderHealth(
            events=self.counts["events"], rejected=self.counts["rejected"], batches=self.batches,
            last_batch_ms=self.last_batch_ms, checkpoints=self.checkpoints, wal_bytes=self.store.wal_bytes(),
            moves=self.moves, inbox=self.store.pending(), pid=os.getpid(), failed_commits=self.failed_commits,
            audits_running=self.audits.running, audits_waiting=self.audits.waiting, audits_done=self.audits.done,
            chain_batch=self.store.chain_batch, chain_head=self.store.chain_head)


async def fetch_available(puller: NoWaitPuller, batch: int, timeout: float = 1.0) -> list[Msg]:
    """Up to ``batch`` messages the consumer can deliver *now*, never waiting for new
    ones: a pull request with ``no_wait`` and no ``expires``, which the server answers
    with what it has and then a 404 status (~1 ms for an empty answer).
    ``sub.fetch(batch, small_timeout)`` is no substitute: with nothing to deliver it
    sends a second, lingering request and runs out its timeout, and with many messages
    to deliver it returns as few as arrive within that timeout. nats-py has no public
    call for this: ``NoWaitPuller`` speaks the pull protocol on public API only."""
    return await puller.fetch(batch, timeout)


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


def _decode(msg: Msg) -> Event | Rejection:
    """An event or a rejection; never raises (a decoder that does is a rejection too)."""
    try:
        item = decode_msg(msg)  # checks the publisher the gateway names, too
        if isinstance(item, (Event, Rejection)):
            return item
        why = f"the decoder returned a {type(item).__name__}"
    except Exception as exc:  # noqa: BLE001 - no message may stop the recorder
        why = f"{type(exc).__name__}: {exc}"
    return Rejection.model_construct(
        reason=poison.storable(f"undecodable: {why}", poison.MAX_REASON) or "undecodable", raw=poison.raw_bytes(msg.data),
        subject=poison.storable(getattr(msg, "subject", None)), event_id=None, event_type=None, session_id=None)


def _position(msg: Msg) -> tuple[int | None, datetime | None]:
    """The message's stream sequence and time (None, None if its metadata is unreadable)."""
    try:
        meta = msg.metadata
        return int(meta.sequence.stream), meta.timestamp
    except Exception:  # noqa: BLE001 - unreadable metadata: the message is still recorded, without a position
        return None, None


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
            await Recorder(bus, store, source=service_id("recorder"),
                           audit_workers=_env_int("AAR_AUDIT_WORKERS", DEFAULT_WORKERS),
                           audit_queue=_env_int("AAR_AUDIT_QUEUE", DEFAULT_QUEUE)).run(stop)
        finally:
            store.close()


def _env_int(name: str, default: int) -> int:
    try:
        return max(0, int(os.environ.get(name, "")))
    except ValueError:
        return default
