"""The Claude backend against a scripted Messages API over real HTTP (tests/fake_anthropic.py),
with a real nats-server and, where the log matters, the real recorder."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import anthropic
import pytest
from structlog.testing import capture_logs

from bus import Bus, NatsServer
from schemas import Event, decode, new_session_id
from schemas.session import EndReason, SessionDraining
from services.agents.assignment import Assignment
from services.agents.claude import NUDGE, Conversation, MissingApiKey, RetryPolicy, run_claude
from services.agents.pricing import FALLBACK, PRICES, cost_usd, normalize, price_for
from services.agents.toolbox import TOOL_SPECS, Toolbox

from .conftest import ServiceProcess, recorded_count, settings, wait_until
from .fake_anthropic import (
    FakeAnthropic,
    dropped,
    error,
    message,
    overloaded,
    rate_limited,
    text,
    tool_use,
    usage,
)

MODEL = "claude-sonnet-4-6"  # (4-5 is deprecated: the SDK warns)
FAST = RetryPolicy(attempts=5, base_s=0.01, cap_s=0.05)
EPHEMERAL = {"type": "ephemeral"}


@pytest.fixture
async def agent_bus(nats_server: NatsServer, admin: Bus, gateway: ServiceProcess) -> AsyncIterator[Bus]:
    bus = await Bus.connect(settings(nats_server, "agent-1"), name="agent-claude-test")
    try:
        yield bus
    finally:
        await bus.close()


@pytest.fixture
async def toolbox(agent_bus: Bus) -> AsyncIterator[Toolbox]:
    box = Toolbox(agent_bus, new_session_id(), "agent-1", source="agent-1")
    await box.start()
    try:
        yield box
    finally:
        await box.close()


class Collected:
    """Events of one session, as a watcher (the admin) sees them on the bus."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    def of(self, event_type: str) -> list[Any]:
        return [e.payload for e in self.events if e.type == event_type]


@pytest.fixture
async def seen(admin: Bus, toolbox: Toolbox) -> AsyncIterator[Collected]:
    collected = Collected()

    async def on_msg(msg: Any) -> None:
        event = decode(msg.data, msg.subject)
        if isinstance(event, Event):
            collected.events.append(event)

    sub = await admin.nc.subscribe(f"aar.{toolbox.session_id}.>", cb=on_msg)
    await admin.nc.flush()
    try:
        yield collected
    finally:
        await sub.unsubscribe()


def assignment_for(toolbox: Toolbox, **overrides: Any) -> Assignment:
    fields: dict[str, Any] = dict(session_id=toolbox.session_id, agent_id=toolbox.agent_id, model=MODEL,
                                  direction="Look at the teacher's confidence: when should the student trust it?",
                                  backend="claude")
    return Assignment(**{**fields, **overrides})


def client_for(fake: FakeAnthropic, key: str = "test-key") -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(base_url=fake.url, api_key=key, max_retries=0)


async def rows(admin: Bus, sql: str) -> list[list[Any]]:
    return (await admin.request("recorder", "audit", {"sql": sql}, timeout=10))["rows"]


def _credential(headers: dict[str, str]) -> str:
    return headers.get("x-api-key") or headers.get("authorization", "")  # the SDK version decides which


