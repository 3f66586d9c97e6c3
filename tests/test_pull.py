"""``bus.pull.NoWaitPuller`` against a real nats-server: the JetStream pull protocol
it speaks (``no_wait`` requests, 404/408/409 statuses, answers that come late) and
what the recorder relies on: no message lost, none delivered twice while acked, no
status message ever returned, and never a wait for messages that are not there."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from nats.aio.msg import Msg

from bus import STREAM, Bus, NatsServer, Role
from bus.pull import NoWaitPuller, status_of
from services.recorder.service import DURABLE as RECORDER_DURABLE

from .conftest import settings, wait_until

SUBJECT = "aar.s-pull.test.thing"


def seq(msg: Msg) -> int:
    return int(msg.metadata.sequence.stream)


def check(msgs: list[Msg]) -> list[Msg]:
    """Every returned message is a stream message (an ack subject, stream metadata),
    never one of the server's status messages."""
    for msg in msgs:
        assert msg.reply.startswith("$JS.ACK."), f"not a stream message: {msg.subject} {msg.headers}"
        assert msg.metadata.sequence.stream > 0
        if status_of(msg) is not None:  # only a publisher's own header may say Status
            assert msg.data, f"a status message was returned: {msg.headers}"
    return msgs


async def publish(bus: Bus, n: int, subject: str = SUBJECT) -> list[int]:
    return await bus.publish_raw_many([(subject, f"m{i}".encode(), None) for i in range(n)])


async def ack_all(bus: Bus, msgs: list[Msg]) -> None:
    for msg in msgs:
        await msg.ack()
    await bus.nc.flush()  # the acks are plain publishes: make sure the server has them


async def settled(bus: Bus, durable: str, timeout: float = 5.0) -> tuple[int, int, int]:
    """The consumer's (pending, ack pending, waiting) once nothing is left, or what is
    left after ``timeout`` (the server takes acks in a moment of its own)."""
    deadline = time.monotonic() + timeout
    while (now := await counts(bus, durable)) != (0, 0, 0) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return now


async def consumer(bus: Bus, durable: str, **kw: object) -> None:
    """A durable pull consumer on the stream (created as the services create theirs)."""
    await bus.pull(durable, "aar.>", **kw)  # type: ignore[arg-type]  # each test passes the options it needs


async def counts(bus: Bus, durable: str) -> tuple[int, int, int]:
    info = await bus.js.consumer_info(STREAM, durable)
    return info.num_pending, info.num_ack_pending, info.num_waiting


def answers_late(monkeypatch: pytest.MonkeyPatch, puller: NoWaitPuller) -> None:
    """From now on every answer to the puller's requests comes late: right after a
    request is handed to the client (not yet sent), the event loop is held past the
    fetch's timeout (use timeouts under 10 ms), so the fetch gives up before reading
    anything, and the whole answer arrives after it returned."""
    real = puller.nc.publish

    async def publish_then_hold(subject: str, payload: bytes = b"", reply: str = "", **kw: object) -> None:
        await real(subject, payload, reply=reply, **kw)  # type: ignore[arg-type]  # headers, passed through as given
        if subject == puller.subject:
            time.sleep(0.02)  # blocking on purpose: nothing is read meanwhile

    monkeypatch.setattr(puller.nc, "publish", publish_then_hold)


@pytest.fixture
async def puller(admin: Bus) -> AsyncIterator[NoWaitPuller]:
    await consumer(admin, "pulltest", ack_wait=30.0, max_deliver=-1)
    p = NoWaitPuller(admin.nc, STREAM, "pulltest")
    try:
        yield p
    finally:
        await p.close()


async def test_every_message_once_in_batches(nats_server: NatsServer, admin: Bus) -> None:
    """(a) 500 messages, pulled in batches of 37 with acks, as the recorder pulls
    (its identity, its consumer, its permissions): each exactly once, none left."""
    rec = await Bus.connect(settings(nats_server, Role.RECORDER), name="pull-rec")
    puller = NoWaitPuller(rec.nc, STREAM, RECORDER_DURABLE)
    try:
        await rec.pull(RECORDER_DURABLE, "aar.>", ack_wait=30.0, max_deliver=-1)
        published = await publish(admin, 500)
        seen: Counter[int] = Counter()
        empty = 0
        deadline = time.monotonic() + 60
        while sum(seen.values()) < 500 and time.monotonic() < deadline:
            msgs = check(await puller.fetch(37, timeout=2.0))
            assert len(msgs) <= 37
            empty = empty + 1 if not msgs else 0
            assert empty < 20, "the puller keeps answering nothing while messages wait"
            seen.update(seq(m) for m in msgs)
            await ack_all(rec, msgs)
        assert sorted(seen) == sorted(published)
        assert set(seen.values()) == {1}, f"delivered twice: {[s for s, c in seen.items() if c > 1]}"
        assert await puller.fetch(37) == []
        assert puller.leftovers == 0
        assert await counts(rec, RECORDER_DURABLE) == (0, 0, 0)
    finally:
        await puller.close()
        await rec.close()


