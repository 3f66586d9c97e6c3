"""What ``docker compose`` needs from the ``aar`` command line (see docs/compose.md).

    aar nats-config --out PATH [--credentials FILE] [--secrets-dir DIR] [--agents N]
        the nats-server configuration of bus.roles.server_config (one user per
        identity, subject permissions): every role's own identity (replicas of one
        service, such as trainers, share it) and agent-1 .. agent-N (each agent its
        own: what an agent publishes must carry its identity), with the passwords of a
        credentials file (created, mode 0600, when absent); --secrets-dir also writes
        DIR/<identity>/password, one folder per identity, so that each container can be
        given its own password only.

    aar healthcheck IDENTITY [--timeout S] [--ensure-stream]
        connects as IDENTITY and checks what its role is allowed to check (exit 0/1).

``python -m aar.compose_cmds COMMAND ...`` is the image's entry point: it turns
``*_FILE`` variables (compose secrets, password volumes) into the variables the
services read, names the process after its container, gives a session config without
a ``session_id`` a fresh one, prepares an admin CLI container (``AAR_ATTACH_URL``),
then ``exec``s COMMAND. It imports nothing heavy: every container start runs it.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

# Variables a container may receive as a file (``NAME_FILE=/run/secrets/...``).
FILE_VARIABLES = ("AAR_NATS_PASSWORD", "ANTHROPIC_API_KEY")
ATTACH_URL = "AAR_ATTACH_URL"  # the CLI container: where the stack's nats-server is
ATTACH_CREDENTIALS = "AAR_ATTACH_CREDENTIALS"  # ... and the credentials file (admin)
SESSION_CONFIG = "AAR_SESSION_CONFIG"  # the orchestrator's session (services.orchestrator.config.ENV_VAR)


# -- entry point (no typer, no pydantic: fast) ---------------------------------------


class EntrypointError(RuntimeError):
    pass


def resolve_file_variables(env: dict[str, str]) -> None:
    """``NAME_FILE=path`` -> ``NAME=<the file's content, stripped>`` unless NAME is set."""
    for name in FILE_VARIABLES:
        path = env.pop(f"{name}_FILE", None)
        if not path or env.get(name):
            continue
        try:
            env[name] = Path(path).read_text().strip()
        except OSError as exc:
            raise EntrypointError(f"{name}_FILE={path}: {exc.strerror or exc}") from None
        if not env[name]:
            raise EntrypointError(f"{name}_FILE={path} is empty")


def fill_session_id(env: dict[str, str]) -> None:
    """A session config without ``session_id`` (compose.yaml's) gets a fresh one:
    each ``docker compose up`` of the orchestrator is a new session."""
    raw = env.get(SESSION_CONFIG)
    if not raw:
        return
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise EntrypointError(f"{SESSION_CONFIG} is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise EntrypointError(f"{SESSION_CONFIG} must be a JSON object")
    if not config.get("session_id"):
        from ulid import ULID

        config["session_id"] = f"s-{ULID()}"  # schemas.base.new_session_id, without importing pydantic
        if not config.get("name"):
            config["name"] = config["session_id"]
        env[SESSION_CONFIG] = json.dumps(config)


def prepare_attach(env: dict[str, str]) -> None:
    """The CLI container: `aar audit` and friends find a running stack through
    ``AAR_HOME/run.json`` and ``AAR_HOME/nats/credentials.json`` (aar.supervisor).
    Write both, pointing at the compose network's nats-server (no pid: the stack is
    not a process of this container)."""
    url = env.get(ATTACH_URL)
    if not url:
        return
    creds_src = env.get(ATTACH_CREDENTIALS)
    if not creds_src:
        raise EntrypointError(f"{ATTACH_URL} needs {ATTACH_CREDENTIALS} (the credentials file with the admin password)")
    home = Path(env.get("AAR_HOME", ".aar")).expanduser()
    (home / "nats").mkdir(parents=True, exist_ok=True)
    try:
        creds = Path(creds_src).read_bytes()
    except OSError as exc:
        raise EntrypointError(f"{ATTACH_CREDENTIALS}={creds_src}: {exc.strerror or exc}") from None
    for path, data in ((home / "nats" / "credentials.json", creds),
                       (home / "run.json", json.dumps({"url": url, "started": time.time()}).encode())):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)


