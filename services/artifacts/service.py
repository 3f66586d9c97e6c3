"""The artifacts service: answers put/get and announces every new blob with ``artifact.stored``.

Each request is answered in a task of its own (one asker's flood holds up nobody
else's), into the asker's own inbox only. What an identity may store is bounded, by
role (``PUT_BUDGETS``; ``AAR_ARTIFACT_BUDGETS`` = JSON {role: [bytes per minute, puts
per minute, total bytes]}): bytes per minute (each put costing its size plus
``PUT_COST``), puts per minute (each announced with an event: an agent must not spend
the service's own publish budget), and a total since the service started."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import Awaitable, Callable

import structlog
from nats.aio.msg import Msg

from bus import Bus, Role
from bus.budget import ByteBudget
from bus.client import BusError, query_subject, reply_allowed
from bus.roles import role_of
from core.paths import AarHome
from schemas import Event
from schemas.artifact import ArtifactKind, ArtifactStored
from schemas.base import derived_id, is_subject_token

from .client import H_ERROR, H_KIND, H_MEDIA, H_NAME, H_NEW, H_SESSION, H_SHA
from .store import ArtifactError, BlobStore

SYSTEM_SESSION = "system"
PUT_COST = 512  # what a put costs beyond its bytes (the announcement, the file)
MB = 1024 * 1024
# (bytes per minute, puts per minute, total bytes since the service started) per role;
# the other roles: DEFAULT_BUDGET.
PUT_BUDGETS: dict[Role, tuple[int, int, int]] = {
    Role.AGENT: (20 * MB, 60, 2048 * MB),  # method code (200 KB each) and notes
    Role.TRAINER: (500 * MB, 6000, 1 << 62),  # predictions and logs of every job
    Role.SCORER: (500 * MB, 6000, 1 << 62),  # weak labels
}
DEFAULT_BUDGET = (100 * MB, 600, 1 << 62)
BUDGETS_ENV = "AAR_ARTIFACT_BUDGETS"


def budgets_from_env(env: dict[str, str] | None = None) -> dict[Role, tuple[int, int, int]]:
    raw = (os.environ if env is None else env).get(BUDGETS_ENV, "")
    budgets = dict(PUT_BUDGETS)
    if raw:
        try:
            budgets.update({Role(k): (int(v[0]), int(v[1]), int(v[2])) for k, v in json.loads(raw).items()})
        except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
            raise ValueError(f"{BUDGETS_ENV} must be JSON {{role: [bytes per minute, puts per minute, "
                             f"total bytes]}}: {exc}") from None
    return budgets


class ArtifactService:
    def __init__(self, bus: Bus, store: BlobStore, *, source: str = "artifacts",
                 budgets: dict[Role, tuple[int, int, int]] | None = None) -> None:
        self.bus = bus
        self.store = store
        self.source = source
        self.budgets = PUT_BUDGETS if budgets is None else budgets
        self._rates: dict[str, tuple[ByteBudget, ByteBudget]] = {}  # identity -> (bytes, puts)
        self._totals: dict[str, int] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.log = structlog.get_logger("artifacts").bind(service=source)

    async def run(self, stop: asyncio.Event) -> None:
        subs = [
            await self.bus.nc.subscribe(query_subject("artifacts", "put"), queue="artifacts",
                                        cb=self._spawn(self._put)),
            await self.bus.nc.subscribe(query_subject("artifacts", "get"), queue="artifacts",
                                        cb=self._spawn(self._get)),
        ]
        self.log.info("artifacts_ready", root=str(self.store.root), max_bytes=self.store.max_bytes)
        await stop.wait()
        for sub in subs:
            await sub.unsubscribe()

    def _spawn(self, handler: Callable[[Msg], Awaitable[None]]) -> Callable[[Msg], Awaitable[None]]:
        async def on_msg(msg: Msg) -> None:
            task = asyncio.create_task(self._guarded(handler, msg))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return on_msg

    async def _guarded(self, handler: Callable[[Msg], Awaitable[None]], msg: Msg) -> None:
        if not reply_allowed(msg, _asker(msg.subject) or ""):
            # Checked first, as Bus.serve does: a put nobody may be answered stores nothing,
            # announces nothing and spends no budget.
            if msg.reply:
                self.log.warning("reply_refused", asker=_asker(msg.subject), reply=msg.reply[:120])
            return
        try:
            await handler(msg)
        except Exception as exc:
            self.log.exception("request_failed", subject=msg.subject[:200])
            with contextlib.suppress(Exception):
                await self._reply(msg, headers={H_ERROR: f"{type(exc).__name__}: {exc}"[:500]})

    def _within_budget(self, asker: str, size: int) -> str | None:
        """None when ``asker`` may store ``size`` more bytes now, else why not."""
        try:
            per_minute, puts, total = self.budgets.get(role_of(asker), DEFAULT_BUDGET)
        except ValueError:
            per_minute, puts, total = DEFAULT_BUDGET
        cost = size + PUT_COST
        if self._totals.get(asker, 0) + cost > total:
            return f"{asker} has stored its {total:,} bytes of artifacts"
        rate, count = self._rates.setdefault(asker, (ByteBudget(per_minute), ByteBudget(puts)))
        if not count.take(1):
            return f"{asker} is over its {puts:,} artifact puts a minute; retry in {count.retry_after(1):.1f}s"
        if not rate.take(cost):
            return (f"{asker} is over its artifact budget of {per_minute:,} bytes per minute; "
                    f"retry in {rate.retry_after(cost):.1f}s")
        self._totals[asker] = self._totals.get(asker, 0) + cost
        return None

    async def _reply(self, msg: Msg, data: bytes = b"", headers: dict[str, str] | None = None) -> None:
        """Answer into the asker's own inbox only (see ``bus.client.reply_allowed``)."""
        asker = _asker(msg.subject) or ""
        if reply_allowed(msg, asker):
            await self.bus.nc.publish(msg.reply, data, headers=headers or None)
        elif msg.reply:
            self.log.warning("reply_refused", asker=asker, reply=msg.reply[:120])

    async def _put(self, msg: Msg) -> None:
        h = msg.headers or {}
        try:
            kind = ArtifactKind(h.get(H_KIND, ArtifactKind.OTHER.value))
        except ValueError:
            await self._reply(msg, headers={H_ERROR: f"unknown artifact kind {h.get(H_KIND)!r}"})
            return
        session = h.get(H_SESSION) or SYSTEM_SESSION
        if not is_subject_token(session):
            session = SYSTEM_SESSION
        asker = _asker(msg.subject) or "unknown"
        if (over := self._within_budget(asker, len(msg.data))) is not None:
            self.log.warning("artifact_refused", error=over, size=len(msg.data), asker=asker)
            await self._reply(msg, headers={H_ERROR: over})
            return
        try:
            digest, new = await asyncio.to_thread(self.store.put, msg.data)
        except ArtifactError as exc:
            self.log.warning("artifact_refused", error=str(exc), size=len(msg.data))
            await self._reply(msg, headers={H_ERROR: str(exc)})
            return
        # Announce before answering, every time: the event id is derived from (session,
        # hash), so a repeated put (or a retry after a crash between the write and the
        # event) is stored once in the log, and every session that uses a blob records it.
        try:
            await self._announce(msg, h, kind, session, digest)
        except BusError as exc:  # stored, not announced: the asker hears why (a retry announces it)
            self.log.error("artifact_not_announced", sha256=digest, error=str(exc)[:300])
            await self._reply(msg, headers={H_ERROR: f"stored but not announced, try again: {exc}"[:500]})
            return
        self.log.info("artifact_put", sha256=digest, size=len(msg.data), kind=kind.value, new=new, asker=asker)
        await self._reply(msg, headers={H_SHA: digest, H_NEW: "1" if new else "0"})

    async def _announce(self, msg: Msg, h: dict[str, str], kind: ArtifactKind, session: str, digest: str) -> None:
        await self.bus.publish(
            Event.create(
                ArtifactStored(
                    sha256=digest,
                    size=len(msg.data),
                    kind=kind,
                    name=h.get(H_NAME, "")[:300],
                    media_type=h.get(H_MEDIA, "application/octet-stream")[:200],
                    owner=_asker(msg.subject),
                ),
                session_id=session,
                source=self.source,
                id=derived_id("art-", session, digest),
            )
        )

    async def _get(self, msg: Msg) -> None:
        try:
            data = await asyncio.to_thread(self.store.get, msg.data.decode("ascii", "replace"))
        except ArtifactError as exc:
            await self._reply(msg, headers={H_ERROR: str(exc)})
            return
        await self._reply(msg, data, {H_SHA: msg.data.decode()})


def _asker(subject: str) -> str | None:
    """The identity that asked (``aarq.artifacts.put.<identity>``: the server lets each
    identity use only its own name there)."""
    tokens = subject.split(".")
    return tokens[3] if len(tokens) == 4 and is_subject_token(tokens[3]) else None


async def main() -> None:
    from services.runtime import service, service_id

    home = AarHome.from_env()
    max_bytes = int(os.environ.get("AAR_ARTIFACT_MAX_BYTES", 0)) or None
    async with service("artifacts") as (bus, stop, log):
        store = BlobStore(home.artifacts, **({"max_bytes": max_bytes} if max_bytes else {}))
        await ArtifactService(bus, store, source=service_id("artifacts"), budgets=budgets_from_env()).run(stop)