async def test_beside_nats_py_fetch_on_the_same_consumer(admin: Bus, puller: NoWaitPuller) -> None:
    """The recorder alternates nats-py's fetch and the puller on one consumer: the
    two inboxes never take each other's messages, and none is lost."""
    sub = await admin.js.pull_subscribe("aar.>", durable="pulltest", stream=STREAM)
    published = await publish(admin, 400)
    seen: Counter[int] = Counter()
    turn = 0
    deadline = time.monotonic() + 60
    while sum(seen.values()) < 400 and time.monotonic() < deadline:
        turn += 1
        msgs = await (puller.fetch(29) if turn % 2 else Bus.fetch(sub, 41, 0.5))
        seen.update(seq(m) for m in check(msgs))
        await ack_all(admin, msgs)
    assert sorted(seen) == sorted(published) and set(seen.values()) == {1}
    assert await puller.fetch(50) == [] and await Bus.fetch(sub, 50, 0.2) == []


async def test_empty_answers_at_once(admin: Bus, puller: NoWaitPuller) -> None:
    """(b) Nothing to deliver: an empty answer in milliseconds (a 404), not the timeout."""
    for _ in range(5):
        started = time.monotonic()
        assert await puller.fetch(100, timeout=5.0) == []
        assert time.monotonic() - started < 0.5
    assert puller.leftovers == 0  # each 404 was read as the end of its own request


async def test_never_waits_for_later_messages(admin: Bus, puller: NoWaitPuller) -> None:
    """(c) A message published after the fetch began is not waited for, and no
    request lingers on the server to capture it; the next fetch returns it once."""

    async def later() -> None:
        await asyncio.sleep(1.0)
        await publish(admin, 1)

    task = asyncio.create_task(later())
    started = time.monotonic()
    got = await puller.fetch(10, timeout=5.0)
    elapsed = time.monotonic() - started
    await task
    assert got == [] and elapsed < 1.0
    assert (await counts(admin, "pulltest"))[2] == 0  # no waiting (lingering) pull request
    msgs = check(await puller.fetch(10))
    assert [seq(m) for m in msgs] == [1]
    await ack_all(admin, msgs)
    assert await puller.fetch(10) == []


async def test_redelivery_only_after_ack_wait(admin: Bus) -> None:
    """(d) Unacked messages come back after ``ack_wait``, not before; acked ones never."""
    await consumer(admin, "pullwait", ack_wait=2.0, max_deliver=-1)
    puller = NoWaitPuller(admin.nc, STREAM, "pullwait")
    try:
        published = await publish(admin, 20)
        first = check(await puller.fetch(50))
        assert sorted(seq(m) for m in first) == published
        started = time.monotonic()
        acked, unacked = first[:10], first[10:]
        await ack_all(admin, acked)
        assert await puller.fetch(50) == []  # within ack_wait: nothing again
        assert time.monotonic() - started < 2.0, "too slow to tell a redelivery from none"
        await asyncio.sleep(3.0)
        again = check(await puller.fetch(50))
        assert sorted(seq(m) for m in again) == sorted(seq(m) for m in unacked)
        assert all(m.metadata.num_delivered == 2 for m in again)
        await ack_all(admin, again)
        await asyncio.sleep(3.0)
        assert await puller.fetch(50) == []  # acked: never delivered again
        assert await settled(admin, "pullwait") == (0, 0, 0)
    finally:
        await puller.close()


async def test_late_answers_returned_once(admin: Bus, puller: NoWaitPuller, monkeypatch: pytest.MonkeyPatch) -> None:
    """(e) A fetch that gives up before the server's answer arrives:
    the answer's messages come with the next fetches, each exactly once, and its
    late 404 does not cut a later request short."""
    published = await publish(admin, 300)
    answers_late(monkeypatch, puller)
    assert await puller.fetch(1000, timeout=0.001) == []
    monkeypatch.undo()
    await wait_until(lambda: _true(puller.leftovers == 301), 10, "the late answer (300 messages + 404)")
    more = await publish(admin, 50)  # after the late 404: a later request must still get them
    seen: Counter[int] = Counter()
    for _ in range(100):
        msgs = check(await puller.fetch(37))
        if not msgs:
            break
        assert len(msgs) <= 37
        seen.update(seq(m) for m in msgs)
        await ack_all(admin, msgs)
    assert sorted(seen) == sorted(published + more)
    assert set(seen.values()) == {1}, f"delivered twice: {[s for s, c in seen.items() if c > 1]}"
    assert puller.leftovers == 0
    assert await settled(admin, "pulltest") == (0, 0, 0)


