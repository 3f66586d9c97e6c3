"""Who may say what on the bus (DESIGN.md sections 2 and 3), derived from the process
table (core.processes: what each role publishes, watches, consumes, serves and asks).

One NATS user per process identity (``agent-1``, ``trainer-2``, ``scorer``, ...), each of
one role. Subject permissions are enforced by nats-server, not by convention:

- Only the gateway, the recorder and admin may publish into the ``AAR`` stream
  (``aar.>``). Every other identity publishes its events to the gateway, on
  ``aarin.<session>.<domain>.<event>.<identity>``, and may only use subjects ending in
  its own name: the gateway takes the identity from that last token (the server
  guarantees it), refuses what is too large or over the identity's publish budget,
  and forwards the rest into the stream naming the identity, so that every consumer
  can check that the event's ``source`` (and ``agent_id`` / ``trainer_id``) is the
  publisher's own (see :mod:`bus.gateway`).
- Queries (request/reply) go to ``aarq.<service>.<name>.<identity>``, outside the
  stream, so they are never recorded as events and the service knows who asks.
- Each identity receives replies and deliveries on its own inbox prefix
  (``_INBOX_<identity>.>``) and may subscribe to nothing else of anyone's; a service
  answers with ``allow_responses`` (it may publish to the reply subject of a request
  it received, and nowhere else).
"""

from __future__ import annotations

import json
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path

from core.processes import ADMIN, PROCESSES, Role

STREAM = "AAR"
QUERY_PREFIX = "aarq"
INGEST_PREFIX = "aarin"  # events on their way to the gateway (core NATS, not stored)


# Roles that publish into the stream themselves; every other one goes through the gateway.
DIRECT = frozenset(p.role for p in (*PROCESSES, ADMIN) if p.direct)

# The gateway's publish budgets, bytes per minute per identity (a burst of up to one
# minute's budget is allowed): core.processes.
PUBLISH_BUDGETS: dict[Role, int] = {p.role: p.publish_budget for p in PROCESSES if p.publish_budget is not None}

# What one NATS message may carry: an event (at most schemas.base.MAX_EVENT_BYTES) or an
# artifact (services.artifacts: 8 MB), with room for headers.
MAX_PAYLOAD = 8 * 1024 * 1024 + 64 * 1024

_IDENTITY = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def check_identity(name: str) -> str:
    """``name`` if it can be an identity (a NATS subject token), else ValueError."""
    if not _IDENTITY.fullmatch(name):
        raise ValueError(f"identity {name!r} must be 1-64 letters, digits, '_' or '-'")
    return name


def role_of(identity: str) -> Role:
    """The role of an identity: its name (``scorer``) or the name and a suffix (``agent-1``)."""
    for role in Role:
        if identity == role.value or identity.startswith(role.value + "-"):
            return role
    raise ValueError(f"identity {identity!r} names no role ({', '.join(r.value for r in Role)})")


def inbox_prefix(identity: str) -> str:
    """Where ``identity`` receives replies and deliveries (admin: NATS's default)."""
    return "_INBOX" if identity == Role.ADMIN.value else f"_INBOX_{identity}"


# What each role may do, from the process table (core.processes). Event subjects are
# written after ``aar.<session>.``.
CONSUMERS: dict[Role, tuple[str, ...]] = {p.role: p.consumers for p in PROCESSES}
PUBLISHES: dict[Role, tuple[str, ...]] = {p.role: p.publishes for p in PROCESSES}
SERVES: dict[Role, tuple[str, ...]] = {p.role: (p.role.value,) for p in PROCESSES if p.serves}
ASKS: dict[Role, tuple[str, ...]] = {p.role: p.asks for p in PROCESSES}
WATCHES: dict[Role, tuple[str, ...]] = {p.role: p.watches for p in PROCESSES}
READS_BACK = frozenset(p.role for p in PROCESSES if p.reads_back)


def uses_jetstream(role: Role) -> bool:
    """Whether ``role`` talks to JetStream (durable consumers, or the stream itself)."""
    return role in DIRECT or bool(CONSUMERS.get(role))


def _one_token(pattern: str) -> str:
    """``domain.>`` -> ``domain.*``: every event subject is ``<domain>.<event>``."""
    return pattern[:-1] + "*" if pattern.endswith(".>") else pattern


