"""``aar dashboard``: the web view of an existing ``AAR_HOME``.

With no stack running there, the pages come from the log file opened read-only (finished
sessions); while one runs, from its recorder and live from its NATS (as admin: this is
the operator's own command). ``aar up`` starts a dashboard of its own (the ``dashboard``
service); this command is for after, or beside, it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from typing import Annotated, Optional

import typer

from core.console import console, err, esc
from core.paths import AarHome


def dashboard(
    host: Annotated[Optional[str], typer.Option(
        help="address to bind (default 127.0.0.1; any other needs the token, made and printed once)")] = None,
    port: Annotated[Optional[int], typer.Option(min=0, max=65535, help="port (default 8765, or a free one)")] = None,
    reference_pgr: Annotated[tuple[float, str], typer.Option(
        help='a reference line on the figure: PGR and label, e.g. --reference-pgr 0.23 "human baseline"')] = (
            float("nan"), ""),
) -> None:
    """Serve the dashboard of AAR_HOME's sessions (read-only; live while a stack runs)."""
    from bus.settings import admin_settings_from_home
    from services.dashboard.app import create_app
    from services.dashboard.data import Reader
    from services.dashboard.live import Hub, feed
    from services.dashboard.server import Bind, access_for, bind_socket, serve, url_of
    from services.dashboard.service import blob_reader

    from .log_audit import open_audit

    home = AarHome.from_env()
    reference = None if reference_pgr[0] != reference_pgr[0] else (reference_pgr[0], reference_pgr[1] or "reference")
    try:
        bind = Bind.from_env(host, port)
        audit = open_audit(home)
    except FileNotFoundError:
        err.print(f"[red]no event log at {esc(str(home.events_db))}[/red]: run a session first (aar up)")
        raise typer.Exit(1) from None
    except (ValueError, OSError) as exc:
        err.print(f"[red]{esc(exc)}[/red]")
        raise typer.Exit(2) from None
    settings = admin_settings_from_home(home)

    async def run() -> None:
        from bus import Bus

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        hub = Hub()
        bus = None
        if settings is not None:
            bus = await Bus.connect(settings, name="aar-dashboard")
            await feed(hub, bus)
        try:
            access = access_for(home, bind, say=lambda text: console.print(text, markup=False, highlight=False))
            sock = bind_socket(bind)
            app = create_app(Reader(audit, blob_reader(home.artifacts)), hub, access, reference=reference)
            url = url_of(sock, bind.host)
            console.print(f"dashboard of {home.root} at [cyan]{url}[/cyan] "
                          + ("(live: a stack runs here)" if bus is not None else "(from the log, read-only)")
                          + "; Ctrl-C stops it", highlight=False)
            await serve(app, sock, stop)
        finally:
            if bus is not None:
                await bus.close()

    try:
        asyncio.run(run())
    except OSError as exc:
        err.print(f"[red]{esc(exc)}[/red]")
        raise typer.Exit(2) from None
    finally:
        with contextlib.suppress(Exception):
            audit.close()
