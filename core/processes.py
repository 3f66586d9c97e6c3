"""The process table (DESIGN.md section 2): the one place that says which processes
AAR runs and what each may do.

Every other view of the processes is derived from :data:`PROCESSES`:

- the NATS users and their subject permissions (:mod:`bus.roles`: what each role
  publishes, watches, consumes, serves and asks);
- the gateway's publish budgets (:mod:`services.gateway`);
- ``aar service NAME`` (:mod:`aar.cli`) and ``aar up``'s supervisor (start and stop
  order, who must answer before the next one starts, whose exit ends the session);
- ``aar healthcheck`` (:mod:`aar.compose_cmds`: the services a role asks are the ones
  its health check probes);
- compose.yaml, which tests/test_process_table.py checks against this table.

Adding a service is one entry here plus its module (``services/<name>/__main__.py``).
Event subjects are written after ``aar.<session>.`` (``domain.event`` or ``domain.>``).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    """A NATS role: every identity (``agent-1``, ``trainer-2``, ``scorer``) has one."""

    ADMIN = "admin"  # the supervisor, the CLI and operators: everything
    ORCHESTRATOR = "orchestrator"
    AGENT = "agent"
    FORUM = "forum"
    ARTIFACTS = "artifacts"
    SCORER = "scorer"
    TRAINER = "trainer"
    RECORDER = "recorder"
    GATEWAY = "gateway"  # the stream's door for every other role
    DASHBOARD = "dashboard"  # the web view: reads, never publishes


class Scaling(StrEnum):
    """How many processes of a role run, and under which NATS identities."""

    ONE = "one"  # one process, its identity named like its role (``scorer``)
    POOL = "pool"  # replicas doing the same work: ``trainer-1`` .. under aar up, one shared identity under compose
    EACH_OWN = "each_own"  # replicas that act for themselves (agents): each its own identity, always


@dataclass(frozen=True, slots=True)
class Process:
    role: Role
    service: str | None  # ``aar service NAME``; None: not a service process (admin)
    module: str | None  # what ``python -m`` runs
    publishes: tuple[str, ...] = ()  # event subjects it may put into the stream
    watches: tuple[str, ...] = ()  # event subjects it may watch with a core subscription
    consumers: tuple[str, ...] = ()  # durable JetStream consumers it may create and read (any filter)
    serves: bool = False  # answers queries as ``aarq.<role>.<name>.<asker>``
    asks: tuple[str, ...] = ()  # the query services it may ask (its health check asks them all)
    reads_back: bool = False  # may read any single stream message back (dead letters, rebuilds)
    direct: bool = False  # publishes into the stream itself, not through the gateway
    publish_budget: int | None = None  # the gateway's budget, bytes per minute per identity
    scaling: Scaling = Scaling.ONE
    stop_order: int = 50  # lower stops first (aar up)
    ready_first: bool = False  # nothing later starts before it answers its health query
    ends_session: bool = False  # never restarted: its exit ends the session
    done_when_exits_0: bool = False  # a clean exit means its work is done (not restarted)
    session_bound: bool = False  # its identity may publish into its own session only
    probe_consumer: str | None = None  # the durable consumer it creates at start (health check)


# Publish budgets are a session's measured peak with a wide margin. 3 offline agents and
# one trainer: 19 KB/min per agent, 63 KB/min for the trainer, 42 KB/min for the scorer.
PROCESSES: tuple[Process, ...] = (
    Process(
        Role.RECORDER, "recorder", "services.recorder", publishes=("recorder.>",), watches=(">",),
        consumers=("recorder",), serves=True, reads_back=True, direct=True, stop_order=90, ready_first=True,
        probe_consumer="recorder",
    ),
    Process(
        # Its own refusals only; it forwards everyone else's events (its user may write aar.>).
        Role.GATEWAY, "gateway", "services.gateway", publishes=("gateway.>",), serves=True, direct=True,
        stop_order=85, ready_first=True,
    ),
    Process(
        # It announces every identity's blobs (each identity's puts have a budget of their own).
        Role.ARTIFACTS, "artifacts", "services.artifacts", publishes=("artifact.>",), watches=("session.>",),
        serves=True, publish_budget=16_000_000, stop_order=80,
    ),
    Process(
        Role.FORUM, "forum", "services.forum", publishes=("forum.moderated",),
        watches=("forum.>", "idea.>", "score.>"), consumers=("forum",), serves=True, asks=("artifacts",),
        reads_back=True, publish_budget=1_000_000, stop_order=70,
    ),
    Process(
        Role.SCORER, "scorer", "services.scorer",
        publishes=("experiment.requested", "score.>", "baseline.>", "integrity.>", "workspace.scheduled",
                   "workspace.refused", "idea.duplicate"), watches=(">",),
        consumers=("scorer",), serves=True, asks=("recorder", "artifacts", "forum"), reads_back=True,
        publish_budget=8_000_000, stop_order=60, probe_consumer="scorer",
    ),
    Process(
        Role.TRAINER, "trainer", "services.trainer",
        publishes=(
            "experiment.started", "experiment.progress", "experiment.finished", "experiment.failed",
            "integrity.>",  # sandbox violations and --unsafe-no-sandbox runs
            "workspace.finished",
        ),
        # Two queues: experiments, and agents' workspace runs (quick runs never wait behind them).
        watches=("session.>",), consumers=("trainers", "workspace"), asks=("artifacts",), publish_budget=8_000_000,
        scaling=Scaling.POOL, stop_order=50, probe_consumer="trainers",
    ),
    Process(
        Role.ORCHESTRATOR, "orchestrator", "services.orchestrator", publishes=("session.>",), watches=(">",),
        consumers=("orchestrator",), serves=True, asks=("recorder", "artifacts", "forum", "scorer"),
        reads_back=True, publish_budget=1_000_000, stop_order=10, ends_session=True,
    ),
    Process(
        Role.AGENT, "agents", "services.agents", publishes=("agent.>", "idea.proposed", "forum.posted", "forum.voted",
                                                    "workspace.requested"),
        # experiment.failed: an agent learns why its code failed (its own stderr, never labels).
        # score.published only: test, held-out and ablation scores (score.withheld) stay hidden.
        # workspace.finished / refused: what its quick runs printed and returned (agent-visible data only).
        watches=("session.>", "forum.>", "idea.>", "score.published", "integrity.>", "baseline.>",
                 "experiment.failed", "workspace.finished", "workspace.refused"),
        asks=("orchestrator", "forum", "artifacts", "scorer"), publish_budget=2_000_000,
        scaling=Scaling.EACH_OWN, stop_order=20, done_when_exits_0=True, session_bound=True,
    ),
    Process(
        # Reads the stream (every session's events, live) and asks the recorder's audit SQL
        # (and the scorer's and forum's read queries); publishes nothing: no event subject,
        # and a zero budget at the gateway besides.
        Role.DASHBOARD, "dashboard", "services.dashboard", watches=(">",), asks=("recorder", "scorer", "forum"),
        publish_budget=0, stop_order=5,
    ),
)

# The operators' role: no process of its own (the supervisor, the CLI), may do anything.
ADMIN = Process(Role.ADMIN, None, None, direct=True)

BY_ROLE: dict[Role, Process] = {p.role: p for p in (*PROCESSES, ADMIN)}
BY_SERVICE: dict[str, Process] = {p.service: p for p in PROCESSES if p.service is not None}


def process(role: Role) -> Process:
    """The table's entry for ``role``."""
    return BY_ROLE[role]