def permissions(role: Role, identity: str | None = None, session: str | None = None) -> dict[str, object]:
    """nats-server permission block for ``identity`` (default: the role's own name) of
    ``role``; ``session``: the only session it may publish into (None: any)."""
    if role is Role.ADMIN:
        return {"publish": {"allow": [">"]}, "subscribe": {"allow": [">"]}}
    me = check_identity(identity or role.value)
    sid = session or "*"
    api = "$JS.API"
    pub: list[str]
    if role is Role.GATEWAY:
        pub = ["aar.>"]
    elif role in DIRECT:
        pub = [f"aar.{sid}.{s}" for s in PUBLISHES.get(role, ())]
    else:
        pub = [f"{INGEST_PREFIX}.{sid}.{_one_token(s)}.{me}" for s in PUBLISHES.get(role, ())]
    pub += [f"{QUERY_PREFIX}.{svc}.*.{me}" for svc in ASKS.get(role, ())]
    # JetStream: account and stream info, for the roles that use JetStream at all. Agents
    # do not: any JetStream API call lets its caller aim the server's answer anywhere,
    # into the stream included, and stream info tells how many withheld scores exist.
    if uses_jetstream(role):
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
    if role in READS_BACK:
        # Reading single messages back (dead letters, rebuilding read models).
        pub += [f"{api}.STREAM.MSG.GET.{STREAM}", f"{api}.DIRECT.GET.{STREAM}", f"{api}.DIRECT.GET.{STREAM}.>"]
    sub: list[str] = [f"{inbox_prefix(me)}.>"]
    sub += [f"{QUERY_PREFIX}.{svc}.*.*" for svc in SERVES.get(role, ())]
    sub += [f"aar.*.{s}" for s in WATCHES.get(role, ())]
    if role is Role.RECORDER:
        sub.append(f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{STREAM}.>")
    if role is Role.GATEWAY:
        sub.append(f"{INGEST_PREFIX}.>")
    block: dict[str, object] = {"publish": {"allow": sorted(set(pub))}, "subscribe": {"allow": sorted(set(sub))}}
    if role in SERVES:
        block["allow_responses"] = True
    return block


@dataclass(frozen=True, slots=True)
class Identity:
    """One NATS user: a process identity of one role, optionally bound to one session."""

    name: str
    role: Role
    password: str
    session: str | None = None


@dataclass(slots=True)
class Credentials:
    """One password per identity, kept in ``AAR_HOME/nats/credentials.json`` (mode 0600).
    Every role has an identity of its own name (a single service, or a pool of replicas
    that share it); ``add`` makes more (``agent-1``, ``trainer-2``, ...)."""

    identities: dict[str, Identity] = field(default_factory=dict)

    @classmethod
    def generate(cls) -> Credentials:
        creds = cls()
        for role in Role:
            creds.add(role.value, role)
        return creds

    @classmethod
    def load_or_create(cls, path: Path) -> Credentials:
        creds = cls.load(path) if path.exists() else None
        if creds is None:
            creds = cls.generate()
            creds.save(path)
        elif any(role.value not in creds.identities for role in Role):
            for role in Role:  # a file from an older version: add what is missing
                if role.value not in creds.identities:
                    creds.add(role.value, role)
            creds.save(path)
        return creds

    @classmethod
    def load(cls, path: Path) -> Credentials | None:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(data, dict):
            return None
        creds = cls()
        entries = data.get("identities") if "identities" in data else {k: {"password": v} for k, v in data.items()}
        if not isinstance(entries, dict):
            return None
        for name, entry in entries.items():
            try:
                role = Role(entry.get("role") or role_of(name))
                creds.identities[name] = Identity(check_identity(name), role, str(entry["password"]),
                                                  entry.get("session"))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
        return creds

    def add(self, name: str, role: Role, *, session: str | None = None) -> Identity:
        """The identity ``name`` (created with a fresh password, or re-bound to ``session``)."""
        check_identity(name)
        old = self.identities.get(name)
        if old is not None and old.role is role and old.session == session:
            return old
        ident = Identity(name, role, old.password if old is not None else secrets.token_urlsafe(24), session)
        self.identities[name] = ident
        return ident

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        data = {"identities": {i.name: {"role": i.role.value, "password": i.password, "session": i.session}
                               for i in self.identities.values()}}
        with os.fdopen(fd, "w") as fh:
            json.dump(data, fh)
        os.replace(tmp, path)

    def password(self, identity: Role | str) -> str:
        name = identity.value if isinstance(identity, Role) else identity
        try:
            return self.identities[name].password
        except KeyError:
            raise KeyError(f"no credentials for identity {name!r}") from None

    def role(self, identity: str) -> Role:
        return self.identities[identity].role if identity in self.identities else role_of(identity)


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
        "max_payload": MAX_PAYLOAD,
        "jetstream": {"store_dir": str(store_dir), "max_file_store": max_file_store},
        "authorization": {
            "users": [
                {"user": i.name, "password": i.password, "permissions": permissions(i.role, i.name, i.session)}
                for i in credentials.identities.values()
            ]
        },
    }
    if http_port is not None:
        config["http_port"] = http_port
    return config
