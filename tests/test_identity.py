"""Who published an event is verified, not declared; nobody reads another role's mail;
the stream takes no oversized event and no flood (issue: the research record cannot be
forged, hidden or read around). Real nats-server, real gateway and recorder processes."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from nats.aio.msg import Msg

from bus import Bus, NatsServer, PublishDenied, PublishRefused, Role
from core.paths import AarHome
from schemas import Event, EventType
from schemas.agent import AgentToolCalled
from schemas.experiment import ExperimentFinished, Split
from schemas.forum import ForumPosted
from schemas.idea import IdeaProposed
from schemas.scoring import ScoreWithheld

from .conftest import ServiceProcess, recorded_count, running, settings, wait_until

pytestmark = pytest.mark.timeout(120)
SHA = "ab" * 32
S = "s-ident"


async def _stored(admin: Bus, subjects: str) -> int:
    """Messages in the stream on ``subjects``."""
    info = await admin.js.stream_info("AAR", subjects_filter=subjects)
    return sum((info.state.subjects or {}).values())


async def _connect(server: NatsServer, who: Role | str) -> Bus:
    return await Bus.connect(settings(server, who), name=str(who))


async def _rejections(admin: Bus, n: int) -> list[list[Any]]:
    async def enough() -> bool:
        return await recorded_count(admin, "SELECT count(*) FROM rejected_events") >= n

    await wait_until(enough, 30, f"{n} rejected events")
    result = await admin.request("recorder", "audit",
                                 {"sql": "SELECT event_id, reason FROM rejected_events ORDER BY stream_seq"})
    return list(result["rows"])


async def test_an_agent_cannot_act_in_another_agents_name(
    nats_server: NatsServer, admin: Bus, gateway: ServiceProcess, recorder: ServiceProcess
) -> None:
    """agent_id and source are bound to the credentials: an idea, a post or any event
    claiming another identity is refused (the publisher is told) and recorded as rejected."""
    agent = await _connect(nats_server, "agent-1")
    try:
        forged: list[Event[Any]] = [
            Event.create(IdeaProposed(idea_id="i-x", agent_id="agent-2", title="t", hypothesis="h",
                                      builtin_method="naive_soft"), session_id=S, source="agent-1"),
            Event.create(ForumPosted(post_id="p-x", agent_id="agent-2", title="t"), session_id=S, source="agent-1"),
            Event.create(ForumPosted(post_id="p-y", agent_id="agent-1", title="t"), session_id=S, source="agent-2"),
            # a fresh identity for every idea (to escape the rate limit) is the same forgery
            Event.create(IdeaProposed(idea_id="i-y", agent_id="agent-1b", title="t", hypothesis="h",
                                      builtin_method="naive_soft"), session_id=S, source="agent-1b"),
        ]
        for event in forged:
            with pytest.raises(PublishRefused) as refused:
                await agent.publish(event)
            assert refused.value.code == "impersonation"
            assert "publisher's identity 'agent-1'" in str(refused.value)
        honest = Event.create(ForumPosted(post_id="p-ok", agent_id="agent-1", title="t"), session_id=S,
                              source="agent-1")
        await agent.publish(honest)
    finally:
        await agent.close()
    rows = await _rejections(admin, len(forged))
    assert [r[0] for r in rows] == [e.id for e in forged]
    assert all("is not the publisher's identity 'agent-1'" in r[1] for r in rows)
    stored = await admin.request("recorder", "audit", {
        "sql": f"SELECT id FROM events WHERE session_id = '{S}' AND type NOT LIKE 'recorder.%'"})
    assert [r[0] for r in stored["rows"]] == [honest.id]


async def test_a_trainer_cannot_report_another_trainers_result(
    nats_server: NatsServer, admin: Bus, gateway: ServiceProcess, recorder: ServiceProcess
) -> None:
    trainer = await _connect(nats_server, "trainer-1")
    try:
        with pytest.raises(PublishRefused, match="payload.trainer_id 'trainer-2'"):
            await trainer.publish(Event.create(
                ExperimentFinished(experiment_id="x-1", trainer_id="trainer-2", predictions_artifact=SHA,
                                   runtime_s=1.0), session_id=S, source="trainer-1"))
    finally:
        await trainer.close()
    assert len(await _rejections(admin, 1)) == 1


async def test_consumers_apply_the_same_rule_to_what_is_in_the_stream(
    nats_server: NatsServer, admin: Bus, gateway: ServiceProcess
) -> None:
    """What the gateway forwards names its publisher; decode_msg rejects a claim of another
    identity for every consumer (the forum, the scorer, ...), not only for the recorder."""
    from bus import decode_msg
    from schemas import Rejection

    got: list[Any] = []

    async def on(msg: Msg) -> None:
        got.append(decode_msg(msg))

    await admin.nc.subscribe(f"aar.{S}.forum.>", cb=on)
    agent = await _connect(nats_server, "agent-1")
    try:
        with pytest.raises(PublishRefused):
            await agent.publish(Event.create(ForumPosted(post_id="p", agent_id="agent-2", title="t"),
                                             session_id=S, source="agent-1"))
        await agent.publish(Event.create(ForumPosted(post_id="q", agent_id="agent-1", title="t"),
                                         session_id=S, source="agent-1"))

        async def both() -> bool:
            return len(got) == 2

        await wait_until(both, 10, "both forum messages")
    finally:
        await agent.close()
    assert isinstance(got[0], Rejection) and "publisher's identity" in got[0].reason
    assert isinstance(got[1], Event) and got[1].payload.post_id == "q"


async def test_an_agent_publishes_only_into_its_own_session(nats_server: NatsServer, admin: Bus,
                                                            gateway: ServiceProcess) -> None:
    nats_server.add_identity("agent-7", Role.AGENT, session=S)
    agent = await _connect(nats_server, "agent-7")
    try:
        await agent.publish(Event.create(ForumPosted(post_id="p", agent_id="agent-7", title="t"),
                                         session_id=S, source="agent-7"))
        with pytest.raises(PublishDenied):
            await agent.publish(Event.create(ForumPosted(post_id="p", agent_id="agent-7", title="t"),
                                             session_id="s-other", source="agent-7"))
    finally:
        await agent.close()


# -- private inboxes --------------------------------------------------------------------


async def test_no_subscription_gives_an_agent_withheld_scores_replies_or_deliveries(
    nats_server: NatsServer, admin: Bus, gateway: ServiceProcess, recorder: ServiceProcess
) -> None:
    """Each identity receives on its own inbox prefix only. An agent tried every
    subscription that used to work (``_INBOX.>`` was open to every role) while a scorer
    received a delivery of a withheld score from its durable consumer and asked the
    recorder an audit query: the agent got none of it."""
    agent = await _connect(nats_server, "agent-1")
    errors: list[str] = []
    seen: list[str] = []

    async def on(msg: Msg) -> None:
        seen.append(msg.subject)

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    agent.nc._error_cb = on_error
    patterns = [">", "_INBOX.>", "_INBOX_scorer.>", "_INBOX_admin.>", f"aar.{S}.score.withheld",
                "aar.*.score.>", "aarq.>", "aarq.recorder.>", "$JS.>", "aarin.>", "*.>"]
    for pattern in patterns:
        await agent.nc.subscribe(pattern, cb=on)
    await agent.nc.flush()
    scorer = await _connect(nats_server, Role.SCORER)
    try:
        sub = await scorer.pull("scorer", f"aar.{S}.>")
        withheld = ScoreWithheld(experiment_id="x-t", dataset="rotten_tomatoes", split=Split.TEST, n_seeds=1,
                                 accuracy=0.8, accuracy_stderr=0.0, weak_accuracy=0.7, ceiling_accuracy=0.9, pgr=0.5)
        await scorer.publish(Event.create(withheld, session_id=S, source="scorer"))
        msgs = await Bus.fetch(sub, 1, 5.0)
        assert len(msgs) == 1 and b"x-t" in msgs[0].data  # the scorer got its delivery ...
        await msgs[0].ack()
        answer = await scorer.request("recorder", "health", {})
        assert answer["events"] >= 0  # ... and its reply
        await asyncio.sleep(1.0)
    finally:
        await scorer.close()
        await agent.close()
    assert seen == []  # ... the agent nothing
    refused = [e for e in errors if "permissions violation for subscription" in e.lower()]
    assert len(refused) == len(patterns), errors


# -- size caps and publish budgets ---------------------------------------------------------


async def test_oversized_fields_and_events_are_refused_with_the_reason(
    nats_server: NatsServer, admin: Bus, gateway: ServiceProcess
) -> None:
    agent = await _connect(nats_server, "agent-1")
    try:
        doc = json.loads(Event.create(ForumPosted(post_id="p", agent_id="agent-1", title="t"), session_id=S,
                                      source="agent-1").to_json())
        doc["payload"]["body"] = "x" * 100_000  # over the body's 40,000 characters
        with pytest.raises(PublishRefused, match="at most 40000 characters") as refused:
            await agent.publish_raw_many([(f"aar.{S}.forum.posted", json.dumps(doc).encode(), doc["id"])])
        assert refused.value.code == "invalid"
        doc["payload"]["body"] = "x"
        doc["payload"]["tags"] = ["t"] * 11  # over 10 tags
        with pytest.raises(PublishRefused, match="at most 10 items"):
            await agent.publish_raw_many([(f"aar.{S}.forum.posted", json.dumps(doc).encode(), doc["id"])])
        huge = b'{"junk": "' + b"x" * 300_000 + b'"}'  # over the 256 KiB of an event: never stored
        with pytest.raises(PublishRefused, match="over the 262,144-byte limit") as refused:
            await agent.publish_raw_many([(f"aar.{S}.forum.posted", huge, "j")])
        assert refused.value.code == "too_large"
    finally:
        await agent.close()
    assert await _stored(admin, f"aar.{S}.forum.>") == 2  # the two invalid ones, kept as rejected
    info = await admin.js.stream_info("AAR")
    assert info.state.bytes < 200_000  # not the 300 kB one


async def test_a_publish_budget_protects_the_store_and_refusals_are_recorded(
    nats_server: NatsServer, home: AarHome, admin: Bus
) -> None:
    """A flood of valid events from one identity: past its budget (bytes per minute) the
    gateway refuses them, the stream stops growing, other identities are unaffected, and
    the refusals are recorded (counted, not stored)."""
    async with running("services.gateway", Role.GATEWAY, nats_server, home, admin,
                       env={"AAR_PUBLISH_BUDGETS": json.dumps({"agent": 60_000})}):
        flooder, other = await _connect(nats_server, "agent-1"), await _connect(nats_server, "agent-2")
        body = "y" * 15_000
        stored = refused = 0
        for i in range(40):
            event = Event.create(ForumPosted(post_id=f"p{i}", agent_id="agent-1", title="t", body=body),
                                 session_id=S, source="agent-1")
            try:
                await flooder.publish(event)
                stored += 1
            except PublishRefused as exc:
                assert exc.code == "over_budget" and "retry in" in str(exc)
                refused += 1
        assert 3 <= stored <= 5 and refused == 40 - stored  # about 60 kB of 15 kB posts
        await other.publish(Event.create(ForumPosted(post_id="o", agent_id="agent-2", title="t"), session_id=S,
                                         source="agent-2"))
        assert await _stored(admin, f"aar.{S}.forum.>") == stored + 1
        assert (await admin.js.stream_info("AAR")).state.bytes < 100_000
        await flooder.close()
        await other.close()
    # (stopping the gateway flushed the window's count)

    async def recorded() -> bool:
        return await _stored(admin, f"aar.{S}.gateway.refused") == 2

    await wait_until(recorded, 10, "the refusals in the stream")
    counts, seq = [], 1
    for _ in range(2):
        msg = await admin.js.get_msg("AAR", seq=seq, subject=f"aar.{S}.gateway.refused", next=True)
        counts.append(json.loads(msg.data or b"{}")["payload"]["count"])
        seq = int(msg.seq or 0) + 1
    assert counts[0] == 1 and sum(counts) == refused  # the first at once, the rest counted at the window's end


def test_every_role_but_the_doors_has_a_budget() -> None:
    from bus.roles import DIRECT, PUBLISH_BUDGETS

    assert set(PUBLISH_BUDGETS) == set(Role) - DIRECT


async def test_an_identity_name_cannot_be_used_to_reach_another_inbox() -> None:
    from bus.roles import check_identity, inbox_prefix

    for bad in ("agent-1.>", "agent-1 x", "*", ">", "a.b", "", "x" * 65):
        with pytest.raises(ValueError):
            check_identity(bad)
    assert inbox_prefix("agent-1") == "_INBOX_agent-1" and inbox_prefix("admin") == "_INBOX"


async def test_derived_ids_are_keyed_per_identity() -> None:
    """Nobody can predict another identity's derived event ids (and claim them first)."""
    from schemas.base import derived_id, set_id_key

    plain = derived_id("s-", "cause", "score")
    try:
        set_id_key("scorer-password")
        keyed = derived_id("s-", "cause", "score")
        assert keyed == derived_id("s-", "cause", "score") != plain  # stable, and not the unkeyed one
        set_id_key("other-password")
        assert derived_id("s-", "cause", "score") not in (keyed, plain)
    finally:
        set_id_key(None)
    assert derived_id("s-", "cause", "score") == plain