def query_services() -> tuple[str, ...]:
    """The services that answer queries, in table order (what admin's health check asks)."""
    return tuple(p.role.value for p in PROCESSES if p.serves)


def asks(role: Role) -> tuple[str, ...]:
    """The query services ``role`` may ask (admin: every one)."""
    return query_services() if role is Role.ADMIN else BY_ROLE[role].asks


def _check(table: tuple[Process, ...]) -> None:
    """Refuse an inconsistent table at import: one entry per role, every service asked
    is served, no role asks itself, budgets exactly for the roles behind the gateway."""
    roles = [p.role for p in table]
    if len(roles) != len(set(roles)) or set(roles) != set(Role) - {Role.ADMIN}:
        raise ValueError(f"the process table needs one entry per role but admin, has {roles}")
    served = {p.role.value for p in table if p.serves}
    for p in table:
        if not set(p.asks) <= served or p.role.value in p.asks:
            raise ValueError(f"{p.role} asks {p.asks}: only other roles' services ({sorted(served)})")
        if (p.publish_budget is None) != p.direct:
            raise ValueError(f"{p.role}: a publish budget is for exactly the roles behind the gateway")
        # consumers and reads_back each open the whole stream to the role (a consumer's filter
        # and a direct get's subject are the role's choice), direct lets it name any publisher,
        # serves lets it answer into others' inboxes: none of it for a role bound to a session.
        if p.session_bound and (p.consumers or p.reads_back or p.direct or p.serves):
            raise ValueError(f"{p.role} acts for itself in one session: no consumers, read-back, direct "
                             "publishing or serving")


_check(PROCESSES)
