"""Read ``forum.*`` events back from the ``AAR`` stream, in stream order.

One message-get request per forum event: "the next message at or after
sequence n whose subject matches ``aar.*.forum.>``". The server skips every
other subject itself, so the cost is the number of forum events, not the size
of the log. Direct get (answered by any replica, no API round trip) is used
when the stream allows it, the ``STREAM.MSG.GET`` API otherwise; the forum role
may publish to both (bus/roles.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import NamedTuple

from nats.js.errors import NotFoundError

from bus import Bus
from bus.client import PUBLISHER_HEADER
from bus.roles import STREAM

FORUM_SUBJECTS = "aar.*.forum.>"


class StoredMessage(NamedTuple):
    seq: int
    subject: str
    data: bytes
    publisher: str | None = None  # the gateway's Aar-Publisher header


async def stream_allows_direct(bus: Bus) -> bool | None:
    """Whether the stream answers direct gets; None when it does not exist (yet)."""
    try:
        info = await bus.js.stream_info(STREAM)
    except NotFoundError:
        return None
    return bool(info.config.allow_direct)


async def scan(
    bus: Bus, start_seq: int = 1, *, subjects: str = FORUM_SUBJECTS, direct: bool = False
) -> AsyncIterator[StoredMessage]:
    """Every stored message on ``subjects`` from ``start_seq`` on, oldest first.
    Ends at the end of the stream (or when the stream does not exist)."""
    seq = max(1, start_seq)
    while True:
        try:
            msg = await bus.js.get_msg(STREAM, seq=seq, subject=subjects, next=True, direct=direct)
        except NotFoundError:
            return  # no further message on these subjects (or no stream)
        if msg.seq is None or msg.subject is None:
            return
        publisher = (msg.headers or {}).get(PUBLISHER_HEADER)
        yield StoredMessage(int(msg.seq), msg.subject, bytes(msg.data or b""), publisher)
        seq = int(msg.seq) + 1