def tool_results(request_body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """tool_use_id -> tool_result block of the newest message."""
    return {b["tool_use_id"]: b for b in request_body["messages"][-1]["content"] if b.get("type") == "tool_result"}


# -- the loop, end to end ----------------------------------------------------------------


async def test_tools_run_results_go_back_and_everything_is_recorded(
    admin: Bus, recorder: ServiceProcess, toolbox: Toolbox
) -> None:
    note, methods = tool_use("note", {"text": "confidence first"}), tool_use("list_methods")
    source, forum = tool_use("read_method", {"name": "naive_soft"}), tool_use("read_forum", {"limit": 5})
    propose = tool_use("propose_idea", {"title": "soft CE reference", "hypothesis": "a reference point",
                                        "builtin_method": "naive_soft"})
    script = [
        message(text("Let me look around."), note, methods, tokens=usage(2000, 50, cache_write=3000)),
        message(source, forum, tokens=usage(300, 40, cache_read=3000, cache_write=900)),
        message(propose, tokens=usage(1200, 80, cache_read=3900, cache_write=500)),
        message(text("Waiting for others."), tokens=usage(100, 10, cache_read=4400)),
        message(text("I am done."), tokens=usage(120, 12, cache_read=4400)),
    ]
    with FakeAnthropic(script) as fake:
        reason = await run_claude(toolbox, assignment_for(toolbox), client=client_for(fake), max_tokens=1024)
    assert reason == "end_turn"
    assert fake.invalid == []
    sent = [r.body for r in fake.messages_requests]
    assert len(sent) == 5

    # The request: model, tools with a cache breakpoint on the last only, the system prompt cached.
    first = sent[0]
    assert first["model"] == MODEL and first["max_tokens"] == 1024
    assert [t["name"] for t in first["tools"]] == [t["name"] for t in TOOL_SPECS]
    assert first["tools"][-1]["cache_control"] == EPHEMERAL
    assert all("cache_control" not in t for t in first["tools"][:-1])
    assert first["system"][0]["cache_control"] == EPHEMERAL
    prompt = first["system"][0]["text"]
    assert "teacher's confidence" in prompt and "PGR" in prompt and "dev" in prompt and "forum" in prompt
    assert "gold labels" in prompt and "flag" in prompt
    assert first["messages"][-1]["content"][-1]["cache_control"] == EPHEMERAL  # the conversation is cached too
    assert "test-key" in _credential(fake.messages_requests[0].headers)
    assert "anthropic-version" in fake.messages_requests[0].headers

    # Tool results come back as JSON text, errors flagged.
    results = tool_results(sent[1])
    assert json.loads(results[note["id"]]["content"]) == {"notes": 1}
    assert "naive_soft" in results[methods["id"]]["content"] and not results[methods["id"]]["is_error"]
    results = tool_results(sent[2])
    assert "def " in json.loads(results[source["id"]]["content"])["source"]
    assert results[forum["id"]]["is_error"] is True
    assert "forum" in json.loads(results[forum["id"]]["content"])["error"]
    idea_id = json.loads(tool_results(sent[3])[propose["id"]]["content"])["idea_id"]
    assert sent[4]["messages"][-1]["content"][0]["text"] == NUDGE  # nudged once, then it stopped

    # The log: every tool call, every LLM call with its tokens and cost, the idea.
    sid = toolbox.session_id

    async def all_in() -> bool:
        return await recorded_count(admin, f"SELECT count(*) FROM events WHERE session_id = '{sid}'") == 11

    await wait_until(all_in, what="5 tool calls, 5 LLM calls and 1 idea in the log")
    tools = await rows(admin, f"SELECT payload->>'tool', CAST(payload->>'ok' AS BOOLEAN) FROM events "
                              f"WHERE session_id = '{sid}' AND type = 'agent.tool_called' ORDER BY id")
    assert tools == [["note", True], ["list_methods", True], ["read_method", True], ["read_forum", False],
                     ["propose_idea", True]]
    calls = await rows(admin, "SELECT CAST(payload->>'input_tokens' AS INT), CAST(payload->>'output_tokens' AS INT), "
                              "CAST(payload->>'cache_read_tokens' AS INT), CAST(payload->>'cache_write_tokens' AS INT), "
                              "CAST(payload->>'cost_usd' AS DOUBLE), payload->>'model', payload->>'idea_id', "
                              "CAST(payload->>'attempts' AS INT), payload->>'stop_reason' "
                              f"FROM events WHERE session_id = '{sid}' AND type = 'agent.llm_called' ORDER BY id")
    price = PRICES[MODEL]
    assert [c[:4] for c in calls] == [[2000, 50, 0, 3000], [300, 40, 3000, 900], [1200, 80, 3900, 500],
                                      [100, 10, 4400, 0], [120, 12, 4400, 0]]
    third = (1200 * 3.0 + 80 * 15.0 + 3900 * 0.3 + 500 * 3.75) / 1e6  # the price table, by hand
    assert calls[2][4] == pytest.approx(third) == pytest.approx(price.cost(1200, 80, 3900, 500))
    for c in calls:
        assert c[4] == pytest.approx(price.cost(*c[:4]))
        assert c[5] == MODEL and c[7] == 1
    assert [c[6] for c in calls] == [None, None, None, idea_id, idea_id]  # cost per idea: the last idea proposed
    assert [c[8] for c in calls] == ["tool_use", "tool_use", "tool_use", "end_turn", "end_turn"]
    assert toolbox.cost_usd == pytest.approx(sum(c[4] for c in calls))
    assert await recorded_count(admin, f"SELECT count(*) FROM events WHERE session_id = '{sid}' "
                                       f"AND type = 'idea.proposed' AND payload->>'idea_id' = '{idea_id}'") == 1


async def test_an_overloaded_answer_is_retried_and_counted(
    admin: Bus, recorder: ServiceProcess, toolbox: Toolbox
) -> None:
    script = [overloaded(), message(tool_use("note", {"text": "x"})), message(text("a")), message(text("b"))]
    with FakeAnthropic(script) as fake:
        reason = await run_claude(toolbox, assignment_for(toolbox), client=client_for(fake), retry=FAST)
    assert reason == "end_turn"
    assert len(fake.messages_requests) == 4
    assert fake.messages_requests[0].body == fake.messages_requests[1].body  # the same request, again
    sid = toolbox.session_id

    async def all_in() -> bool:
        return await recorded_count(admin, f"SELECT count(*) FROM events WHERE session_id = '{sid}' "
                                           "AND type = 'agent.llm_called'") == 3

    await wait_until(all_in, what="3 LLM calls in the log")
    attempts = await rows(admin, "SELECT CAST(payload->>'attempts' AS INT) FROM events "
                                 f"WHERE session_id = '{sid}' AND type = 'agent.llm_called' ORDER BY id")
    assert attempts == [[2], [1], [1]]


async def test_rate_limits_dropped_connections_and_5xx_are_retried(toolbox: Toolbox, seen: Collected) -> None:
    script = [rate_limited(retry_after_s=0.05), dropped(), error(500, "api_error"), message(text("a")),
              message(text("b"))]
    with FakeAnthropic(script) as fake:
        reason = await run_claude(toolbox, assignment_for(toolbox), client=client_for(fake), retry=FAST)
    assert reason == "end_turn"
    await wait_until(lambda: _true(len(seen.of("agent.llm_called")) == 2), 5, "2 LLM calls")
    assert [c.attempts for c in seen.of("agent.llm_called")] == [4, 1]


async def _true(value: bool) -> bool:
    return value


async def test_giving_up_after_n_attempts_and_no_retry_on_a_bad_request(toolbox: Toolbox, seen: Collected) -> None:
    with FakeAnthropic(fallback=lambda body: overloaded()) as fake:
        reason = await run_claude(toolbox, assignment_for(toolbox), client=client_for(fake),
                                  retry=RetryPolicy(attempts=3, base_s=0.01, cap_s=0.02))
    assert reason.startswith("error: ") and "3 times" in reason and "overloaded_error" in reason
    assert len(fake.messages_requests) == 3
    with FakeAnthropic([error(401, "authentication_error", "invalid x-api-key")]) as fake:
        reason = await run_claude(toolbox, assignment_for(toolbox), client=client_for(fake), retry=FAST)
    assert reason == "error: HTTP 401 authentication_error: invalid x-api-key"
    assert len(fake.messages_requests) == 1
    await wait_until(lambda: _true(len(seen.of("agent.llm_called")) == 2), 5, "2 LLM call records")
    gave_up, refused = seen.of("agent.llm_called")
    assert (gave_up.attempts, gave_up.cost_usd, gave_up.input_tokens) == (3, 0.0, 0)
    assert gave_up.stop_reason.startswith("error: ") and refused.attempts == 1


# -- budgets and the end of the session ------------------------------------------------------


async def test_a_tiny_agent_budget_stops_before_any_call(toolbox: Toolbox) -> None:
    with FakeAnthropic() as fake:
        reason = await run_claude(toolbox, assignment_for(toolbox, max_usd_per_agent=0.0001), client=client_for(fake))
    assert reason == "budget"
    assert fake.messages_requests == []


async def test_spending_counts_against_the_agent_budget(toolbox: Toolbox, seen: Collected) -> None:
    # One call of 100k input tokens costs $0.30 + $0.015; the next call's estimate (its prompt, plus
    # max_tokens of output: 4096 x $15/M = $0.06) no longer fits in $0.35.
    script = [message(tool_use("note", {"text": "expensive"}), tokens=usage(100_000, 1000))]
    with FakeAnthropic(script) as fake:
        reason = await run_claude(toolbox, assignment_for(toolbox, max_usd_per_agent=0.35), client=client_for(fake))
    assert reason == "budget"
    assert len(fake.messages_requests) == 1
    await wait_until(lambda: _true(len(seen.of("agent.llm_called")) == 1), 5, "the LLM call")
    assert seen.of("agent.llm_called")[0].cost_usd == pytest.approx(0.315)
    assert toolbox.cost_usd == pytest.approx(0.315)
    # the tool of the paid call still ran (its event may arrive after the LLM call's)
    await wait_until(lambda: _true(len(seen.of("agent.tool_called")) == 1), 5, "the tool call")


async def test_the_loop_stops_when_the_session_drains(admin: Bus, toolbox: Toolbox) -> None:
    toolbox.session_over.set()
    with FakeAnthropic() as fake:
        assert await run_claude(toolbox, assignment_for(toolbox), client=client_for(fake)) == "session_over"
    assert fake.messages_requests == []
    toolbox.session_over.clear()

    # Now for real: the orchestrator's session.draining reaches the toolbox while the agent works.
    def forever(body: Any) -> Any:
        return message(tool_use("note", {"text": "still going"}), delay_s=0.02)

    with FakeAnthropic(fallback=forever) as fake:
        work = asyncio.create_task(run_claude(toolbox, assignment_for(toolbox), client=client_for(fake)))
        await wait_until(lambda: _true(len(fake.messages_requests) >= 2), 10, "the agent to be working")
        await admin.publish(Event.create(SessionDraining(reason=EndReason.BUDGET, detail="test"),
                                         session_id=toolbox.session_id, source="orchestrator-test"))
        assert await asyncio.wait_for(work, 10) == "session_over"
    assert 2 <= len(fake.messages_requests) < 50


async def test_max_turns_and_ideas_limit(toolbox: Toolbox) -> None:
    with FakeAnthropic(fallback=lambda body: message(tool_use("note", {"text": "n"}))) as fake:
        assert await run_claude(toolbox, assignment_for(toolbox), client=client_for(fake), max_turns=3) == "max_turns"
    assert len(fake.messages_requests) == 3
    propose = tool_use("propose_idea", {"title": "t", "hypothesis": "h", "builtin_method": "naive_hard"})
    with FakeAnthropic([message(propose)], fallback=lambda body: message(tool_use("note", {"text": "n"}))) as fake:
        task = asyncio.create_task(run_claude(toolbox, assignment_for(toolbox, max_ideas=1), client=client_for(fake)))
        await wait_until(lambda: _true(toolbox.ideas == 1 and len(fake.messages_requests) >= 3), 10, "the idea")
        for outcome in toolbox.outcomes.values():  # as when its score arrives
            outcome.done.set()
        assert await asyncio.wait_for(task, 10) == "max_ideas"
    notes = [b for r in fake.messages_requests for b in r.body["messages"][-1]["content"]
             if isinstance(b, dict) and b.get("type") == "text" and "last allowed idea" in b["text"]]
    assert len(notes) == 1  # told once, then two more turns
    assert fake.invalid == []


# -- the key and the base URL come from the environment ---------------------------------------


async def test_no_key_and_no_client_fails_fast(toolbox: Toolbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(MissingApiKey, match="ANTHROPIC_API_KEY"):
        await run_claude(toolbox, assignment_for(toolbox))


async def test_key_and_base_url_from_the_environment(toolbox: Toolbox, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE", "ANTHROPIC_CUSTOM_HEADERS"):
        monkeypatch.delenv(name, raising=False)
    with FakeAnthropic([message(text("a")), message(text("b"))]) as fake:
        monkeypatch.setenv("ANTHROPIC_API_KEY", "env-key")
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        assert await run_claude(toolbox, assignment_for(toolbox)) == "end_turn"
    assert all("env-key" in _credential(r.headers) for r in fake.messages_requests)
    assert all(r.headers.get("x-stainless-retry-count") == "0" for r in fake.messages_requests)


async def test_a_self_hosted_server_needs_no_key_and_costs_what_the_session_says(
    toolbox: Toolbox, seen: Collected, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--llm-base-url / --llm-price: any server speaking the Messages API, at the user's price."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with FakeAnthropic([message(text("thinking"), tool_use("list_methods"), tokens=usage(1_000_000, 1_000_000)),
                        message(text("done"))]) as fake:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        free = assignment_for(toolbox, model="local-qwen-32b", llm_price=(0.0, 0.0))
        assert await run_claude(toolbox, free) == "end_turn"
    assert fake.messages_requests and all(r.body["model"] == "local-qwen-32b" for r in fake.messages_requests)
    await wait_until(lambda: _async_true(len(seen.of("agent.llm_called")) >= 1), what="the LLM call event")
    assert seen.of("agent.llm_called")[0].cost_usd == 0.0  # not the fallback price of an unknown model
    assert toolbox.cost_usd == 0.0


async def _async_true(value: bool) -> bool:
    return value


# -- a long session stays bounded ----------------------------------------------------------


async def test_long_sessions_keep_the_context_bounded(toolbox: Toolbox) -> None:
    budget = 30_000
    reads = [message(text(f"Reading, turn {i}. " + "thinking " * 200), tool_use("read_method", {"name": "product"}),
                     tool_use("note", {"text": f"finding {i}"})) for i in range(30)]
    with FakeAnthropic(reads) as fake:
        reason = await run_claude(toolbox, assignment_for(toolbox), client=client_for(fake), max_turns=30,
                                  context_chars=budget)
    assert reason == "max_turns"
    assert fake.invalid == []  # every compacted request was still a valid conversation
    sizes = [len(json.dumps(r.body["messages"])) for r in fake.messages_requests]
    assert max(sizes) < budget + 20_000  # one turn over the budget at most, then compacted
    assert sum(sizes[-10:]) < 10 * budget
    first = fake.messages_requests[-1].body["messages"][0]["content"]
    first_text = first if isinstance(first, str) else first[0]["text"]
    assert "removed to keep it short" in first_text and "finding 2" in first_text  # the notes survive


def test_conversation_compaction_keeps_pairs_and_the_newest_turns() -> None:
    conv = Conversation("start", budget_chars=5_000, keep_last=4)
    for i in range(20):
        conv.add("assistant", [{"type": "text", "text": "x" * 2000},
                               {"type": "tool_use", "id": f"t{i}", "name": "write_method", "input": {"code": "y" * 900}}])
        conv.add("user", [{"type": "tool_result", "tool_use_id": f"t{i}", "content": "z" * 700}])
    newest = [json.dumps(m) for m in conv.messages[-4:]]
    assert conv.compact(["a note"])
    assert conv.chars <= 5_000 or len(conv.messages) == 5
    assert [json.dumps(m) for m in conv.messages[-4:]] == newest
    roles = [m["role"] for m in conv.messages]
    assert roles == ["user", "assistant"] * (len(roles) // 2) + ["user"]
    assert "a note" in conv.messages[0]["content"]
    assert not conv.compact()  # nothing more it may do: the newest turns are kept whole
    conv.add("assistant", [{"type": "text", "text": "short"}])
    conv.add("user", "short")
    assert conv.compact() and conv.chars <= 5_000
    assert not conv.compact()  # under budget: nothing to do
    request = conv.request_messages()
    assert request[-1]["content"][-1]["cache_control"] == EPHEMERAL
    assert "cache_control" not in conv.messages[-1]["content"][-1]  # the history itself is not marked


# -- prices ---------------------------------------------------------------------------------


def test_price_table_and_unknown_models() -> None:
    assert normalize("claude-sonnet-4-5-20250929") == "claude-sonnet-4-5"
    assert normalize("us.anthropic.claude-opus-4-1-20250805-v1:0") == "claude-opus-4-1"
    assert normalize("claude-opus-4-0") == "claude-opus-4"
    assert normalize("claude-sonnet-4-5@20250929") == "claude-sonnet-4-5"
    p = price_for("claude-opus-4-6")
    assert (p.input, p.output, p.cache_write, p.cache_read) == (5.0, 25.0, 6.25, 0.5)
    assert cost_usd("claude-haiku-4-5", 1_000_000, 1_000_000, 1_000_000, 1_000_000) == pytest.approx(1 + 5 + 0.1 + 1.25)
    with capture_logs() as logs:
        unknown = price_for("claude-imaginary-9")
        price_for("claude-imaginary-9")
    assert unknown == FALLBACK
    assert FALLBACK.input == max(p.input for p in PRICES.values()) and FALLBACK.output == max(p.output for p in PRICES.values())
    assert [entry["event"] for entry in logs] == ["unknown_model_price"]  # warned once
    assert logs[0]["log_level"] == "warning"


async def test_notes_are_read_back_newest_last(toolbox: Toolbox) -> None:
    for text_ in ("confidence matters", "aux_conf beats naive", "try the teacher on dev texts"):
        assert "error" not in await toolbox.call("note", {"text": text_})
    assert await toolbox.call("read_notes", {"last": 2}) == {
        "notes": ["aux_conf beats naive", "try the teacher on dev texts"], "total": 3}
    assert (await toolbox.call("read_notes"))["total"] == 3


async def test_a_resumed_agent_counts_what_it_spent_before(toolbox: Toolbox) -> None:
    from .test_resume_state import HISTORY, _assignment

    toolbox.restore(HISTORY)
    with FakeAnthropic() as fake:
        reason = await run_claude(toolbox, _assignment(HISTORY, max_usd_per_agent=0.26), client=client_for(fake))
    assert reason == "budget" and fake.messages_requests == []  # $0.25 spent of $0.26: no room for a call
    assert toolbox.ideas == 2 and toolbox.notes == ["keep lr low"]
    scored = await toolbox.call("wait_for_score", {"idea_id": "i-1", "timeout_s": 1})
    assert scored["status"] == "scored" and scored["score"]["pgr"] == 0.41
    pending = await toolbox.call("wait_for_score", {"idea_id": "i-2", "timeout_s": 1})
    assert pending["status"] == "timeout"  # its re-queued run will answer it
