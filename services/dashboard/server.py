"""Serving the dashboard: the bind, the token, the URL file, uvicorn in this event loop.

Used by the ``dashboard`` service (``aar up`` starts it; its data from the running
recorder, its live feed from NATS as the ``dashboard`` role) and by ``aar dashboard``
(an existing ``AAR_HOME``: the log file read-only, live only when a stack runs there).

- ``AAR_DASHBOARD_HOST`` (default 127.0.0.1) and ``AAR_DASHBOARD_PORT`` (default 8765;
  when that one is taken and no port was asked for, any free one). The URL it serves at
  goes to ``AAR_HOME/dashboard/url`` (``aar up`` prints it).
- A bind other than loopback needs the token (see :mod:`access`); it is made and printed
  once, on the first such start.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.paths import AarHome

from .access import Access, is_loopback, load_or_create_token

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765


@dataclass(frozen=True, slots=True)
class Bind:
    host: str
    port: int
    port_given: bool  # asked for (the default port may move to a free one; an asked port may not)

    @classmethod
    def from_env(cls, host: str | None = None, port: int | None = None) -> Bind:
        env_port = os.environ.get("AAR_DASHBOARD_PORT")
        if port is None and env_port not in (None, ""):
            try:
                port = int(str(env_port))
            except ValueError:
                raise ValueError(f"AAR_DASHBOARD_PORT must be a port number, not {env_port!r}") from None
        given = port is not None
        return cls(host or os.environ.get("AAR_DASHBOARD_HOST") or DEFAULT_HOST,
                   DEFAULT_PORT if port is None else port, given)


def bind_socket(bind: Bind) -> socket.socket:
    """A listening socket for ``bind``: its port, or any free one when the default port is
    taken (OSError naming the port when an asked one is)."""
    family = socket.AF_INET6 if ":" in bind.host else socket.AF_INET
    for port in (bind.port, 0):
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((bind.host, port))
        except OSError as exc:
            sock.close()
            if exc.errno == errno.EADDRINUSE and not bind.port_given and port != 0:
                continue
            raise OSError(exc.errno, f"the dashboard cannot listen on {bind.host}:{port}: {exc.strerror}") from None
        sock.listen(128)
        sock.setblocking(False)
        return sock
    raise AssertionError("unreachable")


def access_for(home: AarHome, bind: Bind, *, say: Any = print) -> Access:
    """The access rule of ``bind``; a non-loopback bind gets the home's token (made and
    printed here, once)."""
    if is_loopback(bind.host):
        return Access(bind.host, None)
    token, made = load_or_create_token(home.root / "dashboard" / "token")
    if made:
        say(f"dashboard token (shown once; kept in {home.root / 'dashboard' / 'token'}, mode 0600): {token}")
    return Access(bind.host, token)


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown = host if host not in ("0.0.0.0", "::") else socket.gethostname()
    return f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}"


def write_url(home: AarHome, url: str) -> Path:
    path = home.root / "dashboard" / "url"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"url": url, "pid": os.getpid()}) + "\n")
    os.replace(tmp, path)
    return path


def read_url(home: AarHome) -> str | None:
    """The URL the home's dashboard serves at (None: none has started)."""
    try:
        return str(json.loads((home.root / "dashboard" / "url").read_text())["url"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


async def serve(app: Any, sock: socket.socket, stop: asyncio.Event) -> None:
    """Run ``app`` on ``sock`` until ``stop`` is set."""
    import uvicorn

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                            timeout_graceful_shutdown=2)
    server = uvicorn.Server(config)
    # The caller owns SIGTERM/SIGINT (they set ``stop``): uvicorn must not take them over.
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    hub = getattr(getattr(app, "state", None), "hub", None)
    if hub is not None:
        hub.close()  # open event streams end, so that the server stops at once
    server.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await task
    stopper.cancel()
