"""The bus: per-role permissions enforced by nats-server, the work queue semantics."""

from __future__ import annotations

import asyncio

import pytest
from nats.aio.msg import Msg

from bus import Bus, NatsServer, PublishDenied, Role
from bus.roles import DIRECT, PUBLISHES, permissions
from schemas import Event, EventType

from .conftest import settings, wait_until
from .factories import sample_event

pytestmark = pytest.mark.timeout(120)


def allowed(role: Role, event_type: EventType) -> bool:
    for pattern in PUBLISHES.get(role, ()):
        if pattern.endswith(".>") and event_type.value.startswith(pattern[:-1]):
            return True
        if pattern == event_type.value:
            return True
    return role is Role.ADMIN


# Who may publish what, written out so a change to the permission table must change this too.
EXPECTED = {
    Role.AGENT: {"agent.started", "agent.llm_called", "agent.tool_called", "agent.stopped", "idea.proposed",
                 "forum.posted", "forum.voted", "workspace.requested"},
    Role.SCORER: {"experiment.requested", "score.published", "score.withheld", "baseline.computed",
                  "integrity.flagged", "workspace.scheduled", "workspace.refused", "idea.duplicate"},
    Role.TRAINER: {"experiment.started", "experiment.progress", "experiment.finished", "experiment.failed",
                   "integrity.flagged", "workspace.finished"},
    Role.ORCHESTRATOR: {"session.started", "session.draining", "session.ended", "session.resumed"},
    Role.FORUM: {"forum.moderated"},
    Role.ARTIFACTS: {"artifact.stored"},
    Role.RECORDER: {"recorder.rejected", "recorder.dead_lettered", "recorder.health"},
    Role.DASHBOARD: set(),  # reads and shows: not one event
}
# The gateway forwards everyone's events: its user may publish anything into the stream
# (its own events are gateway.*). Like admin, it runs no agent-influenced code.
GATEWAY_OWN = {"gateway.refused"}


def test_permission_table_is_the_documented_one() -> None:
    for role, types in EXPECTED.items():
        assert {t.value for t in EventType if allowed(role, t)} == types, role
    assert {t.value for t in EventType if allowed(Role.GATEWAY, t)} == GATEWAY_OWN
    assert "aar.>" in permissions(Role.GATEWAY)["publish"]["allow"]  # type: ignore[index]  # a nats-server config block: nested JSON


def _matching_sample(event_type: EventType, session: str, identity: str) -> Event:
    """A sample event of ``event_type`` as ``identity`` would publish it (its own name in
    ``source`` and in the payload field that names who acted)."""
    event = sample_event(event_type, session)
    payload = event.payload
    if payload.publisher_field is not None:
        payload = payload.model_copy(update={payload.publisher_field: identity})
    return Event.create(payload, session_id=session, source=identity)


@pytest.mark.parametrize("role", list(EXPECTED))
async def test_server_enforces_each_roles_publish_permissions(
    nats_server: NatsServer, admin: Bus, gateway: object, role: Role
) -> None:
    client = await Bus.connect(settings(nats_server, role), name=f"{role}-test")
    session = f"S-Perm-{role.value}"  # mixed case, like real ULID ids
    try:
        for event_type in EventType:
            event = _matching_sample(event_type, session, role.value)
            if event_type.value in EXPECTED[role]:
                assert await client.publish(event, timeout=5) > 0
            else:
                with pytest.raises(PublishDenied):
                    await client.publish(event, timeout=5)
    finally:
        await client.close()
    info = await admin.js.stream_info("AAR", subjects_filter=f"aar.{session}.>")
    assert sum((info.state.subjects or {}).values()) == len(EXPECTED[role])


