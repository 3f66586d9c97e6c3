"""The bus: per-role permissions enforced by nats-server, the work queue semantics."""

from __future__ import annotations

import asyncio

import pytest

from bus import Bus, NatsServer, PublishDenied, Role
from bus.roles import PUBLISHES
from schemas import EventType

from .conftest import settings
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
                 "forum.posted", "forum.voted"},
    Role.SCORER: {"experiment.requested", "score.published", "baseline.computed", "integrity.flagged"},
    Role.TRAINER: {"experiment.started", "experiment.progress", "experiment.finished", "experiment.failed",
                   "integrity.flagged"},
    Role.ORCHESTRATOR: {"session.started", "session.draining", "session.ended"},
    Role.FORUM: {"forum.moderated"},
    Role.ARTIFACTS: {"artifact.stored"},
    Role.RECORDER: {"recorder.rejected", "recorder.dead_lettered", "recorder.health"},
}


def test_permission_table_is_the_documented_one() -> None:
    for role, types in EXPECTED.items():
        assert {t.value for t in EventType if allowed(role, t)} == types, role


@pytest.mark.parametrize("role", list(EXPECTED))
async def test_server_enforces_each_roles_publish_permissions(nats_server: NatsServer, admin: Bus, role: Role) -> None:
    client = await Bus.connect(settings(nats_server, role), name=f"{role}-test")
    try:
        for event_type in EventType:
            event = sample_event(event_type, f"S-Perm-{role.value}")  # mixed case, like real ULID ids
            if event_type.value in EXPECTED[role]:
                assert await client.publish(event, timeout=5) > 0
            else:
                with pytest.raises(PublishDenied):
                    await client.publish(event, timeout=5)
    finally:
        await client.close()
    info = await admin.js.stream_info("AAR", subjects_filter=f"aar.S-Perm-{role.value}.>")
    assert info.state.messages == len(EXPECTED[role])


async def test_wrong_password_is_refused(nats_server: NatsServer) -> None:
    from bus import BusSettings

    bad = BusSettings(url=nats_server.url, user="scorer", password="guess")
    with pytest.raises(Exception):
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
