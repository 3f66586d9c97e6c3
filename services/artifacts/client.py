"""Put and get artifacts over NATS request/reply (``aarq.artifacts.put|get.<identity>``).

Bodies are raw bytes; metadata travels in headers. The owner of a stored blob is the
asker's identity, which the subject names and the server guarantees (no header can
claim another). Every ``get`` re-hashes what comes back, so a tampered blob is caught
by whoever reads it.
"""

from __future__ import annotations

import nats.errors
from nats.aio.msg import Msg

from bus import Bus
from bus.client import QueryError, query_subject
from schemas.artifact import ArtifactKind

from .store import ArtifactCorrupt, check_sha, sha256

H_KIND, H_NAME, H_MEDIA, H_SESSION = "Aar-Kind", "Aar-Name", "Aar-Media-Type", "Aar-Session"
H_ERROR, H_SHA, H_NEW = "Aar-Error", "Aar-Sha256", "Aar-New"


class ArtifactClient:
    __slots__ = ("bus", "session_id", "timeout")

    def __init__(self, bus: Bus, *, session_id: str = "system", timeout: float = 30.0) -> None:
        self.bus = bus
        self.session_id = session_id
        self.timeout = timeout

    async def _request(self, name: str, data: bytes, headers: dict[str, str]) -> Msg:
        try:
            msg = await self.bus.nc.request(query_subject("artifacts", name, self.bus.identity), data,
                                            timeout=self.timeout, headers=headers)
        except nats.errors.NoRespondersError:
            raise QueryError("no artifacts service is answering") from None
        except (TimeoutError, nats.errors.TimeoutError):
            raise QueryError(f"the artifacts service did not answer {name!r} within {self.timeout}s") from None
        error = (msg.headers or {}).get(H_ERROR)
        if error:
            raise QueryError(error)
        return msg

    async def put(
        self,
        data: bytes,
        kind: ArtifactKind | str,
        *,
        name: str = "",
        media_type: str = "application/octet-stream",
        session_id: str | None = None,
    ) -> str:
        """Store ``data``; returns its SHA-256 (the same bytes twice: one blob, one event)."""
        headers = {
            H_KIND: ArtifactKind(kind).value,
            H_NAME: name,
            H_MEDIA: media_type,
            H_SESSION: session_id or self.session_id,
        }
        msg = await self._request("put", data, headers)
        digest = (msg.headers or {}).get(H_SHA, "")
        if digest != sha256(data):
            raise QueryError(f"the artifacts service answered {digest!r} for a blob hashing to {sha256(data)}")
        return digest

    async def get(self, sha: str) -> bytes:
        sha = check_sha(sha)
        msg = await self._request("get", sha.encode(), {})
        if sha256(msg.data) != sha:
            raise ArtifactCorrupt(f"artifact {sha} came back with bytes hashing to {sha256(msg.data)}")
        return msg.data