def container_env(env: dict[str, str]) -> dict[str, str]:
    env = dict(env)
    resolve_file_variables(env)
    if env.get("AAR_NATS_USER") and not env.get("AAR_SERVICE_ID"):
        # One name per replica for its logs: the container's hostname (its short id under
        # compose). What it publishes carries its NATS identity (services.runtime).
        env["AAR_SERVICE_ID"] = f"{env['AAR_NATS_USER']}-{socket.gethostname()}"
    fill_session_id(env)
    prepare_attach(env)
    return env


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        sys.stderr.write("usage: python -m aar.compose_cmds COMMAND [ARGS...]\n")
        raise SystemExit(2)
    try:
        env = container_env(dict(os.environ))
    except EntrypointError as exc:
        sys.stderr.write(f"aar entrypoint: {exc}\n")
        raise SystemExit(1) from None
    os.execvpe(argv[0], argv, env)


if __name__ == "__main__":  # pragma: no cover - the image's entry point; exec never returns
    main()


# -- aar nats-config -----------------------------------------------------------------

from typing import Annotated, Optional  # noqa: E402 - as above

import typer  # noqa: E402 - below the entry point, which must not pay for it

from core.processes import ADMIN, PROCESSES, asks  # noqa: E402 - as above


def nats_config(
    out: Annotated[str, typer.Option("--out", help="where to write the server config ('-': standard output)")],
    credentials: Annotated[
        Path, typer.Option(help="the identities' passwords; created with fresh ones (mode 0600) when absent")
    ] = Path("credentials.json"),
    secrets_dir: Annotated[
        Optional[Path], typer.Option(help="also write DIR/<identity>/password for every identity (mode 0400)")
    ] = None,
    agents: Annotated[int, typer.Option(min=0, max=64, help="agent identities agent-1 .. agent-N")] = 3,
    host: Annotated[str, typer.Option(help="address nats-server listens on")] = "0.0.0.0",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 4222,
    http_port: Annotated[Optional[int], typer.Option(help="monitoring port (/healthz); 0: none")] = 8222,
    store_dir: Annotated[str, typer.Option(help="JetStream store inside the nats container")] = "/data/jetstream",
    max_file_store: Annotated[str, typer.Option(help="JetStream file storage limit")] = "10G",
) -> None:
    """Write the nats-server config: one user per identity with its subject permissions (bus.roles)."""
    from bus.roles import Credentials, Role, server_config
    from core.console import err, esc

    try:
        creds = Credentials.load_or_create(credentials)
        before = dict(creds.identities)
        for i in range(agents):
            creds.add(f"agent-{i + 1}", Role.AGENT)
        if creds.identities != before:
            creds.save(credentials)
    except (OSError, ValueError) as exc:
        err.print(f"[red]cannot read or create {credentials}: {esc(exc)}[/red]")
        raise typer.Exit(1) from None
    config = server_config(
        port=port, host=host, http_port=http_port or None, store_dir=Path(store_dir), credentials=creds,
        max_file_store=max_file_store,
    )
    text = json.dumps(config, indent=2) + "\n"
    if out == "-":
        sys.stdout.write(text)
    else:
        _write_private(Path(out), text, 0o600)
    if secrets_dir is not None:
        for ident in creds.identities.values():
            _write_private(secrets_dir / ident.name / "password", ident.password, 0o400)
    if out != "-":
        err.print(f"nats-server config for {len(creds.identities)} identities: {out}"
                  + (f"; passwords in {secrets_dir}/<identity>/password" if secrets_dir else ""))


