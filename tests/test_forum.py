"""The forum: the pure read model, then the service process against a real nats-server."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.js.api import StreamConfig

from bus import Bus, NatsServer, PublishRefused, Role
from bus.client import QueryError
from core.paths import AarHome
from schemas import Event, EventType
from schemas.forum import ForumModerated, ForumPosted, ForumVoted
from services.forum.model import MAX_BODY_CHARS, ForumModel, PostHidden, UnknownPost
from services.forum.rebuild import scan, stream_allows_direct

from .conftest import ServiceProcess, settings, wait_until
from .factories import sample_payload

SESSION = "s-forum"
T0 = datetime(2025, 1, 1, tzinfo=UTC)


def post(post_id: str, agent: str = "agent-1", title: str = "a finding", body: str = "", *, n: int = 0,
         reply_to: str | None = None, tags: list[str] | None = None, session: str = SESSION) -> Event:
    return Event.create(
        ForumPosted(post_id=post_id, agent_id=agent, title=title, body=body, reply_to=reply_to, tags=tags or []),
        session_id=session, source=agent, time=T0 + timedelta(seconds=n),
    )


def vote(post_id: str, agent: str, value: int, *, n: int = 0) -> Event:
    return Event.create(ForumVoted(post_id=post_id, agent_id=agent, value=value),
                        session_id=SESSION, source=agent, time=T0 + timedelta(seconds=n))


def ids(posts: list[dict[str, Any]]) -> list[str]:
    return [p["post_id"] for p in posts]


# -- the read model, no NATS ---------------------------------------------------


def sample_events() -> list[Event]:
    return [
        post("p1", "agent-1", "Confidence filtering helps", "Dropping 30% least confident weak labels: PGR 0.41",
             n=1, tags=["conf-filter"]),
        post("p2", "agent-2", "Aux loss", "auxiliary confidence loss, PGR 0.30", n=2, tags=["loss"]),
        post("r1", "agent-2", "Re: filtering", "reproduced with 5 seeds", n=3, reply_to="p1"),
        post("p3", "agent-3", "Nothing works", "", n=4),
        vote("p2", "agent-1", 1, n=5),
        vote("p2", "agent-3", 1, n=6),
        vote("p1", "agent-2", 1, n=7),
        vote("p1", "agent-3", 1, n=8),
        vote("p1", "agent-3", -1, n=9),  # agent-3 changes its mind: only this one counts
        vote("p3", "agent-1", -1, n=10),
        post("p4", "agent-1", "Confidence filtering helps", "Dropping 30% least confident weak labels: PGR 0.41",
             n=11),  # an exact duplicate of p1 (same agent, title, body)
        post("p5", "agent-2", "huge", "x" * (MAX_BODY_CHARS + 1), n=12),
    ]


def answers(model: ForumModel) -> dict[str, Any]:
    return {
        "list": model.list_posts(SESSION, 100),
        "top": model.top(SESSION, 100),
        "stats": model.stats(SESSION),
        "search": model.search(SESSION, "confidence pgr", 100),
        "thread": model.thread("p1"),
    }


def moderated(model: ForumModel) -> list[Event]:
    return [
        Event.create(ForumModerated(post_id=pid, action="hide", reason=reason), session_id=sid, source="forum",
                     time=T0 + timedelta(seconds=60))
        for sid, pid, reason in model.due_moderation()
    ]


def test_read_model_posts_votes_search_top_thread() -> None:
    model = ForumModel()
    events = sample_events()
    assert model.apply_all(events) == len(events)
    assert model.apply_all(events) == 0  # idempotent on the event id

    due = model.due_moderation()
    assert [(pid, reason.split(" ")[0]) for _, pid, reason in due] == [("p4", "exact"), ("p5", "body")]
    assert "duplicate of post p1" in due[0][2] and "20,000" in due[1][2]
    model.apply_all(moderated(model))
    assert model.due_moderation() == []

    assert ids(model.list_posts(SESSION)) == ["p3", "r1", "p2", "p1"]  # newest first, hidden left out
    assert ids(model.list_posts(SESSION, limit=2)) == ["p3", "r1"]
    assert ids(model.list_posts(SESSION, tag="CONF-filter")) == ["p1"]
    p1 = model.thread("p1")["post"]
    assert (p1["vote_score"], p1["votes"], p1["replies"]) == (0, 2, 1)  # +1 (agent-2) -1 (agent-3, changed)
    assert p1["time"] == "2025-01-01T00:00:01+00:00" and p1["tags"] == ["conf-filter"]
    assert set(p1) == {"post_id", "session_id", "agent_id", "title", "body", "reply_to", "idea_ids",
                       "experiment_ids", "tags", "time", "vote_score", "votes", "replies"}
    assert ids(model.thread("p1")["replies"]) == ["r1"]

    # top: vote score (p2 +2), then replies (p1 has one, r1 none), then newest (r1 after p1)
    assert ids(model.top(SESSION)) == ["p2", "p1", "r1", "p3"]
    # search: distinct matched words first ("confidence" and "pgr": p1 and p2), then weight (title matches)
    assert ids(model.search(SESSION, "Confidence PGR")) == ["p1", "p2"]
    assert ids(model.search(SESSION, "filter")) == ["p1", "r1"]  # prefix: "filtering", tag "conf-filter"
    assert model.search(SESSION, "nonexistent") == []
    with pytest.raises(ValueError, match="no words"):
        model.search(SESSION, "  ?! ")

    assert model.stats(SESSION) == {"posts": 3, "replies": 1, "votes": 5, "agents": 3, "hidden": 2}
    assert model.stats("s-other") == {"posts": 0, "replies": 0, "votes": 0, "agents": 0, "hidden": 0}
    with pytest.raises(UnknownPost, match="no post 'nope'"):
        model.thread("nope")
    with pytest.raises(PostHidden, match="hidden by moderation: exact duplicate"):
        model.thread("p4")


def test_read_model_does_not_depend_on_arrival_order() -> None:
    events = sample_events()
    reference = ForumModel()
    reference.apply_all(events)
    mods = moderated(reference)
    reference.apply_all(mods)
    for seed in range(5):
        shuffled = events + mods
        random.Random(seed).shuffle(shuffled)
        model = ForumModel()
        model.apply_all(shuffled)
        assert answers(model) == answers(reference)


def test_a_restore_is_not_undone_by_the_rule() -> None:
    model = ForumModel()
    model.apply_all(sample_events())
    model.apply(Event.create(ForumModerated(post_id="p4", action="restore", reason="operator"),
                             session_id=SESSION, source="admin"))
    assert [pid for _, pid, _ in model.due_moderation()] == ["p5"]
    assert "p4" in ids(model.list_posts(SESSION))


# -- the service process -------------------------------------------------------


async def ask(bus: Bus, name: str, body: dict[str, object]) -> Any:
    return await bus.request("forum", name, body, timeout=5)


async def start_forum(nats_server: NatsServer, home: AarHome, admin: Bus, name: str) -> ServiceProcess:
    proc = ServiceProcess("services.forum", Role.FORUM, nats_server, home, name=name,
                          env={"AAR_FORUM_RESYNC_S": "1"}).start()

    async def ready() -> bool:
        try:
            await admin.request("forum", "stats", {"session_id": SESSION}, timeout=0.5)
        except QueryError:
            return False
        return True

    await wait_until(ready, 30, "the forum to answer")
    return proc


@pytest.fixture
async def agents(nats_server: NatsServer, gateway: ServiceProcess) -> AsyncIterator[dict[str, Bus]]:
    buses = {a: await Bus.connect(settings(nats_server, a), name=a) for a in ("agent-1", "agent-2", "agent-3")}
    try:
        yield buses
    finally:
        for bus in buses.values():
            await bus.close()


async def publish_as(bus: Bus, payload: ForumPosted | ForumVoted) -> Event:
    event = Event.create(payload, session_id=SESSION, source=bus.identity)
    await bus.publish(event)
    return event


def log_lines(proc: ServiceProcess, event: str) -> list[dict[str, Any]]:
    lines = []
    for line in proc.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == event:
            lines.append(record)
    return lines


async def full_state(bus: Bus) -> dict[str, Any]:
    return {
        "list": await ask(bus, "list", {"session_id": SESSION, "limit": 100}),
        "top": await ask(bus, "top", {"session_id": SESSION, "limit": 100}),
        "stats": await ask(bus, "stats", {"session_id": SESSION}),
        "thread": await ask(bus, "thread", {"post_id": "p1"}),
    }


async def test_forum_live_then_rebuilt_from_the_log(nats_server: NatsServer, home: AarHome, admin: Bus, agents: dict[str, Bus]) -> None:
    a1, a2, a3 = agents["agent-1"], agents["agent-2"], agents["agent-3"]
    # Before the forum starts: these are only in the log.
    await publish_as(a1, ForumPosted(post_id="p1", agent_id="agent-1", title="Confidence filtering helps",
                                     body="keep the 70% most confident weak labels: PGR 0.41", tags=["filtering"]))
    await publish_as(a2, ForumVoted(post_id="p1", agent_id="agent-2", value=1))
    # An invalid message on a forum subject (admin may publish anything): skipped, logged.
    await admin.publish_raw_many([(f"aar.{SESSION}.forum.posted", b'{"not": "an event"}', "junk-1")])
    # A post in another agent's name: refused, yet in the stream for the record; skipped too.
    with pytest.raises(PublishRefused, match="impersonation|publisher's identity"):
        await publish_as(a2, ForumPosted(post_id="p-forged", agent_id="agent-1", title="Confidence filtering helps"))

    forum = await start_forum(nats_server, home, admin, "forum-1")
    try:
        assert ids((await ask(a3, "list", {"session_id": SESSION}))["posts"]) == ["p1"]

        # Live: a reply, another post, votes (agent-3 changes its vote), a duplicate and a huge post.
        await publish_as(a2, ForumPosted(post_id="r1", agent_id="agent-2", title="Re: filtering",
                                         body="reproduced on 5 seeds", reply_to="p1"))
        await publish_as(a3, ForumPosted(post_id="p2", agent_id="agent-3", title="Aux confidence loss",
                                         body="PGR 0.30", tags=["loss"]))
        await publish_as(a3, ForumVoted(post_id="p1", agent_id="agent-3", value=1))
        await publish_as(a3, ForumVoted(post_id="p1", agent_id="agent-3", value=-1))
        await publish_as(a1, ForumVoted(post_id="p2", agent_id="agent-1", value=1))
        await publish_as(a2, ForumVoted(post_id="p2", agent_id="agent-2", value=1))
        await publish_as(a1, ForumPosted(post_id="p1-again", agent_id="agent-1", title="Confidence filtering helps",
                                         body="keep the 70% most confident weak labels: PGR 0.41"))
        await publish_as(a2, ForumPosted(post_id="big", agent_id="agent-2", title="all my logs",
                                         body="y" * (MAX_BODY_CHARS + 1)))

        async def settled() -> bool:
            stats = await ask(a1, "stats", {"session_id": SESSION})
            return stats == {"posts": 2, "replies": 1, "votes": 4, "agents": 3, "hidden": 2}

        await wait_until(settled, 10, "the forum to see every event")

        listed = (await ask(a1, "list", {"session_id": SESSION}))["posts"]
        assert ids(listed) == ["p2", "r1", "p1"]
        p1 = next(p for p in listed if p["post_id"] == "p1")
        assert (p1["vote_score"], p1["votes"], p1["replies"]) == (0, 2, 1)  # agent-3's +1 replaced by its -1
        assert ids((await ask(a1, "list", {"session_id": SESSION, "tag": "loss"}))["posts"]) == ["p2"]
        assert ids((await ask(a1, "top", {"session_id": SESSION}))["posts"]) == ["p2", "p1", "r1"]
        # both match both words with the same weight (title + body): the vote score decides
        assert ids((await ask(a1, "search", {"session_id": SESSION, "query": "confidence PGR"}))["posts"]) == ["p2", "p1"]
        assert ids((await ask(a1, "search", {"session_id": SESSION, "query": "filter", "limit": 1}))["posts"]) == ["p1"]
        thread = await ask(a2, "thread", {"post_id": "p1"})
        assert thread["post"]["title"] == "Confidence filtering helps" and ids(thread["replies"]) == ["r1"]
        assert "forum_event_skipped" in forum.log()

        # The moderation events are in the log, with the reason, caused by the post.
        mod = await admin.js.get_msg("AAR", seq=1, subject=f"aar.{SESSION}.forum.moderated", next=True)
        first = Event.parse(json.loads(mod.data or b"{}"))
        assert first.payload.action == "hide" and first.source.startswith("forum")
        reasons = {line["post_id"]: line["reason"] for line in log_lines(forum, "post_moderated")}
        assert reasons.keys() == {"p1-again", "big"}
        assert "duplicate of post p1" in reasons["p1-again"] and "exceeds the limit of 20,000" in reasons["big"]
        with pytest.raises(QueryError, match="hidden by moderation"):
            await ask(a1, "thread", {"post_id": "big"})

        # Bad queries: clear errors, and the service keeps answering.
        bad: list[tuple[str, dict[str, object], str]] = [
            ("list", {}, "session_id: Field required"),
            ("list", {"session_id": SESSION, "limit": "5"}, "limit: Input should be a valid integer"),
            ("top", {"session_id": SESSION, "limit": 101}, "limit: Input should be less than or equal to 100"),
            ("search", {"session_id": SESSION, "query": "?!"}, "no words to search for"),
            ("search", {"session_id": SESSION, "query": "x", "limt": 3}, "limt: Extra inputs are not permitted"),
            ("thread", {"post_id": "nope"}, "no post 'nope'"),
            ("nonsense", {}, "unknown query 'nonsense'"),
        ]
        for name, body, message in bad:
            with pytest.raises(QueryError, match=message):
                await ask(a1, name, body)
        reply = json.loads((await a1.nc.request("aarq.forum.stats.agent-1", b"not json", timeout=5)).data)
        assert reply["ok"] is False and reply["error"].startswith("BadRequest: bad 'stats' request: <request>: Invalid JSON")
        assert forum.proc is not None and forum.proc.poll() is None

        before = await full_state(a1)
    finally:
        assert forum.stop() == 0

    # A new process rebuilds the same state from the log alone, and moderates nothing again.
    await publish_as(a1, ForumPosted(post_id="p1-again-2", agent_id="agent-1", title="Confidence filtering helps",
                                     body="keep the 70% most confident weak labels: PGR 0.41"))
    forum2 = await start_forum(nats_server, home, admin, "forum-2")
    try:
        after = await full_state(a1)
        # Equal, but for the duplicate posted while the forum was down: hidden at start.
        before["stats"]["hidden"] += 1
        assert after == before
        moderated_now = [line["post_id"] for line in log_lines(forum2, "post_moderated")]
        assert moderated_now == ["p1-again-2"]
        [rebuilt] = log_lines(forum2, "forum_rebuilt")
        assert rebuilt["skipped"] == 2  # the invalid message and the forged post, skipped again
    finally:
        assert forum2.stop() == 0


async def test_the_forum_role_scans_forum_events_only_with_or_without_direct_get(nats_server: NatsServer, admin: Bus) -> None:
    events = [Event.create(sample_payload(t, i), session_id=f"s-{i}", source="test")
              for i in range(3) for t in (EventType.SESSION_STARTED, EventType.FORUM_POSTED, EventType.FORUM_VOTED)]
    await admin.publish_many(events)
    forum = await Bus.connect(settings(nats_server, Role.FORUM), name="forum-scan")
    try:
        expected = [e.id for e in events if e.type.value.startswith("forum.")]
        assert await stream_allows_direct(forum) is False
        got = [Event.parse(json.loads(m.data)).id async for m in scan(forum)]
        assert got == expected
        assert [m.seq async for m in scan(forum, 5)] == [5, 6, 8, 9]

        info = await admin.js.stream_info("AAR")
        config: StreamConfig = info.config
        config.allow_direct = True
        await admin.js.update_stream(config)
        assert await stream_allows_direct(forum) is True
        assert [Event.parse(json.loads(m.data)).id async for m in scan(forum, direct=True)] == expected
    finally:
        await forum.close()
