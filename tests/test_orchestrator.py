"""The orchestrator's decisions, without a bus: assignments and when a session is over."""

from __future__ import annotations

import json

import pytest

from schemas.session import EndReason
from services.orchestrator.config import SessionConfig
from services.orchestrator.service import Orchestrator


def _orch(**kw) -> Orchestrator:  # type: ignore[no-untyped-def]
    return Orchestrator(None, SessionConfig(session_id="s-1", name="t", **kw))  # type: ignore[arg-type]


async def test_each_agent_gets_its_own_direction_and_replicas_claim_free_slots() -> None:
    orch = _orch(agents=3)
    named = await orch._assignment(json.dumps({"agent_id": "agent-2"}).encode())
    first = await orch._assignment(b"{}")
    second = await orch._assignment(json.dumps({"agent_id": "auto"}).encode())
    assert (named["agent_id"], first["agent_id"], second["agent_id"]) == ("agent-2", "agent-1", "agent-3")
    assert len({named["direction"], first["direction"], second["direction"]}) == 3
    assert first["session_id"] == "s-1" and first["backend"] == "offline"
    with pytest.raises(ValueError, match="all 3 agent slots are taken"):
        await orch._assignment(b"{}")
    with pytest.raises(ValueError, match="no agent 'agent-9'"):
        await orch._assignment(json.dumps({"agent_id": "agent-9"}).encode())


def test_budgets_end_the_session() -> None:
    orch = _orch(agents=2, max_experiments=2, max_usd=1.0)
    assert orch._budget_spent() is None
    orch.scored |= {"x-1", "x-2"}
    assert orch._budget_spent() is EndReason.MAX_EXPERIMENTS
    orch = _orch(agents=2, max_usd=1.0)
    orch.cost_usd = 1.01
    assert orch._budget_spent() is EndReason.BUDGET
    orch = _orch(agents=2)
    orch.stopped_agents |= {"agent-1", "agent-2"}
    assert orch._budget_spent() is EndReason.COMPLETED
    assert _orch(agents=0)._budget_spent() is None  # no agents: runs until the wall clock or Ctrl-C