async def test_the_gateway_records_a_conflicting_body_under_a_known_id(
    nats_server: NatsServer, admin: Bus, gateway: ServiceProcess
) -> None:
    """The same id with a different body, within JetStream's duplicate window: not a silent drop."""
    agent = await _connect(nats_server, "agent-1")
    try:
        first = Event.create(AgentToolCalled(agent_id="agent-1", tool="note"), session_id=S, source="agent-1")
        second = Event.create(AgentToolCalled(agent_id="agent-1", tool="vote"), session_id=S, source="agent-1",
                              id=first.id)
        seq = await agent.publish(first)
        assert await agent.publish(first) == seq  # a retry: stored once
        assert await agent.publish(second) == seq  # the first copy stands ...
    finally:
        await agent.close()

    async def recorded() -> bool:
        return await _stored(admin, f"aar.{S}.gateway.refused") == 1

    await wait_until(recorded, 10, "the conflict record")  # ... and the other one is on record
    msg = await admin.js.get_msg("AAR", seq=1, subject=f"aar.{S}.gateway.refused", next=True)
    refusal = json.loads(msg.data or b"{}")["payload"]
    assert refusal["kind"] == "conflict" and first.id in refusal["detail"]
    assert await _stored(admin, f"aar.{S}.agent.>") == 1