async def test_late_status_does_not_end_the_next_request(
    admin: Bus, puller: NoWaitPuller, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(e) A status of an earlier request that arrives while a later one is being
    answered is skipped: the later request is read to its own end. (The late status
    is made to arrive first: right after the request, the client sends a ``Status:
    404`` to the reply subject of an earlier request; that is routed at once, while
    JetStream answers the request a little later.)"""
    published = await publish(admin, 120)
    real = admin.nc.publish
    stale: list[str] = []

    async def publish_then_stale_404(subject: str, payload: bytes = b"", reply: str = "", **kw: object) -> None:
        await real(subject, payload, reply=reply, **kw)  # type: ignore[arg-type]  # headers, passed through as given
        if subject == puller.subject:
            stale.append(f"{reply.rsplit('.', 1)[0]}.0")
            await real(stale[-1], b"", headers={"Status": "404", "Description": "No Messages"})

    monkeypatch.setattr(admin.nc, "publish", publish_then_stale_404)
    msgs = check(await puller.fetch(500, timeout=5.0))
    monkeypatch.undo()
    assert stale, "the puller sent no request"
    assert sorted(seq(m) for m in msgs) == published
    await ack_all(admin, msgs)


async def test_status_messages_never_returned(admin: Bus, puller: NoWaitPuller, monkeypatch: pytest.MonkeyPatch) -> None:
    """(f) Status messages (404s, late ones included) are never returned, nor counted
    in a batch; a stream message whose publisher set a ``Status`` header is returned."""
    answers_late(monkeypatch, puller)
    for _ in range(5):
        assert await puller.fetch(5, timeout=0.001) == []
    monkeypatch.undo()
    await wait_until(lambda: _true(puller.leftovers >= 1), 10, "the late 404s")  # (earlier ones: drained)
    await asyncio.sleep(0.2)
    assert await puller.fetch(5, timeout=5.0) == []  # only statuses queued: all skipped, then its own 404
    assert puller.leftovers == 0
    ack = await admin.js.publish(SUBJECT, b"looks like a status", headers={"Status": "404"})
    published = [ack.seq, *await publish(admin, 3)]
    msgs = check(await puller.fetch(10))
    assert [seq(m) for m in msgs] == published
    assert msgs[0].data == b"looks like a status"
    await ack_all(admin, msgs)
    assert await settled(admin, "pulltest") == (0, 0, 0)


async def test_connection_closed_returns_nothing(nats_server: NatsServer, admin: Bus) -> None:
    """A closed connection: a warning, a short pause, an empty answer; no exception."""
    await consumer(admin, "pullclosed")
    other = await Bus.connect(settings(nats_server, Role.ADMIN), name="pull-closed")
    puller = NoWaitPuller(other.nc, STREAM, "pullclosed")
    assert await puller.fetch(5) == []
    await other.close()
    started = time.monotonic()
    assert await puller.fetch(5) == []
    assert time.monotonic() - started >= 0.2
    await puller.close()  # no error either


async def test_pull_protocol_as_relied_on(admin: Bus) -> None:
    """What ``NoWaitPuller`` relies on, spoken with the public client API alone (and
    why nats-py is pinned to a minor version): a ``no_wait`` request is answered with
    the messages there are, each with an ``$JS.ACK`` reply subject, then a ``404``
    status without body or reply subject; a fulfilled batch ends without a status;
    an expired request ends with a ``408``."""
    await consumer(admin, "pullproto")
    inbox = admin.nc.new_inbox()
    sub = await admin.nc.subscribe(inbox)
    subject = f"$JS.API.CONSUMER.MSG.NEXT.{STREAM}.pullproto"
    assert NoWaitPuller(admin.nc, STREAM, "pullproto").subject == subject

    async def answer(request: bytes, until_status: bool = True, quiet: float = 0.3) -> list[Msg]:
        await admin.nc.publish(subject, request, reply=inbox)
        out: list[Msg] = []
        while True:
            try:
                msg = await sub.next_msg(timeout=5.0 if until_status else quiet)
            except TimeoutError:
                return out
            out.append(msg)
            if until_status and status_of(msg):
                return out

    empty = await answer(b'{"batch": 5, "no_wait": true}')
    assert [(status_of(m), m.reply, m.data) for m in empty] == [("404", "", b"")]
    published = await publish(admin, 3)
    got = await answer(b'{"batch": 5, "no_wait": true}')
    assert [status_of(m) for m in got] == [None, None, None, "404"] and got[-1].reply == ""
    assert [seq(m) for m in got[:3]] == published and all(m.reply.startswith("$JS.ACK.") for m in got[:3])
    for msg in got[:3]:
        await msg.ack()
    more = await publish(admin, 2)
    full = await answer(b'{"batch": 2, "no_wait": true}', until_status=False)
    assert [seq(m) for m in full] == more and all(status_of(m) is None for m in full)
    for msg in full:
        await msg.ack()
    started = time.monotonic()
    expired = await answer(b'{"batch": 1, "expires": 300000000}')  # 0.3 s, in nanoseconds
    assert [(status_of(m), m.reply) for m in expired] == [("408", "")]
    assert time.monotonic() - started >= 0.25
    await sub.unsubscribe()


async def test_bad_batch() -> None:
    with pytest.raises(ValueError):
        await NoWaitPuller(None, STREAM, "x").fetch(0)  # type: ignore[arg-type]  # no client: refused before use


async def _true(value: bool) -> bool:
    return value