@pytest.mark.parametrize("role", sorted(set(Role) - DIRECT))
async def test_only_the_gateway_writes_the_stream_for_every_other_role(
    nats_server: NatsServer, admin: Bus, role: Role
) -> None:
    """A role's own publish permission never covers ``aar.>``: every event it stores
    passed the gateway, which names the publisher and enforces sizes and budgets."""
    client = await Bus.connect(settings(nats_server, role), name=f"{role}-direct")
    session = f"s-direct-{role.value}"
    try:
        for event_type in EventType:
            event = _matching_sample(event_type, session, role.value)
            # what JetStream's publish sends, without waiting for an ack that cannot come
            await client.nc.publish(event.subject, event.to_json(), headers={"Nats-Msg-Id": event.id})
        await client.nc.flush()
    finally:
        await client.close()
    info = await admin.js.stream_info("AAR")
    assert info.state.messages == 0


async def test_wrong_password_is_refused(nats_server: NatsServer) -> None:
    from bus import BusSettings

    bad = BusSettings(url=nats_server.url, user="scorer", password="guess")
    with pytest.raises(Exception):  # noqa: B017 - refused auth surfaces as one of several nats-py errors
        await asyncio.wait_for(Bus.connect(bad, connect_timeout=1), 5)


async def test_workers_share_a_durable_queue_and_heartbeats_prevent_redelivery(
    nats_server: NatsServer, admin: Bus
) -> None:
    workers = [await Bus.connect(settings(nats_server, Role.TRAINER), name=f"w{i}") for i in range(2)]
    try:
        subs = [await w.pull("trainers", "aar.*.experiment.requested", ack_wait=1.0, max_deliver=3) for w in workers]
        jobs = [sample_event(EventType.EXPERIMENT_REQUESTED, "s-q", n=i) for i in range(6)]
        await admin.publish_many(jobs)
        seen: list[tuple[int, str]] = []

        async def work(i: int) -> None:
            while len(seen) < len(jobs):
                msgs = await Bus.fetch(subs[i], 1, 0.5)
                for msg in msgs:
                    # Longer than ack_wait: only the heartbeat keeps it from being redelivered.
                    async with Bus.heartbeat(msg, interval=0.3):
                        await asyncio.sleep(1.5 if len(seen) == 0 else 0.05)
                    seen.append((i, msg.data.decode()))
                    await msg.ack()

        await asyncio.wait_for(asyncio.gather(work(0), work(1)), 60)
        assert sorted(d for _, d in seen) == sorted(j.to_json().decode() for j in jobs)  # each once
        assert {i for i, _ in seen} == {0, 1}  # both workers got work
        await asyncio.sleep(1.5)  # past ack_wait: nothing comes back
        assert await Bus.fetch(subs[0], 10, 0.5) == []
    finally:
        for w in workers:
            await w.close()


async def test_agents_cannot_read_withheld_scores(nats_server: NatsServer, admin: Bus) -> None:
    """Test-split, held-out and ablation scores travel as score.withheld: the server
    refuses an agent's subscription to them, while dev scores reach it."""
    from schemas.experiment import Split
    from schemas.scoring import ScorePublished, ScoreWithheld

    agent = await Bus.connect(settings(nats_server, Role.AGENT), name="agent")
    got: list[str] = []
    try:
        async def on(msg: Msg) -> None:
            got.append(msg.subject)

        await agent.nc.subscribe("aar.s-w.score.published", cb=on)
        await agent.nc.subscribe("aar.s-w.score.withheld", cb=on)
        await agent.nc.flush()
        fields = dict(experiment_id="x", dataset="rotten_tomatoes", n_seeds=1, accuracy=0.8, accuracy_stderr=0.0,
                      weak_accuracy=0.7, ceiling_accuracy=0.9, pgr=0.5)
        await admin.publish(Event.create(ScoreWithheld(split=Split.TEST, **fields), session_id="s-w", source="t"))
        await admin.publish(Event.create(ScorePublished(split=Split.DEV, **fields), session_id="s-w", source="t"))
        await wait_until(lambda: _true(bool(got)), 5, "the dev score")
        await asyncio.sleep(0.5)
        assert got == ["aar.s-w.score.published"]
    finally:
        await agent.close()


async def _true(value: bool) -> bool:
    return value
