"""The ``dashboard`` process of a stack: the pages' data from the running recorder (audit
SQL, as the ``dashboard`` role), their live feed from NATS (every session's events, a
core subscription), method code from the artifact store's files, read-only. Its NATS
user may publish no event at all (core.processes): the dashboard reads and shows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from core.paths import AarHome

from .data import Reader


def blob_reader(root: Path) -> Callable[[str], bytes]:
    """A stored blob's bytes by its SHA-256, read from the store's files (never written;
    KeyError when it is not there, ValueError when it is not a digest or is corrupt)."""
    from services.artifacts.store import ArtifactError, check_sha, sha256

    def read(sha: str) -> bytes:
        try:
            digest = check_sha(sha)
        except ArtifactError as exc:
            raise ValueError(str(exc)) from None
        try:
            data = (root / digest[:2] / digest).read_bytes()
        except FileNotFoundError:
            raise KeyError(f"no stored blob {digest}") from None
        if sha256(data) != digest:
            raise ValueError(f"the stored blob {digest} is corrupt")
        return data

    return read


def reference_from_env() -> tuple[float, str] | None:
    raw = os.environ.get("AAR_DASHBOARD_REFERENCE", "")
    if not raw:
        return None
    value, _, label = raw.partition(":")
    return float(value), label or "reference"


async def main() -> None:
    from bus import BusSettings
    from services.recorder.remote import RecorderAudit
    from services.runtime import service

    from .app import create_app
    from .live import Hub, feed
    from .server import Bind, access_for, bind_socket, serve, url_of, write_url

    home = AarHome.from_env()
    async with service("dashboard") as (bus, stop, log):
        bind = Bind.from_env()
        access = access_for(home, bind, say=lambda text: log.warning("dashboard_token_made", message=text))
        audit = RecorderAudit(BusSettings.from_env(), name="dashboard-audit", timeout_s=20.0)
        try:
            hub = Hub()
            await feed(hub, bus)
            app = create_app(Reader(audit, blob_reader(home.artifacts)), hub, access,
                             reference=reference_from_env())
            sock = bind_socket(bind)
            url = url_of(sock, bind.host)
            write_url(home, url)
            log.info("dashboard_listening", url=url, token=access.token is not None)
            await serve(app, sock, stop)
        finally:
            audit.close()