def test_the_catalogue_names_who_acts_in_each_event_an_identity_publishes() -> None:
    """Every event type a non-admin role publishes with an agent_id or trainer_id of its
    own declares it (Payload.publisher_field), so the gateway checks it."""
    from bus.roles import PUBLISHES
    from schemas import REGISTRY

    for role in (Role.AGENT, Role.TRAINER):
        field = "agent_id" if role is Role.AGENT else "trainer_id"
        for event_type in EventType:
            if any(event_type.value.startswith(p.removesuffix(">")) if p.endswith(">") else event_type.value == p
                   for p in PUBLISHES[role]) and field in REGISTRY[event_type].model_fields:
                if event_type is EventType.INTEGRITY_FLAGGED:
                    continue  # the flagged agent, not the publisher
                assert REGISTRY[event_type].publisher_field == field, event_type


# -- answers go only where the asker may read them ----------------------------------------


async def test_no_service_answers_anywhere_but_the_askers_own_inbox(
    nats_server: NatsServer, home: AarHome, admin: Bus, gateway: ServiceProcess, recorder: ServiceProcess
) -> None:
    """A responder may publish to the reply subject of a request it got (allow_responses):
    aimed at the stream, the JetStream API or another service, the answer used to land
    there. An agent stored a forged scorer event as an artifact and asked for it with the
    reply subject of a score, of a stream deletion, of the scorer's audit queries, and of
    the gateway in the scorer's name; nothing of it happens."""
    from bus.client import query_subject
    from schemas.scoring import ScorePublished
    from services.artifacts.client import ArtifactClient

    async with running("services.artifacts", Role.ARTIFACTS, nats_server, home, admin,
                       health=False) as _, running("services.forum", Role.FORUM, nats_server, home, admin,
                                                   health=False):
        await asyncio.sleep(2.0)  # both subscribed (neither answers a health query)
        agent = await _connect(nats_server, "agent-1")
        try:
            forged = Event.create(ScorePublished(
                experiment_id="x-forged", idea_id="i-1", agent_id="agent-1", dataset="d", split=Split.DEV,
                n_seeds=1, accuracy=0.99, accuracy_stderr=0.0, weak_accuracy=0.5, ceiling_accuracy=0.9, pgr=1.2),
                session_id=S, source="scorer")
            sha = await ArtifactClient(agent, session_id=S).put(forged.to_json(), "other")
            get = query_subject("artifacts", "get", "agent-1")
            for reply in (forged.subject, "$JS.API.STREAM.DELETE.AAR", "$JS.API.STREAM.PURGE.AAR",
                          "aarq.recorder.audit.scorer", f"aarin.{S}.score.published.scorer"):
                await agent.nc.publish(get, sha.encode(), reply=reply)
                await agent.nc.publish(get, b"nonsense", reply=reply)  # an error answer, empty body
            await agent.nc.publish(query_subject("forum", "stats", "agent-1"), b'{"session_id": "s"}',
                                   reply=f"aar.{S}.forum.posted")
            await agent.nc.flush()
            await asyncio.sleep(1.0)
            assert await ArtifactClient(agent, session_id=S).get(sha) == forged.to_json()  # its own inbox: fine
        finally:
            await agent.close()
    info = await admin.js.stream_info("AAR")  # the stream is there, unpurged ...
    assert await _stored(admin, f"aar.{S}.score.>") == 0  # ... and holds no forged score
    assert await _stored(admin, f"aar.{S}.forum.>") == 0
    assert info.state.messages == await _stored(admin, "aar.*.artifact.stored")  # only the two announcements