def _write_private(path: Path, text: str, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


# -- aar healthcheck -----------------------------------------------------------------

# The query services a role checks, each with a query that changes nothing: the ones
# it may ask (core.processes), never itself. A service's own liveness shows in the
# checks of the roles that depend on it (the scorer's check asks the recorder's health
# query, the agents' check asks the orchestrator). Admin asks every service.
PROBES: dict[str, tuple[str, ...]] = {p.role.value: asks(p.role) for p in (ADMIN, *PROCESSES)}
# Durable consumers the service of a role creates at start (its health check looks for it).
OWN_CONSUMERS: dict[str, str] = {p.role.value: p.probe_consumer for p in PROCESSES if p.probe_consumer}


async def _probe(bus: object, service: str, timeout: float) -> str:
    """Ask ``service`` something harmless; returns what answered, raises when nobody does."""
    import nats.errors

    from bus.client import Bus, QueryError, query_subject
    from bus.query import Empty

    assert isinstance(bus, Bus)
    if service == "recorder":
        from services.recorder.queries import HEALTH as RECORDER_HEALTH

        health = await bus.ask(RECORDER_HEALTH, Empty(), timeout=timeout)
        return f"recorder health: {health.events} events, {health.rejected} rejected"
    if service == "gateway":
        from services.gateway.queries import HEALTH

        gateway = await bus.ask(HEALTH, Empty(), timeout=timeout)
        return f"gateway health: {gateway.forwarded} forwarded, {sum(gateway.refused.values())} refused"
    if service == "artifacts":
        # A malformed id: the store answers with an error header, and reads nothing.
        try:
            msg = await bus.nc.request(query_subject("artifacts", "get", bus.identity), b"healthcheck",
                                       timeout=timeout)
        except nats.errors.NoRespondersError:
            raise QueryError("no artifacts service is answering") from None
        except (nats.errors.TimeoutError, TimeoutError):
            raise QueryError(f"artifacts did not answer within {timeout}s") from None
        return "artifacts answered" + (" (error reply, as expected)" if msg.headers else "")
    # Services behind Bus.serve answer an unknown query with an error reply: alive,
    # and no side effect (an orchestrator 'assignment' would claim an agent slot).
    try:
        await bus.request(service, "healthcheck", {}, timeout=timeout)
    except QueryError as exc:
        if "unknown query" not in str(exc):
            raise
    return f"{service} answered"


async def run_healthcheck(
    role: str, settings: object, *, timeout: float = 5.0, ensure_stream: bool = False, probe: bool = True
) -> list[tuple[bool, str]]:
    """The checks of ``role`` (connected as ``settings``' identity), as (ok, what) pairs;
    stops at the first failure."""
    import asyncio

    import nats.errors
    import nats.js.errors

    from bus import STREAM, Bus, BusSettings
    from bus.roles import Role, inbox_prefix, uses_jetstream

    assert isinstance(settings, BusSettings)
    results: list[tuple[bool, str]] = []
    import nats

    try:
        # Not Bus.connect: that one reconnects forever, a health check must give up.
        nc = await asyncio.wait_for(
            nats.connect(settings.url, user=settings.user, password=settings.password, name=f"healthcheck-{role}",
                         connect_timeout=timeout, allow_reconnect=False, max_reconnect_attempts=0,
                         inbox_prefix=inbox_prefix(settings.identity)),
            timeout=timeout * 2,
        )
    except Exception as exc:  # noqa: BLE001 - auth, DNS, refused: all mean unhealthy
        return [(False, f"connect to {settings.url} as {settings.identity}: {type(exc).__name__}: {exc}".rstrip(": "))]
    bus = Bus(nc, settings, f"healthcheck-{role}")
    try:
        results.append((True, f"connected to {settings.url} as {settings.identity} ({role})"))
        if ensure_stream:
            await bus.ensure_stream()
            results.append((True, f"stream {STREAM} created or updated"))
        if uses_jetstream(Role(role)):  # agents may not ask JetStream anything
            try:
                info = await bus.js.stream_info(STREAM)
                results.append((True, f"stream {STREAM}: {info.state.messages} messages"))
            except nats.js.errors.NotFoundError:
                results.append((False, f"stream {STREAM} does not exist (the stream-init service creates it)"))
                return results
        durable = OWN_CONSUMERS.get(role)
        if durable is not None:
            try:
                cinfo = await bus.js.consumer_info(STREAM, durable)
                results.append((True, f"consumer {durable}: {cinfo.num_pending} pending"))
            except nats.js.errors.NotFoundError:
                results.append((False, f"consumer {durable} does not exist yet (the {role} service creates it at start)"))
                return results
        for service in PROBES.get(role, ()) if probe else ():
            try:
                results.append((True, await _probe(bus, service, timeout)))
            except Exception as exc:  # noqa: BLE001 - any failure of a probe is reported as unhealthy
                results.append((False, f"{service}: {exc}"))
                return results
    except (nats.errors.Error, TimeoutError) as exc:
        results.append((False, f"{type(exc).__name__}: {exc}"))
    finally:
        await bus.close()
    return results


def healthcheck_settings(identity: str, env: dict[str, str], credentials: Path | None) -> object:
    """``identity``'s connection: the URL from AAR_NATS_URL; the password from
    AAR_NATS_PASSWORD (or AAR_NATS_PASSWORD_FILE), else from ``credentials``."""
    from bus import BusSettings, Credentials
    from bus.roles import role_of

    env = dict(env)
    resolve_file_variables(env)
    user = env.get("AAR_NATS_USER")
    if user and user != identity:
        raise EntrypointError(f"this container connects as {user!r}, not {identity!r}")
    password = env.get("AAR_NATS_PASSWORD")
    if credentials is not None:
        creds = Credentials.load(credentials)
        found = creds.identities.get(identity) if creds is not None else None
        password = found.password if found is not None else None
    if not password:
        raise EntrypointError(f"no password for {identity!r}: set AAR_NATS_PASSWORD(_FILE) or pass --credentials")
    return BusSettings(url=env.get("AAR_NATS_URL", "nats://127.0.0.1:4222"), user=identity, password=password,
                       role_name=role_of(identity).value)


def healthcheck(
    identity: Annotated[str, typer.Argument(
        metavar="IDENTITY", help="who to connect as: a role (" + " | ".join(PROBES) + ") or agent-N, trainer-N")],
    timeout: Annotated[float, typer.Option(min=0.1, help="seconds per step")] = 5.0,
    credentials: Annotated[
        Optional[Path], typer.Option(help="a credentials file (aar nats-config) instead of AAR_NATS_PASSWORD")
    ] = None,
    ensure_stream: Annotated[
        bool, typer.Option("--ensure-stream", help="admin only: create or update the AAR stream first (stream-init)")
    ] = False,
    probe: Annotated[bool, typer.Option(help="ask the query services this role depends on")] = True,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print failures only")] = False,
) -> None:
    """Exit 0 when IDENTITY can reach NATS and what its role depends on answers, 1 otherwise.

    Every role: connect with its credentials, the AAR stream exists. recorder, scorer,
    trainer: their durable consumer exists. Then each query service the role may ask
    (bus.roles.ASKS) must answer a harmless query: the recorder its health query."""
    import asyncio

    from bus.roles import role_of
    from core.console import console, err, esc

    try:
        role = role_of(identity).value
    except ValueError:
        err.print(f"[red]unknown identity {identity!r}[/red]; roles: {', '.join(PROBES)} (or agent-N, trainer-N)")
        raise typer.Exit(1) from None
    if ensure_stream and role != "admin":
        err.print("[red]--ensure-stream needs the admin role[/red]")
        raise typer.Exit(1)
    try:
        settings = healthcheck_settings(identity, dict(os.environ), credentials)
    except (EntrypointError, OSError, ValueError) as exc:
        err.print(f"[red]{esc(exc)}[/red]")
        raise typer.Exit(1) from None
    results = asyncio.run(run_healthcheck(role, settings, timeout=timeout, ensure_stream=ensure_stream, probe=probe))
    healthy = bool(results) and all(ok for ok, _ in results)
    for ok, what in results:
        if not (quiet and ok):
            (console if ok else err).print(f"{'ok  ' if ok else 'FAIL'} {what}", highlight=False, markup=False)
    raise typer.Exit(0 if healthy else 1)

