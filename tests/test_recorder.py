"""The recorder against a real nats-server and a real DuckDB file."""

from __future__ import annotations

import asyncio
import json

import duckdb
import pytest

from bus import Bus, NatsServer, PublishDenied, Role
from core.paths import AarHome
from schemas import EventType

from .conftest import ServiceProcess, recorded_count, recorder_health, settings, wait_until
from .factories import every_event, sample_event

pytestmark = pytest.mark.timeout(120)


def read_db(home: AarHome, sql: str) -> list[tuple]:
    con = duckdb.connect(str(home.events_db), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


async def test_every_event_type_lands_in_duckdb_with_columns_and_views(
    admin: Bus, recorder: ServiceProcess, home: AarHome
) -> None:
    events = every_event("s-all")
    await admin.publish_many(events)

    async def all_in() -> bool:
        return await recorded_count(admin, "SELECT count(*) FROM events WHERE session_id = 's-all'") == len(events)

    await wait_until(all_in, what="every event type recorded")
    recorder.stop()
    rows = read_db(home, "SELECT id, type, schema_version, session_id, source, time, correlation_id, causation_id, payload, subject, stream_seq FROM events WHERE session_id = 's-all'")
    by_id = {r[0]: r for r in rows}
    assert {r[1] for r in rows} == {t.value for t in EventType}
    for event in events:
        row = by_id[event.id]
        assert row[1] == event.type.value
        assert row[2] == event.schema_version
        assert row[4] == event.source
        assert row[5] == event.time
        assert json.loads(row[8]) == event.payload.model_dump(mode="json")
        assert row[9] == event.subject
        assert row[10] >= 1
    # The read models see the same facts.
    assert read_db(home, "SELECT idea_id, agent_id, builtin_method, parent_ideas FROM ideas") == [
        ("idea-0", "agent-1", "conf_filter", ["idea-0"])
    ]
    assert read_db(home, "SELECT experiment_id, status, trainer_id, runtime_s FROM experiments") == [
        ("exp-0", "finished", "trainer-1", 3.2)
    ]
    assert read_db(
        home, "SELECT experiment_id, split, accuracy, pgr, weak_accuracy, ceiling_accuracy FROM scores ORDER BY 1"
    ) == [("exp-0", "dev", 0.8, 0.55, 0.75, 0.84), ("exp-t0", "test", 0.8, 0.55, 0.75, 0.84)]
    assert read_db(home, "SELECT post_id, vote_score, hidden, idea_ids FROM forum_posts") == [
        ("post-0", 1, True, ["idea-0"])
    ]
    assert read_db(home, "SELECT agent_id, input_tokens, cache_read_tokens, cost_usd FROM llm_calls") == [
        ("agent-1", 1200, 1000, 0.0123)
    ]
    assert read_db(home, "SELECT agent_id, direction, ideas, llm_calls, cost_usd, stop_reason FROM agents") == [
        ("agent-1", "ensembling", 1, 1, 0.0123, "budget")
    ]
    assert read_db(home, "SELECT name, events, end_reason FROM sessions") == [("demo", len(events), "max_experiments")]


async def test_same_event_twice_is_one_row(admin: Bus, recorder: ServiceProcess) -> None:
    event = sample_event(EventType.IDEA_PROPOSED, "s-dup")
    first = await admin.publish(event)
    second = await admin.publish(event)
    assert first == second  # JetStream dedup on Nats-Msg-Id
    # Past the dedup window (a raw re-publish without the header): the recorder dedups on id.
    await admin.publish_raw_many([(event.subject, event.to_json(), None)])
    marker = sample_event(EventType.SESSION_ENDED, "s-dup")
    await admin.publish(marker)

    async def marker_in() -> bool:
        return await recorded_count(admin, "SELECT count(*) FROM events WHERE session_id = 's-dup'") >= 2

    await wait_until(marker_in, what="the marker event")
    assert await recorded_count(admin, f"SELECT count(*) FROM events WHERE id = '{event.id}'") == 1


async def test_sigkill_mid_stream_loses_nothing_and_duplicates_nothing(
    admin: Bus, nats_server: NatsServer, home: AarHome, recorder: ServiceProcess
) -> None:
    total = 6000
    events = [sample_event(EventType.AGENT_TOOL_CALLED, "s-kill", n=i) for i in range(total)]

    async def publish_all() -> None:
        for start in range(0, total, 500):
            await admin.publish_many(events[start : start + 500])
            await asyncio.sleep(0.02)

    publisher = asyncio.create_task(publish_all())

    async def some_recorded() -> bool:
        health = await recorder_health(admin)
        return bool(health and health["events"] >= 500)

    await wait_until(some_recorded, what="the first events committed")
    recorder.kill()  # SIGKILL mid-stream: batches may be fetched but not acked
    await publisher
    recorder.start()

    async def everything() -> bool:
        health = await recorder_health(admin)
        return bool(health and health["events"] >= total)

    await wait_until(everything, 60, "all events recorded after the restart")
    recorder.stop()
    ids = [r[0] for r in read_db(home, "SELECT id FROM events WHERE session_id = 's-kill'")]
    assert len(ids) == total
    assert set(ids) == {e.id for e in events}


async def test_garbage_and_invalid_events_are_rejected_not_dropped(admin: Bus, recorder: ServiceProcess) -> None:
    invalid = sample_event(EventType.SCORE_PUBLISHED, "s-bad").model_dump(mode="json")
    invalid["payload"]["accuracy"] = 1.7  # not a probability
    await admin.publish_raw_many(
        [
            ("aar.s-bad.score.published", b"\x00\xffnot json at all", None),
            ("aar.s-bad.score.published", json.dumps(invalid).encode(), None),
        ]
    )

    async def both_rejected() -> bool:
        return await recorded_count(admin, "SELECT count(*) FROM rejected_events") == 2

    await wait_until(both_rejected, what="two rejected events")
    result = await admin.request(
        "recorder", "audit", {"sql": "SELECT subject, reason, raw FROM rejected_events ORDER BY stream_seq"}
    )
    (s1, reason1, raw1), (s2, reason2, _) = result["rows"]
    assert s1 == s2 == "aar.s-bad.score.published"
    assert "not JSON" in reason1 and bytes.fromhex(raw1) == b"\x00\xffnot json at all"
    assert "accuracy" in reason2
    # The rejections are announced as events, and the recorder keeps working.
    good = sample_event(EventType.IDEA_PROPOSED, "s-bad")
    await admin.publish(good)

    async def good_and_announced() -> bool:
        return (
            await recorded_count(
                admin, "SELECT count(*) FROM events WHERE session_id = 's-bad' AND type IN ('idea.proposed', 'recorder.rejected')"
            )
            == 3
        )

    await wait_until(good_and_announced, what="the valid event and two recorder.rejected events")
    assert recorder.proc is not None and recorder.proc.poll() is None


async def test_agent_role_cannot_publish_a_score(
    admin: Bus, nats_server: NatsServer, gateway: ServiceProcess, recorder: ServiceProcess
) -> None:
    agent = await Bus.connect(settings(nats_server, "agent-1"), name="agent-test")
    try:
        forged = sample_event(EventType.SCORE_PUBLISHED, "s-forge", source="agent-1")
        with pytest.raises(PublishDenied):
            await agent.publish(forged, timeout=5)
        test_request = sample_event(EventType.EXPERIMENT_REQUESTED, "s-forge", source="agent-1")
        with pytest.raises(PublishDenied):
            await agent.publish(test_request, timeout=5)
        allowed = sample_event(EventType.IDEA_PROPOSED, "s-forge", source="agent-1")
        await agent.publish(allowed)  # what an agent may do still works
        # Nor can it read the log through the recorder, or touch the stream.
        with pytest.raises(Exception):  # noqa: B017 - denied: no responders, a timeout or a permissions error
            await agent.request("recorder", "audit", {"sql": "SELECT 1"}, timeout=2)
        with pytest.raises(Exception):  # noqa: B017 - denied: a timeout or a permissions error
            await asyncio.wait_for(agent.js.purge_stream("AAR"), 2)
        with pytest.raises(Exception):  # noqa: B017 - denied: a timeout or a permissions error
            await asyncio.wait_for(agent.js.delete_stream("AAR"), 2)
        with pytest.raises(Exception):  # nor read the job queue as a consumer  # noqa: B017 - denied: a timeout or a permissions error
            await asyncio.wait_for(agent.pull("trainers", "aar.*.experiment.requested"), 2)
    finally:
        await agent.close()

    async def idea_in() -> bool:
        return await recorded_count(admin, "SELECT count(*) FROM events WHERE session_id = 's-forge'") == 1

    await wait_until(idea_in, what="the agent's idea")
    assert await recorded_count(admin, "SELECT count(*) FROM events WHERE type = 'score.published'") == 0
    info = await admin.js.stream_info("AAR")
    assert info.state.messages == 1  # the forged events never reached the stream


async def test_max_deliver_exhaustion_becomes_a_dead_letter_event(
    admin: Bus, nats_server: NatsServer, recorder: ServiceProcess
) -> None:
    trainer = await Bus.connect(settings(nats_server, Role.TRAINER), name="trainer-test")
    try:
        sub = await trainer.pull("trainers", "aar.*.experiment.requested", ack_wait=0.5, max_deliver=2)
        job = sample_event(EventType.EXPERIMENT_REQUESTED, "s-dlq")
        await admin.publish(job)
        for _ in range(2):  # receive it twice and never ack: a worker that keeps crashing
            msgs = []
            for _ in range(40):
                msgs = await Bus.fetch(sub, 1, 0.5)
                if msgs:
                    break
            assert msgs and msgs[0].metadata.num_delivered >= 1
        # A pull after ack_wait finds nothing: the server gave up (max_deliver) and says so.
        await asyncio.sleep(0.6)
        assert await Bus.fetch(sub, 1, 1.0) == []
    finally:
        await trainer.close()

    async def dead_lettered() -> bool:
        return (
            await recorded_count(
                admin,
                f"SELECT count(*) FROM events WHERE type = 'recorder.dead_lettered' AND causation_id = '{job.id}'",
            )
            == 1
        )

    await wait_until(dead_lettered, 30, "a recorder.dead_lettered event")
    result = await admin.request(
        "recorder", "audit",
        {"sql": "SELECT payload->>'consumer', payload->>'original_type' FROM events WHERE type = 'recorder.dead_lettered'"},
    )
    assert result["rows"] == [["trainers", "experiment.requested"]]


async def test_recorder_resumes_after_the_server_restarts(
    admin: Bus, nats_server: NatsServer, recorder: ServiceProcess
) -> None:
    before = [sample_event(EventType.FORUM_VOTED, "s-restart", n=i) for i in range(50)]
    await admin.publish_many(before)

    async def count_is(n: int) -> bool:
        try:
            return await recorded_count(admin, "SELECT count(*) FROM events WHERE session_id = 's-restart'") == n
        except Exception:  # noqa: BLE001 - the recorder is restarting: ask again
            return False

    await wait_until(lambda: count_is(50), what="the first half")
    nats_server.stop()
    await asyncio.sleep(0.5)
    nats_server.start()  # same port, same JetStream store
    after = [sample_event(EventType.FORUM_VOTED, "s-restart", n=100 + i) for i in range(50)]

    async def republished() -> bool:
        try:
            await admin.publish_many(after, timeout=2)
            return True
        except Exception:  # noqa: BLE001 - the gateway is restarting: try again
            return False

    await wait_until(republished, 30, "the admin client to reconnect and publish")
    await wait_until(lambda: count_is(100), 30, "the recorder to resume after the restart")
    assert recorder.proc is not None and recorder.proc.poll() is None


@pytest.mark.parametrize("sql", ["DELETE FROM events", "DROP TABLE events", "COPY events TO '/tmp/x.csv'",
                                 "ATTACH '/tmp/other.duckdb'", "SELECT * FROM read_csv('/etc/passwd')"])
async def test_live_audit_is_read_only(admin: Bus, recorder: ServiceProcess, sql: str) -> None:
    from bus import QueryError

    await admin.publish(sample_event(EventType.IDEA_PROPOSED, "s-ro"))

    async def one() -> bool:
        return await recorded_count(admin) == 1

    await wait_until(one, what="the event")
    with pytest.raises(QueryError, match="read-only|disabled"):
        await admin.request("recorder", "audit", {"sql": sql})
    assert await recorded_count(admin) == 1


async def test_a_stopped_recorder_folds_everything_in_and_returns_at_once(
    nats_server: NatsServer, home: AarHome, admin: Bus
) -> None:
    """Stopping wakes the mover at once (it would otherwise wait up to ``idle_after``),
    and its last move puts every acknowledged event in the log."""
    from services.recorder.service import Recorder
    from services.recorder.store import EventStore

    store = EventStore(home.events_db)
    bus = await Bus.connect(settings(nats_server, Role.RECORDER), name="rec-inproc")
    recorder = Recorder(bus, store, idle_after=3600.0, move_every=3600.0)
    stop = asyncio.Event()
    task = asyncio.create_task(recorder.run(stop))
    try:
        await admin.publish_many(every_event("s-stop"))

        async def all_committed() -> bool:
            return recorder.batches > 0 and store.pending() + recorder.counts["events"] >= len(every_event())

        await wait_until(all_committed, 30, "the events to be committed")
        stop.set()
        await asyncio.wait_for(task, 10)
        assert store.pending() == 0
        assert store.counts()["events"] == len(every_event())
    finally:
        stop.set()
        if not task.done():
            task.cancel()
        await bus.close()
        store.close()