async def test_what_reaches_the_stream_without_a_named_publisher_is_rejected(
    nats_server: NatsServer, admin: Bus, recorder: ServiceProcess
) -> None:
    """Only the gateway, the recorder and admin put messages into the stream, and each names
    the publisher. A valid event that arrives any other way (a server's reply aimed at
    the stream) is no one's: recorded as rejected, skipped by every consumer."""
    event = Event.create(ForumPosted(post_id="p", agent_id="agent-1", title="t"), session_id=S, source="agent-1")
    await admin.nc.publish(event.subject, event.to_json())  # core publish: no Aar-Publisher header
    await admin.nc.flush()
    rows = await _rejections(admin, 1)
    assert rows[0][0] == event.id and rows[0][1].startswith("no verified publisher")


async def test_agents_may_not_call_the_jetstream_api(nats_server: NatsServer, admin: Bus) -> None:
    """Any JetStream API call lets its caller aim the server's answer anywhere (into the
    stream, past the gateway), and stream info counts withheld scores per session."""
    agent = await _connect(nats_server, "agent-1")
    try:
        with pytest.raises(Exception):  # noqa: B017 - a denied JetStream call is a timeout or a permissions error
            await asyncio.wait_for(agent.js.stream_info("AAR"), 3)
        for _ in range(50):
            await agent.nc.publish("$JS.API.INFO", b"", reply=f"aar.{S}.agent.started")
        await agent.nc.flush()
        await asyncio.sleep(0.5)
    finally:
        await agent.close()
    assert (await admin.js.stream_info("AAR")).state.messages == 0


