"""compose.yaml, aar up and the NATS permissions against the one process table
(core.processes): adding a service is one entry there plus its module, and this test
says what compose.yaml still lacks."""

from __future__ import annotations

import importlib.util
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from aar.cli import SERVICE_MODULES
from aar.compose_cmds import OWN_CONSUMERS, PROBES
from aar.supervisor import READY_FIRST, default_specs
from bus.roles import ASKS, CONSUMERS, DIRECT, PUBLISH_BUDGETS, PUBLISHES, SERVES, WATCHES, permissions
from core.processes import ADMIN, BY_ROLE, PROCESSES, Process, Role, Scaling, _check

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())["services"]


def _argv(command: str | list[str]) -> list[str]:
    text = command if isinstance(command, str) else shlex.join(command)
    return shlex.split(re.sub(r"\$\{[A-Z0-9_]+:-([^}]*)\}", r"\1", text))


def _running(services: dict[str, dict[str, Any]], proc: Process) -> dict[str, dict[str, Any]]:
    """The compose services that run ``proc``'s service."""
    return {name: svc for name, svc in services.items()
            if _argv(svc.get("command", []))[:3] == ["aar", "service", proc.service]}


def _needs(services: dict[str, dict[str, Any]], name: str) -> set[str]:
    """Every service ``name`` waits for to be healthy, directly or through others."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        for dep, how in (services[todo.pop()].get("depends_on") or {}).items():
            if how["condition"] == "service_healthy" and dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_the_table_is_consistent_and_every_module_exists() -> None:
    _check(PROCESSES)
    for proc in PROCESSES:
        assert proc.module is not None and importlib.util.find_spec(proc.module) is not None, proc.role
        assert (ROOT / proc.module.replace(".", "/") / "__main__.py").exists(), f"python -m {proc.module}"
    bad = tuple(Process(Role.AGENT, "agents", "services.agents", asks=("dashboard",), publish_budget=1)
                if p.role is Role.AGENT else p for p in PROCESSES)  # the dashboard serves no queries
    with pytest.raises(ValueError, match="asks"):
        _check(bad)
    with pytest.raises(ValueError, match="one entry per role"):
        _check(PROCESSES[:-1])


def test_every_process_of_the_table_runs_in_compose_as_its_own_identity(services: dict[str, dict[str, Any]]) -> None:
    for proc in PROCESSES:
        running = _running(services, proc)
        assert running, f"compose.yaml runs no `aar service {proc.service}` ({proc.role})"
        for name, svc in running.items():
            identity = svc["environment"]["AAR_NATS_USER"]
            if proc.scaling is Scaling.EACH_OWN:
                assert identity == name and re.fullmatch(rf"{proc.role.value}-\d+", name), name
            else:  # one process, or a pool sharing the role's identity (trainer, trainer-cpu)
                assert identity == proc.role.value, name
            assert svc["healthcheck"]["test"] == ["CMD", "aar", "healthcheck", identity, "--quiet"], name
            restart = svc["restart"]
            expected = "no" if proc.ends_session else "on-failure" if proc.done_when_exits_0 else "unless-stopped"
            assert restart == expected, (name, restart)
            if proc.scaling is Scaling.ONE:
                assert "deploy" not in svc or svc["deploy"].get("replicas") in (None, 1), name


def test_compose_runs_nothing_the_table_does_not_declare(services: dict[str, dict[str, Any]]) -> None:
    declared = {p.service for p in PROCESSES}
    for name, svc in services.items():
        args = _argv(svc.get("command", []))
        if args[:2] == ["aar", "service"]:
            assert args[2] in declared, f"{name}: `aar service {args[2]}` is not in core.processes"
        user = (svc.get("environment") or {}).get("AAR_NATS_USER")
        if user is not None and user != Role.ADMIN.value:
            assert args[:2] == ["aar", "service"], f"{name} connects as {user} but runs no service"


def test_compose_starts_what_a_process_needs_before_it(services: dict[str, dict[str, Any]]) -> None:
    gateway = next(iter(_running(services, BY_ROLE[Role.GATEWAY])))
    recorder = next(iter(_running(services, BY_ROLE[Role.RECORDER])))
    assert recorder in _needs(services, gateway)
    for proc in PROCESSES:
        for name in _running(services, proc):
            needs = _needs(services, name)
            for asked in proc.asks:
                assert set(_running(services, BY_ROLE[Role(asked)])) & needs, f"{name} asks {asked} unwaited"
            if not proc.direct:  # it publishes through the gateway
                assert gateway in needs, f"{name} does not wait for the gateway"


def test_every_identity_has_a_password_volume(services: dict[str, dict[str, Any]]) -> None:
    init = services["nats-init"]
    volumes = set(init["volumes"])
    identities = {(svc.get("environment") or {}).get("AAR_NATS_USER") for svc in services.values()} - {None}
    assert {ADMIN.role.value} | {p.role.value for p in PROCESSES if p.scaling is not Scaling.EACH_OWN} <= identities
    for identity in identities:
        assert f"nats-pw-{identity}:/data/secrets/{identity}" in volumes, identity
    agents = [i for i in identities if str(i).startswith("agent-")]
    args = _argv(init["command"])
    assert args[args.index("--agents") + 1] == str(len(agents))


def test_aar_up_runs_the_table() -> None:
    specs = default_specs({"AAR_SESSION_CONFIG": '{"session_id": "s-1"}'}, agents=2, trainers=3)
    by_role: dict[Role, list[str]] = {}
    for spec in specs:
        proc = BY_ROLE[spec.role]
        by_role.setdefault(spec.role, []).append(spec.name)
        assert spec.module == proc.module and spec.stop_order == proc.stop_order
        assert spec.restart is not proc.ends_session and spec.rerun_after_success is not proc.done_when_exits_0
        assert spec.session == ("s-1" if proc.session_bound else None)
    assert by_role[Role.TRAINER] == ["trainer-1", "trainer-2", "trainer-3"]
    assert by_role[Role.AGENT] == ["agent-1", "agent-2"]
    assert set(by_role) == {p.role for p in PROCESSES}
    assert set(READY_FIRST) == {p.role for p in PROCESSES if p.ready_first}
    assert SERVICE_MODULES == {p.service: p.module for p in PROCESSES}


def test_permissions_and_health_checks_come_from_the_table() -> None:
    for proc in PROCESSES:
        role = proc.role
        assert PUBLISHES[role] == proc.publishes and WATCHES[role] == proc.watches
        assert CONSUMERS[role] == proc.consumers and ASKS[role] == proc.asks
        assert (role in SERVES) is proc.serves and (role in DIRECT) is proc.direct
        assert PUBLISH_BUDGETS.get(role) == proc.publish_budget
        assert PROBES[role.value] == proc.asks
        assert OWN_CONSUMERS.get(role.value) == proc.probe_consumer
        allow: list[str] = permissions(role, f"{role.value}-7")["subscribe"]["allow"]  # type: ignore[index]  # a nats-server config block: nested JSON
        for subject in proc.watches:
            assert f"aar.*.{subject}" in allow, (role, subject)
    assert PROBES["admin"] == tuple(p.role.value for p in PROCESSES if p.serves)
