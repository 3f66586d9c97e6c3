"""Typed queries (bus/query.py) over a real nats-server: the request is validated before
any handler runs, a handler never runs for a request whose answer may not be sent, and
an asker gets the response model."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from pydantic import BaseModel, ConfigDict, Field

from bus import Bus, NatsServer, QueryError, Role
from bus.client import query_subject
from bus.query import BadRequest, Empty, Query, QueryReply

from .conftest import settings


class Add(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: int
    b: int = Field(default=0, ge=0)


class Sum(BaseModel):
    total: int
    asker: str


ADD = Query("orchestrator", "add", Add, Sum)
WRONG = Query("orchestrator", "wrong", Empty, Sum)


class Calls:
    def __init__(self) -> None:
        self.seen: list[tuple[Add, str]] = []

    async def add(self, request: Add, asker: str) -> Sum:
        self.seen.append((request, asker))
        return Sum(total=request.a + request.b, asker=asker)

    async def wrong(self, request: Empty, asker: str) -> Sum:
        return "not a Sum"  # type: ignore[return-value]  # the wrong answer, on purpose


@pytest.fixture
async def served(nats_server: NatsServer) -> AsyncIterator[tuple[Bus, Calls]]:
    service = await Bus.connect(settings(nats_server, Role.ORCHESTRATOR), name="test-orchestrator")
    calls = Calls()
    await service.serve("orchestrator", [ADD.answer(calls.add), WRONG.answer(calls.wrong)])
    await service.nc.flush()
    yield service, calls
    await service.close()


async def test_an_asker_gets_the_response_model_and_the_service_its_verified_name(
    nats_server: NatsServer, served: tuple[Bus, Calls]
) -> None:
    _, calls = served
    agent = await Bus.connect(settings(nats_server, "agent-1"), name="test-agent")
    try:
        answer = await agent.ask(ADD, Add(a=2, b=3))
        assert answer == Sum(total=5, asker="agent-1")
        assert calls.seen == [(Add(a=2, b=3), "agent-1")]
        with pytest.raises(TypeError, match="takes a Add"):
            await agent.ask(ADD, Empty())
    finally:
        await agent.close()


async def test_a_request_that_does_not_validate_never_reaches_the_handler(
    admin: Bus, served: tuple[Bus, Calls]
) -> None:
    _, calls = served
    for body in ({"a": "x"}, {"a": 1, "b": -1}, {"a": 1, "extra": 2}, {}):
        with pytest.raises(QueryError, match="BadRequest: bad 'add' request"):
            await admin.request("orchestrator", "add", body)
    msg = await admin.nc.request(query_subject("orchestrator", "add", "admin"), b"not json", timeout=5)
    reply = QueryReply.model_validate_json(msg.data)
    assert not reply.ok and reply.error_type == BadRequest.__name__
    msg = await admin.nc.request(query_subject("orchestrator", "nope", "admin"), b"{}", timeout=5)
    assert QueryReply.model_validate_json(msg.data).error_type == "UnknownQuery"
    assert calls.seen == []


async def test_a_handler_answering_the_wrong_model_is_an_error_reply(admin: Bus, served: tuple[Bus, Calls]) -> None:
    with pytest.raises(QueryError, match="TypeError: wrong answered a str, not a Sum"):
        await admin.ask(WRONG, Empty())
    assert (await admin.ask(ADD, Add(a=1, b=1))).total == 2  # the service keeps answering


async def test_no_handler_runs_for_a_request_whose_answer_would_go_elsewhere(
    nats_server: NatsServer, served: tuple[Bus, Calls]
) -> None:
    """The reply subject is checked before the handler: a request aimed at another's
    inbox (or at the stream) has no side effect at all, not only no answer."""
    _, calls = served
    agent = await Bus.connect(settings(nats_server, "agent-1"), name="test-agent")
    try:
        for reply in ("_INBOX_agent-2.x", "_INBOX.x", "aar.s-1.session.ended", "$JS.API.STREAM.DELETE.AAR"):
            await agent.nc.publish(query_subject("orchestrator", "add", "agent-1"), b'{"a": 1}', reply=reply)
        await agent.nc.flush()
        await asyncio.sleep(0.5)
        assert calls.seen == []
        assert (await agent.ask(ADD, Add(a=1))).total == 1  # its own inbox: handled
        assert len(calls.seen) == 1
    finally:
        await agent.close()


async def test_a_query_of_another_service_cannot_be_served(nats_server: NatsServer) -> None:
    bus = await Bus.connect(settings(nats_server, Role.FORUM), name="test-forum")
    try:
        with pytest.raises(ValueError, match="orchestrator.add is not a forum query"):
            await bus.serve("forum", [ADD.answer(Calls().add)])
    finally:
        await bus.close()


class Gate:
    """A handler that waits until released, so that requests pile up."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def add(self, request: Add, asker: str) -> Sum:
        self.entered += 1
        await self.release.wait()
        return Sum(total=request.a + request.b, asker=asker)


async def test_an_oversized_request_is_refused_unread_and_one_asker_cannot_fill_a_service(
    nats_server: NatsServer,
) -> None:
    from bus.query import MAX_IN_FLIGHT_PER_ASKER

    service = await Bus.connect(settings(nats_server, Role.ORCHESTRATOR), name="test-orchestrator")
    gate = Gate()
    small = Query("orchestrator", "add", Add, Sum, max_request_bytes=100)
    await service.serve("orchestrator", [small.answer(gate.add)])
    await service.nc.flush()
    agent = await Bus.connect(settings(nats_server, "agent-1"), name="test-agent-1")
    other = await Bus.connect(settings(nats_server, "agent-2"), name="test-agent-2")
    try:
        with pytest.raises(QueryError, match="over its 100-byte limit"):
            await agent.request("orchestrator", "add", {"a": 1, "b": 2, "pad": "x" * 200})
        assert gate.entered == 0  # never parsed, never handled
        waiting = [asyncio.create_task(agent.ask(small, Add(a=i), timeout=10))
                   for i in range(MAX_IN_FLIGHT_PER_ASKER)]
        for _ in range(100):
            if gate.entered == MAX_IN_FLIGHT_PER_ASKER:
                break
            await asyncio.sleep(0.05)
        assert gate.entered == MAX_IN_FLIGHT_PER_ASKER
        with pytest.raises(QueryError, match="Busy: orchestrator is busy with 8 request"):
            await agent.ask(small, Add(a=99), timeout=5)
        theirs = asyncio.create_task(other.ask(small, Add(a=1), timeout=10))  # another asker is still served
        for _ in range(100):
            if gate.entered == MAX_IN_FLIGHT_PER_ASKER + 1:
                break
            await asyncio.sleep(0.05)
        gate.release.set()
        assert (await theirs).asker == "agent-2"
        assert sorted(r.total for r in await asyncio.gather(*waiting)) == list(range(MAX_IN_FLIGHT_PER_ASKER))
        assert (await agent.ask(small, Add(a=5))).total == 5  # and the asker again, once its requests are done
    finally:
        for bus in (agent, other, service):
            await bus.close()