async def test_a_flood_of_tiny_events_spends_the_budget_too(nats_server: NatsServer, home: AarHome,
                                                            admin: Bus) -> None:
    """Each event costs the store more than its bytes: 1-byte messages used to pass a
    bytes-only budget by the thousand (and doubled in the stream as rejections)."""
    async with running("services.gateway", Role.GATEWAY, nats_server, home, admin,
                       env={"AAR_PUBLISH_BUDGETS": json.dumps({"agent": 60_000})}):
        agent = await _connect(nats_server, "agent-1")
        try:
            stored = 0
            for i in range(400):
                try:
                    await agent.publish_raw_many([(f"aar.{S}.forum.posted", str(i % 10).encode(), None)])
                    stored += 1
                except PublishRefused as exc:
                    if exc.code == "over_budget":
                        break
                    stored += 1  # "invalid": stored (as a rejection), and counted
        finally:
            await agent.close()
    assert stored <= 60_000 // 512 + 1  # about 117: each counts 512 bytes beyond its size


async def test_ideas_for_made_up_sessions_cost_the_scorer_no_lookups(
    nats_server: NatsServer, home: AarHome, admin: Bus, gateway: ServiceProcess, recorder: ServiceProcess
) -> None:
    """For every idea of a session it did not know, the scorer asked the recorder to
    rebuild it, one query each, ahead of all other work. Now one list of the sessions the
    log saw start answers them (read again at most every 5 s)."""
    async with running("services.scorer", Role.SCORER, nats_server, home, admin, health=False):
        async def consuming() -> bool:
            try:
                await admin.js.consumer_info("AAR", "scorer")
                return True
            except Exception:  # noqa: BLE001 - not yet
                return False

        await wait_until(consuming, 60, "the scorer's consumer")
        agent = await _connect(nats_server, "agent-1")
        before = (await admin.request("recorder", "health", {}))["audits_done"]
        try:
            for i in range(150):
                await agent.publish(Event.create(
                    IdeaProposed(idea_id=f"i-{i}", agent_id="agent-1", title="t", hypothesis="h",
                                 builtin_method="naive_soft"), session_id=f"s-made-up-{i}", source="agent-1"))
        finally:
            await agent.close()

        async def consumed() -> bool:
            info = await admin.js.consumer_info("AAR", "scorer")
            return info.num_pending == 0 and info.num_ack_pending == 0

        await wait_until(consumed, 60, "the scorer to go through them")
    done = (await admin.request("recorder", "health", {}))["audits_done"] - before
    assert done <= 4, f"{done} audit queries for 150 ideas of made-up sessions"
