"""The orchestrator's decisions, without a bus: assignments and when a session is over."""

from __future__ import annotations

import json
from typing import Any

import pytest

from schemas import Event
from schemas.session import EndReason
from services.orchestrator.config import SessionConfig
from services.orchestrator.queries import ASSIGNMENT
from services.orchestrator.service import Orchestrator


def _orch(**kw: Any) -> Orchestrator:
    return Orchestrator(None, SessionConfig(session_id="s-1", name="t", **kw))  # type: ignore[arg-type]  # no bus: decisions only


async def _ask(orch: Orchestrator, data: bytes, asker: str = "") -> dict[str, Any]:
    """The assignment query as the bus answers it: the request validated, the answer as JSON."""
    return await ASSIGNMENT.answer(orch._assignment)(data, asker)


async def test_each_agent_gets_its_own_direction_and_replicas_claim_free_slots() -> None:
    orch = _orch(agents=3)
    named = await _ask(orch, json.dumps({"agent_id": "agent-2"}).encode())
    first = await _ask(orch, b"{}")
    second = await _ask(orch, json.dumps({"agent_id": "auto"}).encode())
    assert (named["agent_id"], first["agent_id"], second["agent_id"]) == ("agent-2", "agent-1", "agent-3")
    assert len({named["direction"], first["direction"], second["direction"]}) == 3
    assert first["session_id"] == "s-1" and first["backend"] == "offline"
    with pytest.raises(ValueError, match="all 3 agent slots are taken"):
        await _ask(orch, b"{}")
    with pytest.raises(ValueError, match="no agent 'agent-9'"):
        await _ask(orch, json.dumps({"agent_id": "agent-9"}).encode())


def test_budgets_end_the_session() -> None:
    orch = _orch(agents=2, max_experiments=2, max_usd=1.0)
    assert orch._budget_spent() is None
    orch.scored |= {"x-1", "x-2"}
    assert orch._budget_spent() is EndReason.MAX_EXPERIMENTS
    orch = _orch(agents=2, max_usd=1.0)
    orch.spent["agent-1"] = 1.01
    assert orch._budget_spent() is EndReason.BUDGET
    orch = _orch(agents=2)
    orch.stopped_agents |= {"agent-1", "agent-2"}
    assert orch._budget_spent() is EndReason.COMPLETED
    assert _orch(agents=0)._budget_spent() is None  # no agents: runs until the wall clock or Ctrl-C


async def test_an_agent_cannot_spend_the_session_s_budget_by_claiming_costs() -> None:
    """A forged agent.llm_called (a huge cost_usd) counts only what the price table says
    of its tokens, and one agent counts at most its own budget towards the session's."""
    from schemas import Event
    from schemas.agent import AgentLlmCalled

    orch = _orch(agents=2, max_usd=10.0, max_usd_per_agent=5.0)

    async def call(agent: str, cost: float, tokens: int) -> None:
        event = Event.create(AgentLlmCalled(agent_id=agent, model="claude-sonnet-4-6", input_tokens=tokens,
                                            output_tokens=0, cost_usd=cost, latency_s=1.0),
                             session_id="s-1", source=agent)
        await orch._on_event(_Msg(event))  # type: ignore[arg-type]  # a stand-in with the fields it reads

    await call("agent-1", 1e12, 1000)  # 1,000 input tokens: a fraction of a cent, whatever it says
    assert orch.cost_usd < 0.01 and orch._budget_spent() is None
    await call("agent-1", 1e6, 9_000_000)  # tokens the table prices at well over the agent's budget
    assert orch.spent["agent-1"] > 5.0 and orch.cost_usd == 5.0  # counted up to its own budget ...
    assert orch._budget_spent() is None  # ... so the session goes on for the other agent
    await call("agent-2", 1e6, 9_000_000)
    assert orch._budget_spent() is EndReason.BUDGET


class _Msg:
    """What the orchestrator's subscription hands it: the event, as the admin publishes it."""

    def __init__(self, event: Event[Any]) -> None:
        self.data = event.to_json()
        self.subject = event.subject
        self.headers = {"Aar-Publisher": str(event.source)}


async def test_an_agent_gets_only_its_own_slot() -> None:
    orch = _orch(agents=3)
    mine = await _ask(orch, b"{}", "agent-2")  # "auto" from agent-2 is agent-2's slot
    assert mine["agent_id"] == "agent-2"
    with pytest.raises(ValueError, match="agent-2 cannot take the assignment of agent-1"):
        await _ask(orch, json.dumps({"agent_id": "agent-1"}).encode(), "agent-2")
    with pytest.raises(ValueError, match="has no agent slot"):
        await _ask(orch, b"{}", "agent-7")
    with pytest.raises(ValueError, match="has no agent slot"):
        await _ask(orch, b"{}", "agent")  # a pool identity names no one
    assert (await _ask(orch, json.dumps({"agent_id": "agent-1"}).encode(), "admin"))["agent_id"] == "agent-1"
