"""The artifacts service: answers put/get and announces every new blob with ``artifact.stored``."""

from __future__ import annotations

import asyncio
import os

import structlog
from nats.aio.msg import Msg

from aar.paths import AarHome
from bus import Bus
from bus.client import query_subject
from schemas import Event
from schemas.artifact import ArtifactKind, ArtifactStored
from schemas.base import derived_id, is_subject_token

from .client import H_ERROR, H_KIND, H_MEDIA, H_NAME, H_NEW, H_SESSION, H_SHA
from .store import ArtifactError, BlobStore

SYSTEM_SESSION = "system"


class ArtifactService:
    def __init__(self, bus: Bus, store: BlobStore, *, source: str = "artifacts") -> None:
        self.bus = bus
        self.store = store
        self.source = source
        self.log = structlog.get_logger("artifacts").bind(service=source)

    async def run(self, stop: asyncio.Event) -> None:
        subs = [
            await self.bus.nc.subscribe(query_subject("artifacts", "put"), queue="artifacts", cb=self._put),
            await self.bus.nc.subscribe(query_subject("artifacts", "get"), queue="artifacts", cb=self._get),
        ]
        self.log.info("artifacts_ready", root=str(self.store.root), max_bytes=self.store.max_bytes)
        await stop.wait()
        for sub in subs:
            await sub.unsubscribe()

    async def _reply(self, msg: Msg, data: bytes = b"", headers: dict[str, str] | None = None) -> None:
        if msg.reply:
            await self.bus.nc.publish(msg.reply, data, headers=headers or None)

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
        try:
            digest, new = await asyncio.to_thread(self.store.put, msg.data)
        except ArtifactError as exc:
            self.log.warning("artifact_refused", error=str(exc), size=len(msg.data))
            await self._reply(msg, headers={H_ERROR: str(exc)})
            return
        # Announce before answering, every time: the event id is derived from (session,
        # hash), so a repeated put (or a retry after a crash between the write and the
        # event) is stored once in the log, and every session that uses a blob records it.
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
        self.log.info("artifact_put", sha256=digest, size=len(msg.data), kind=kind.value, new=new)
        await self._reply(msg, headers={H_SHA: digest, H_NEW: "1" if new else "0"})

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
        await ArtifactService(bus, store, source=service_id("artifacts")).run(stop)
