"""``aar up``: the embedded stack under one supervisor.

Starts nats-server, creates the stream, then each service as its own OS
process with its own NATS identity (one user per process: ``agent-1``, ``trainer-1``,
``scorer``, ...; agents may publish only into their session), DESIGN.md section 2.
The recorder starts first, then the gateway (the stream's door for the others),
each awaited until it answers. A service that crashes
is restarted with backoff and its exit is logged; Ctrl-C/SIGTERM stops the
session (orchestrator first, so ``session.ended`` is recorded), lets the
recorder drain the stream, then stops everything else.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from bus import Bus, BusSettings, Credentials, NatsServer, Role
from bus.client import QueryError
from core.paths import AarHome
from core.processes import PROCESSES, Scaling
from core.procs import die_with_parent

log = structlog.get_logger("supervisor")

# Services awaited (their health query) before the next one starts.
READY_FIRST = {p.role: p.role.value for p in PROCESSES if p.ready_first}

# Environment variables a service never inherits: other roles' credentials and the
# user's API key (only agent processes get it, through their ServiceSpec.env).
SCRUBBED = ("AAR_NATS_USER", "AAR_NATS_PASSWORD", "AAR_SESSION_CONFIG", "ANTHROPIC_API_KEY")


@dataclass
class ServiceSpec:
    name: str  # unique process name, e.g. "trainer-2"
    role: Role
    module: str  # python -m <module>
    env: dict[str, str] = field(default_factory=dict)
    restart: bool = True  # False: its exit ends the session (the orchestrator)
    stop_order: int = 50  # lower stops first
    args: list[str] = field(default_factory=list)  # after python -m <module>
    rerun_after_success: bool = True  # False: a clean exit (code 0) means its work is done (agents)
    identity: str = ""  # its NATS user; "" : the same as ``name``
    session: str | None = None  # the only session its identity may publish into (agents)

    @property
    def user(self) -> str:
        return self.identity or self.name


@dataclass
class Child:
    spec: ServiceSpec
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0
    gave_up: bool = False


def service_command(module: str, args: list[str] | None = None) -> list[str]:
    return [sys.executable, "-m", module, *(args or [])]


class Supervisor:
    def __init__(self, home: AarHome, specs: list[ServiceSpec], *, max_restarts: int = 5) -> None:
        self.home = home.ensure()
        self.specs = specs
        self.max_restarts = max_restarts
        creds_path = home.nats / "credentials.json"
        self.credentials = Credentials.load_or_create(creds_path)
        for spec in specs:
            self.credentials.add(spec.user, spec.role, session=spec.session)
        self.credentials.save(creds_path)
        self.server = NatsServer(home.nats, self.credentials, log_file=home.logs / "nats-server.log")
        self.children: dict[str, Child] = {s.name: Child(s) for s in specs}
        self.stopping = False

    # -- lifecycle ----------------------------------------------------------

    def admin_settings(self) -> BusSettings:
        return BusSettings.for_role(self.server.url, self.credentials, Role.ADMIN)

    async def start(self, before_services: Callable[[], Awaitable[None]] | None = None) -> None:
        """Start nats-server, then the services in order. ``before_services`` runs once the bus is up
        and before any service: a watcher subscribed there misses none of their events."""
        with contextlib.suppress(FileNotFoundError):  # an earlier run's dashboard address
            (self.home.root / "dashboard" / "url").unlink()
        self.server.start()
        admin = await Bus.connect(self.admin_settings(), name="supervisor")
        try:
            await admin.ensure_stream()
        finally:
            await admin.close()
        self._write_run_file()
        if before_services is not None:
            await before_services()
        for child in sorted(self.children.values(), key=lambda c: -c.spec.stop_order):
            self._spawn(child)
            if child.spec.role in READY_FIRST:
                await self.wait_ready(child)
            if child.spec.role is Role.RECORDER:
                # What an earlier run left in the stream (it was killed) is in the log before
                # anything reads the log back (a resumed session's orchestrator, the scorer).
                await self.drain_recorder()

    async def dashboard_url(self, timeout: float = 20.0) -> str | None:
        """The URL the dashboard service serves at, once it has bound (None: not within
        ``timeout`` seconds, or no dashboard in this stack)."""
        from services.dashboard.server import read_url

        child = next((c for c in self.children.values() if c.spec.role is Role.DASHBOARD), None)
        deadline = time.monotonic() + timeout
        while child is not None and time.monotonic() < deadline:
            url = read_url(self.home)
            if url is not None and child.process is not None and child.process.poll() is None:
                return url
            await asyncio.sleep(0.1)
        return None

    def _write_run_file(self) -> None:
        path = self.home.run_file
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"url": self.server.url, "pid": os.getpid(), "started": time.time()}, fh)

    def _spawn(self, child: Child) -> None:
        spec = child.spec
        env = {k: v for k, v in os.environ.items() if k not in SCRUBBED}
        env.update(BusSettings.for_identity(self.server.url, self.credentials, spec.user).to_env())
        env.update({"AAR_HOME": str(self.home.root), "AAR_SERVICE_ID": spec.user, "AAR_LOG_FORMAT": "json"})
        env.update(spec.env)
        logfile = open(self.home.logs / f"{spec.name}.log", "ab")
        child.process = subprocess.Popen(
            service_command(spec.module, spec.args),
            env=env,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches the supervisor only; it stops children in order
            preexec_fn=die_with_parent(),
        )
        logfile.close()
        child.started_at = time.monotonic()
        log.info("service_started", service=spec.name, pid=child.process.pid, restarts=child.restarts)

    async def wait_ready(self, child: Child, timeout: float = 30.0) -> None:
        """Nothing else starts before the log is being written and the gateway lets
        events in (each answers its ``health`` query)."""
        service = READY_FIRST[child.spec.role]
        admin = await Bus.connect(self.admin_settings(), name="supervisor-probe")
        logfile = self.home.logs / f"{child.spec.name}.log"
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    await admin.request(service, "health", {}, timeout=1.0)
                    return
                except QueryError:
                    if child.process is not None and child.process.poll() is not None:
                        if child.restarts >= self.max_restarts:
                            raise RuntimeError(f"the {service} keeps exiting at start; see {logfile}") from None
                        child.restarts += 1
                        log.warning("service_crashed", service=child.spec.name, code=child.process.returncode)
                        self._spawn(child)
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{service} not ready after {timeout}s; see {logfile}") from None
                    await asyncio.sleep(0.1)
        finally:
            await admin.close()

    async def run(self, stop: asyncio.Event, on_tick: Callable[[], None] | None = None) -> str:
        """Watch the children until ``stop`` or until a non-restartable one exits.
        Returns why the session ended."""
        why = "stopped"
        while not stop.is_set():
            now = time.monotonic()
            for child in self.children.values():
                proc = child.process
                if proc is None:
                    if not child.gave_up and now >= child.next_start:
                        self._spawn(child)
                    continue
                code = proc.poll()
                if code is None:
                    continue
                child.process = None
                if not child.spec.restart:
                    log.info("service_exited", service=child.spec.name, code=code)
                    return "session ended" if code == 0 else f"{child.spec.name} exited with {code}"
                if code == 0 and not child.spec.rerun_after_success:
                    log.info("service_finished", service=child.spec.name)
                    child.gave_up = True
                    continue
                child.restarts += 1
                uptime = now - child.started_at
                if uptime > 60:
                    child.restarts = 1  # a long healthy run resets the crash counter
                if child.restarts > self.max_restarts:
                    child.gave_up = True
                    log.error("service_gave_up", service=child.spec.name, code=code, restarts=child.restarts - 1,
                              log=str(self.home.logs / f"{child.spec.name}.log"))
                    continue
                delay = min(30.0, 0.5 * 2 ** (child.restarts - 1))
                child.next_start = now + delay
                log.warning("service_crashed", service=child.spec.name, code=code, restart_in_s=delay,
                            log=str(self.home.logs / f"{child.spec.name}.log"))
            if on_tick is not None:
                on_tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=0.2)
        return why

    async def drain_recorder(self, timeout: float = 30.0) -> None:
        """Wait until the recorder has committed everything in the stream."""
        admin = await Bus.connect(self.admin_settings(), name="supervisor-drain")
        try:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                try:
                    info = await admin.js.consumer_info("AAR", "recorder")
                except Exception:  # noqa: BLE001 - no consumer yet: nothing to drain
                    return
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    return
                await asyncio.sleep(0.1)
            log.warning("recorder_drain_timeout", timeout_s=timeout)
        finally:
            await admin.close()

    def _terminate(self, children: list[Child], timeout: float = 15.0) -> None:
        for child in children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in children:
            proc = child.process
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("service_killed", service=child.spec.name)
                proc.kill()
                proc.wait()
            log.info("service_stopped", service=child.spec.name, code=proc.returncode)
            child.process = None

    async def shutdown(self) -> None:
        self.stopping = True
        ordered = sorted(self.children.values(), key=lambda c: c.spec.stop_order)
        recorder = [c for c in ordered if c.spec.role is Role.RECORDER]
        others = [c for c in ordered if c.spec.role is not Role.RECORDER]
        # The orchestrator first (it records session.ended), then the workers.
        for order in sorted({c.spec.stop_order for c in others}):
            await asyncio.to_thread(self._terminate, [c for c in others if c.spec.stop_order == order])
        if any(c.process is not None and c.process.poll() is None for c in recorder):
            await self.drain_recorder()  # else: nothing is lost, the next start records the rest
        await asyncio.to_thread(self._terminate, recorder)
        self.server.stop()
        with contextlib.suppress(FileNotFoundError):
            self.home.run_file.unlink()


def default_specs(
    config_env: dict[str, str],
    *,
    agents: int = 0,
    trainers: int = 1,
    unsafe_no_sandbox: bool = False,
    agent_env: dict[str, str] | None = None,
    dashboard: bool = True,
    dashboard_env: dict[str, str] | None = None,
) -> list[ServiceSpec]:
    """The processes of a session, from the process table (core.processes): one of each
    role, ``trainers`` trainers and ``agents`` agents (each its own identity, bound to
    the session). The table's stop order: the orchestrator first (it records
    ``session.ended``), then agents, workers, the scorer, the forum, the artifact
    store, the gateway, and the recorder last. ``agent_env``: extra environment for
    agents only (the API key of the Claude backend; no other process ever gets it)."""
    session_id = json.loads(config_env.get("AAR_SESSION_CONFIG", "{}")).get("session_id", "")
    specs: list[ServiceSpec] = []
    for proc in PROCESSES:
        assert proc.module is not None
        if proc.role is Role.DASHBOARD and not dashboard:
            continue
        count = {Scaling.ONE: 1, Scaling.POOL: trainers, Scaling.EACH_OWN: agents}[proc.scaling]
        if proc.scaling is Scaling.POOL and proc.role is not Role.TRAINER:
            raise NotImplementedError(f"aar up scales only the trainer pool, not {proc.role}")
        for i in range(count):
            name = proc.role.value if proc.scaling is Scaling.ONE else f"{proc.role.value}-{i + 1}"
            env: dict[str, str] = {}
            if proc.ends_session:
                env.update(config_env)  # the orchestrator owns the session's configuration
            if proc.role is Role.AGENT:
                env.update({"AAR_AGENT_ID": name, "AAR_SESSION_ID": session_id, **(agent_env or {})})
            if proc.role is Role.DASHBOARD:
                env.update(dashboard_env or {})
            args = ["--unsafe-no-sandbox"] if proc.role is Role.TRAINER and unsafe_no_sandbox else []
            specs.append(ServiceSpec(
                name, proc.role, proc.module, env=env, restart=not proc.ends_session, stop_order=proc.stop_order,
                args=args, rerun_after_success=not proc.done_when_exits_0,
                session=(session_id or None) if proc.session_bound else None,
            ))
    return specs


def log_paths(home: AarHome) -> dict[str, Path]:
    return {"event log": home.events_db, "service logs": home.logs, "artifacts": home.artifacts}
