"""Who may say what on the bus (DESIGN.md section 2).

One NATS user per role. Subject permissions are enforced by nats-server, not
by convention: an agent's connection physically cannot publish a score.
Query (request/reply) subjects live under ``aarq.<service>.>``, outside the
``AAR`` stream, so queries are never recorded as events.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

STREAM = "AAR"
QUERY_PREFIX = "aarq"


class Role(StrEnum):
    ADMIN = "admin"  # the supervisor, the CLI and operators: everything
    ORCHESTRATOR = "orchestrator"
    AGENT = "agent"
    FORUM = "forum"
    ARTIFACTS = "artifacts"
    SCORER = "scorer"
    TRAINER = "trainer"
    RECORDER = "recorder"


# Durable consumer names each role may create and read from.
CONSUMERS: dict[Role, tuple[str, ...]] = {
    Role.RECORDER: ("recorder",),
    Role.TRAINER: ("trainers",),
    Role.SCORER: ("scorer",),
    Role.FORUM: ("forum",),
    Role.ORCHESTRATOR: ("orchestrator",),
    Role.ARTIFACTS: (),
    Role.AGENT: (),
}

# Event subjects (after ``aar.<session>.``) each role may publish.
PUBLISHES: dict[Role, tuple[str, ...]] = {
    Role.ORCHESTRATOR: ("session.>",),
    Role.AGENT: ("agent.>", "idea.>", "forum.posted", "forum.voted"),
    Role.FORUM: ("forum.moderated",),
    Role.ARTIFACTS: ("artifact.>",),
    Role.SCORER: ("experiment.requested", "score.>", "baseline.>", "integrity.>"),
    Role.TRAINER: (
        "experiment.started",
        "experiment.progress",
        "experiment.finished",
        "experiment.failed",
        "integrity.>",  # sandbox violations and --unsafe-no-sandbox runs
    ),
    Role.RECORDER: ("recorder.>",),
}

# Query services each role answers, and the ones it may ask.
SERVES: dict[Role, tuple[str, ...]] = {
    Role.RECORDER: ("recorder",),
    Role.FORUM: ("forum",),
    Role.ARTIFACTS: ("artifacts",),
    Role.SCORER: ("scorer",),
    Role.ORCHESTRATOR: ("orchestrator",),
}
ASKS: dict[Role, tuple[str, ...]] = {
    Role.AGENT: ("forum", "artifacts", "scorer", "orchestrator"),
    Role.ORCHESTRATOR: ("forum", "artifacts", "scorer", "recorder"),
    Role.FORUM: ("artifacts",),
    Role.SCORER: ("artifacts", "forum", "recorder"),
    Role.TRAINER: ("artifacts",),
    Role.ARTIFACTS: (),
    Role.RECORDER: (),
}

# Event subjects (after ``aar.<session>.``) each role may watch with a core subscription.
WATCHES: dict[Role, tuple[str, ...]] = {
    # experiment.failed: an agent learns why its code failed (its own stderr, never labels).
    # score.published only: test, held-out and ablation scores (score.withheld) stay hidden from agents.
    Role.AGENT: ("session.>", "forum.>", "idea.>", "score.published", "integrity.>", "baseline.>", "experiment.failed"),
    Role.ORCHESTRATOR: (">",),
    Role.FORUM: ("forum.>", "idea.>", "score.>"),
    Role.SCORER: (">",),
    Role.TRAINER: ("session.>",),
    Role.ARTIFACTS: ("session.>",),
    Role.RECORDER: (">",),
}


def permissions(role: Role) -> dict[str, object]:
    """nats-server permission block for ``role``."""
    if role is Role.ADMIN:
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    api = f"$JS.API"
    pub: list[str] = [f"aar.*.{s}" for s in PUBLISHES.get(role, ())]
    pub += [f"{QUERY_PREFIX}.{svc}.>" for svc in ASKS.get(role, ())]
    # JetStream: account/stream info and publishing acks are read-only calls.
    pub += [f"{api}.INFO", f"{api}.STREAM.INFO.{STREAM}"]
    for durable in CONSUMERS.get(role, ()):
        pub += [
            f"{api}.CONSUMER.INFO.{STREAM}.{durable}",
            f"{api}.CONSUMER.CREATE.{STREAM}.{durable}",
            f"{api}.CONSUMER.CREATE.{STREAM}.{durable}.>",
            f"{api}.CONSUMER.DURABLE.CREATE.{STREAM}.{durable}",
            f"{api}.CONSUMER.MSG.NEXT.{STREAM}.{durable}",
            f"$JS.ACK.{STREAM}.{durable}.>",
        ]
    if role in (Role.RECORDER, Role.SCORER, Role.FORUM, Role.ORCHESTRATOR):
        # Reading single messages back (dead letters, rebuilding read models).
        pub += [f"{api}.STREAM.MSG.GET.{STREAM}", f"{api}.DIRECT.GET.{STREAM}", f"{api}.DIRECT.GET.{STREAM}.>"]
    sub: list[str] = ["_INBOX.>"]
    sub += [f"{QUERY_PREFIX}.{svc}.>" for svc in SERVES.get(role, ())]
    sub += [f"aar.*.{s}" for s in WATCHES.get(role, ())]
    if role is Role.RECORDER:
        sub.append(f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.>")
    block: dict[str, object] = {"publish": {"allow": sorted(set(pub))}, "subscribe": {"allow": sorted(set(sub))}}
    if role in SERVES:
        block["allow_responses"] = True
    return block


@dataclass(frozen=True, slots=True)
class Credentials:
    """One password per role, kept in ``AAR_HOME/nats/credentials.json`` (mode 0600)."""

    passwords: dict[str, str] = field(default_factory=dict)

    @classmethod
    def generate(cls) -> "Credentials":
        return cls({role.value: secrets.token_urlsafe(24) for role in Role})

    @classmethod
    def load_or_create(cls, path: Path) -> "Credentials":
        if path.exists():
            data = json.loads(path.read_text())
            creds = cls({str(k): str(v) for k, v in data.items()})
            if all(role.value in creds.passwords for role in Role):
                return creds
        creds = cls.generate()
        creds.save(path)
        return creds

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(self.passwords, fh)
        os.replace(tmp, path)

    def password(self, role: Role | str) -> str:
        return self.passwords[Role(role).value]


def server_config(
    *,
    port: int,
    store_dir: Path,
    credentials: Credentials,
    host: str = "127.0.0.1",
    http_port: int | None = None,
    max_file_store: str = "10G",
) -> dict[str, object]:
    """A nats-server configuration (JSON is valid NATS config syntax)."""
    config: dict[str, object] = {
        "host": host,
        "port": port,
        "max_payload": 8 * 1024 * 1024,
        "jetstream": {"store_dir": str(store_dir), "max_file_store": max_file_store},
        "authorization": {
            "users": [
                {"user": role.value, "password": credentials.password(role), "permissions": permissions(role)}
                for role in Role
            ]
        },
    }
    if http_port is not None:
        config["http_port"] = http_port
    return config
