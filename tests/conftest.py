"""Fixtures that run the real thing: a nats-server process, a DuckDB file,
and service processes started exactly as `aar up` starts them."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bus import Bus, BusSettings, NatsServer, Role
from bus.client import QueryError
from bus.roles import role_of
from core.paths import AarHome


@pytest.fixture
def home(tmp_path: Path) -> AarHome:
    return AarHome(tmp_path / "aar").ensure()


@pytest.fixture
def nats_server(home: AarHome) -> Iterator[NatsServer]:
    server = NatsServer(home.nats, log_file=home.logs / "nats-server.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def settings(server: NatsServer, who: Role | str) -> BusSettings:
    """How ``who`` connects: a role (its own identity, named like the role) or an
    identity such as ``agent-1`` (created, with a server reload, if new)."""
    if isinstance(who, Role):
        return BusSettings.for_role(server.url, server.credentials, who)
    if who not in server.credentials.identities:
        server.add_identity(who, role_of(who))
    return BusSettings.for_identity(server.url, server.credentials, who)


@pytest.fixture
async def admin(nats_server: NatsServer) -> AsyncIterator[Bus]:
    bus = await Bus.connect(settings(nats_server, Role.ADMIN), name="test-admin")
    await bus.ensure_stream()
    try:
        yield bus
    finally:
        await bus.close()


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class ServiceProcess:
    """A service started as its own OS process with its role's credentials."""

    def __init__(
        self,
        module: str,
        role: Role,
        server: NatsServer,
        home: AarHome,
        env: dict[str, str] | None = None,
        args: list[str] | None = None,
        name: str | None = None,
    ):
        self.module, self.role, self.server, self.home = module, role, server, home
        self.extra_env = env or {}
        self.args = args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = home.logs / f"{name or module}.log"
        # Its NATS identity: ``name`` when that names one of the role (trainer-2), else the role's own.
        self.identity: Role | str = name if name and _names_role(name, role) else role

    def start(self) -> ServiceProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AAR_")}
        env.update(settings(self.server, self.identity).to_env())
        env.update({"AAR_HOME": str(self.home.root), "AAR_LOG_FORMAT": "json", "AAR_LOG_LEVEL": "DEBUG", **self.extra_env})
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", self.module, *self.args], env=env, stdout=log, stderr=subprocess.STDOUT)
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _names_role(name: str, role: Role) -> bool:
    try:
        return role_of(name) is role
    except ValueError:
        return False


async def service_ready(bus: Bus, service: str) -> bool:
    try:
        await bus.request(service, "health", {}, timeout=1.0)
        return True
    except QueryError:
        return False


@contextlib.asynccontextmanager
async def running(module: str, role: Role, server: NatsServer, home: AarHome, admin: Bus, *,
                  health: bool = True, **kw: object) -> AsyncIterator[ServiceProcess]:
    """A service process, once it answers its ``health`` query (``health=False``: started
    only, for services without one)."""
    proc = ServiceProcess(module, role, server, home, **kw).start()  # type: ignore[arg-type]  # the options of ServiceProcess, passed through
    service = module.rsplit(".", 1)[-1]

    async def ready() -> bool:
        return await service_ready(admin, service)

    if health:
        await wait_until(ready, 30, f"the {service} to answer health queries")
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
async def gateway(nats_server: NatsServer, home: AarHome, admin: Bus) -> AsyncIterator[ServiceProcess]:
    """The stream's door for every role but admin and the recorder (their events go through it)."""
    async with running("services.gateway", Role.GATEWAY, nats_server, home, admin) as proc:
        yield proc


async def recorder_health(bus: Bus) -> dict[str, Any] | None:
    try:
        return await bus.request("recorder", "health", {}, timeout=1.0)
    except QueryError:
        return None


@pytest.fixture
async def recorder(nats_server: NatsServer, home: AarHome, admin: Bus) -> AsyncIterator[ServiceProcess]:
    async with running("services.recorder", Role.RECORDER, nats_server, home, admin) as proc:
        yield proc


async def recorded_count(bus: Bus, sql: str = "SELECT count(*) FROM events") -> int:
    result = await bus.request("recorder", "audit", {"sql": sql}, timeout=10)
    return int(result["rows"][0][0])


def _hub_reachable() -> bool:
    import socket

    try:
        socket.create_connection(("huggingface.co", 443), timeout=2).close()
        return True
    except OSError:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    network = [item for item in items if item.get_closest_marker("network")]
    if network and not _hub_reachable():
        skip = pytest.mark.skip(reason="needs the model/dataset hub (huggingface.co is not reachable from here)")
        for item in network:
            item.add_marker(skip)
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in gpu:
            item.add_marker(skip)
