"""The orchestrator: owns the session lifecycle.

- publishes ``session.started`` with the whole configuration and each agent's
  starting direction, and answers agents' ``assignment`` queries;
- follows the session (scores, experiments in flight, LLM cost, agents stopping);
- when a budget is spent (``--max-experiments`` dev scores, ``--max-usd``, the
  wall clock) publishes ``session.draining`` (agents stop, the scorer takes no new
  ideas), lets scheduled evaluations finish (at most ``drain_timeout_s``), then
  publishes ``session.ended`` with the reason; also when every agent has stopped
  (``completed``) or on Ctrl-C (``interrupted``, no drain);
- resumes an interrupted session (``aar up --resume``): it rebuilds what the session
  had spent from the log (dev scores, USD, wall clock; :mod:`.resume`), publishes
  ``session.resumed`` instead of ``session.started`` and goes on from there; every
  agent's assignment carries the agent's own history whenever the log has one.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from nats.aio.msg import Msg

from bus import Bus, Role, decode_msg
from schemas import Event
from schemas.agent import AgentLlmCalled, AgentStopped
from schemas.experiment import ExperimentFailed, ExperimentFinished, ExperimentRequested, Purpose, Split
from schemas.scoring import ScorePublished
from schemas.session import (
    AgentAssignment,
    Budgets,
    EndReason,
    SessionDraining,
    SessionEnded,
    SessionResumed,
    SessionStarted,
)
from services.agents.assignment import Assignment
from services.agents.directions import assign
from services.agents.pricing import charged_usd, set_price

from . import resume
from .config import RESUME_ENV, SessionConfig
from .queries import ASSIGNMENT, AssignmentRequest


class Orchestrator:
    def __init__(self, bus: Bus, config: SessionConfig, source: str = "orchestrator", *,
                 resume_at: float | None = None) -> None:
        self.bus = bus
        self.config = config
        self.source = source
        self.resume_at = resume_at  # epoch seconds this run began: resume the session's log up to there
        self.elapsed_before = 0.0  # wall clock of the session's earlier runs
        if config.llm_price is not None:
            set_price(config.model, *config.llm_price)
        directions = assign(config.agents, offset=config.seed)
        self.assignments = {
            f"agent-{i + 1}": Assignment(
                session_id=config.session_id, agent_id=f"agent-{i + 1}", direction=d.text, direction_key=d.key,
                backend=config.backend, seed=config.seed, model=config.model, dataset=config.dataset,
                max_usd_per_agent=config.max_usd_per_agent, max_ideas=config.max_ideas_per_agent,
                llm_price=config.llm_price,
            )
            for i, d in enumerate(directions)
        }
        self.scored: set[str] = set()
        self.outstanding: set[str] = set()
        self.settled: set[str] = set()  # scored or finally failed: a request seen again (a re-publish) is not outstanding
        self.spent: dict[str, float] = {}  # agent id -> USD, as the price table says
        self.stopped_agents: set[str] = set()
        self.claimed: set[str] = set()
        self.reason: EndReason | None = None
        self.changed = asyncio.Event()

    async def run(self, stop: asyncio.Event) -> EndReason:
        cfg = self.config
        await self.bus.nc.subscribe(f"aar.{cfg.session_id}.>", cb=self._on_event)
        await self.bus.serve("orchestrator", [ASSIGNMENT.answer(self._assignment)])
        cause = await (self._resume() if self.resume_at is not None else self._start())
        deadline = time.monotonic() + max(0.0, cfg.max_wall_s - self.elapsed_before) if cfg.max_wall_s else None
        while self.reason is None:
            if stop.is_set():
                self.reason = EndReason.INTERRUPTED
            elif deadline is not None and time.monotonic() >= deadline:
                self.reason = EndReason.WALL_CLOCK
            else:
                self.reason = self._budget_spent()
                if self.reason is None:
                    self.changed.clear()
                    try:
                        await asyncio.wait_for(self.changed.wait(), timeout=0.2)
                    except TimeoutError:
                        pass
        detail = ""
        if self.reason is not EndReason.INTERRUPTED:
            detail = await self._drain(cause, stop)
        await self.bus.publish(Event.create(
            SessionEnded(reason=self.reason, detail=detail, experiments=len(self.scored),
                         cost_usd=round(self.cost_usd, 6)),
            session_id=cfg.session_id, source=self.source, causation=cause,
        ))
        return self.reason

    async def _start(self) -> str:
        cfg = self.config
        started = Event.create(
            SessionStarted(
                name=cfg.name, backend=cfg.backend, dataset=cfg.dataset, weak_model=cfg.weak_model,
                strong_model=cfg.strong_model,
                agents=[AgentAssignment(agent_id=a.agent_id, direction=a.direction) for a in self.assignments.values()],
                trainers=cfg.trainers,
                budgets=Budgets(max_experiments=cfg.max_experiments, max_usd=cfg.max_usd,
                                max_usd_per_agent=cfg.max_usd_per_agent, max_wall_s=cfg.max_wall_s),
                config=cfg.model_dump(mode="json"),
            ),
            session_id=cfg.session_id, source=self.source,
        )
        await self.bus.publish(started)
        return started.id

    async def _resume(self) -> str:
        """Rebuild what the session spent before this run from the log, then say that it
        goes on (``session.resumed``). Its in-flight experiments are re-queued by their
        queue (JetStream redelivers an unacknowledged job once its trainer is gone); the
        drain waits for them like for any other."""
        cfg = self.config
        assert self.resume_at is not None
        before_us = int(self.resume_at * 1e6)
        ask = resume.recorder_ask(self.bus)
        found = await ask("SELECT id FROM events WHERE session_id = ? AND type = 'session.started' "
                          "ORDER BY time, id LIMIT 1", [cfg.session_id])
        if not found:
            raise RuntimeError(f"session {cfg.session_id} has no session.started in the log: nothing to resume")
        done = await resume.progress(ask, cfg.session_id, before_us)
        self.scored |= done.scored
        self.settled |= done.settled
        self.outstanding |= done.in_flight - self.settled
        for agent, usd in done.spent.items():
            self.spent[agent] = self.spent.get(agent, 0.0) + usd
        self.elapsed_before = done.elapsed_s
        event = Event.create(
            SessionResumed(resume=done.resumes + 1, previous_end=done.previous_end, elapsed_s=round(done.elapsed_s, 3),
                           experiments=len(done.scored), cost_usd=round(self.cost_usd, 6),
                           in_flight=sorted(done.in_flight)),
            session_id=cfg.session_id, source=self.source, causation=str(found[0][0]),
        )
        await self.bus.publish(event)
        return str(found[0][0])

    @property
    def cost_usd(self) -> float:
        """The session's spend: each agent counts up to its own budget (one agent cannot
        spend the others' share of the session's budget)."""
        cap = self.config.max_usd_per_agent
        return sum(v if cap is None else min(v, cap) for v in self.spent.values())

    def _budget_spent(self) -> EndReason | None:
        cfg = self.config
        if cfg.max_experiments is not None and len(self.scored) >= cfg.max_experiments:
            return EndReason.MAX_EXPERIMENTS
        if cfg.max_usd is not None and self.cost_usd >= cfg.max_usd:
            return EndReason.BUDGET
        if self.assignments and len(self.stopped_agents) >= len(self.assignments):
            return EndReason.COMPLETED
        return None

    async def _drain(self, started: Event[Any] | str, stop: asyncio.Event) -> str:
        assert self.reason is not None
        await self.bus.publish(Event.create(
            SessionDraining(reason=self.reason, outstanding=len(self.outstanding)),
            session_id=self.config.session_id, source=self.source, causation=started,
        ))
        # Ideas proposed just before the drain may still be scheduled: give the scorer a moment.
        deadline = time.monotonic() + self.config.drain_timeout_s
        quiet_since = time.monotonic()
        while time.monotonic() < deadline and not stop.is_set():
            if self.outstanding:
                quiet_since = time.monotonic()
            elif time.monotonic() - quiet_since > 2.0:
                return "drained"
            await asyncio.sleep(0.2)
        return f"{len(self.outstanding)} experiment(s) still running at the end" if self.outstanding else "drained"

    async def _assignment(self, request: AssignmentRequest, asker: str = "") -> Assignment:
        """An agent's assignment: the slot of the asking identity (``agent-1`` gets
        agent-1's; an agent can never take another's, since everything it publishes must
        carry its own identity). Admin may ask for any slot, or "auto": the next one
        nobody has claimed yet."""
        agent_id = request.agent_id or "auto"
        if asker and asker != Role.ADMIN.value:
            if agent_id not in ("auto", asker):
                raise ValueError(f"{asker} cannot take the assignment of {agent_id}")
            if asker not in self.assignments:
                raise ValueError(f"identity {asker!r} has no agent slot in this session; "
                                 f"agents: {sorted(self.assignments)}")
            agent_id = asker
        if agent_id == "auto":
            free = [a for a in self.assignments if a not in self.claimed]
            if not free:
                raise ValueError(f"all {len(self.assignments)} agent slots are taken (start the session with more agents)")
            agent_id = free[0]
        self.claimed.add(agent_id)
        if agent_id not in self.assignments:
            raise ValueError(f"no agent {agent_id!r} in this session; agents: {sorted(self.assignments)}")
        assignment = self.assignments[agent_id]
        if self.bus is None:  # decisions only (tests)
            return assignment
        # Restarted (a resumed session, or after a crash): the agent goes on from its own history.
        history = await resume.agent_history(resume.recorder_ask(self.bus), self.config.session_id, agent_id,
                                             int(time.time() * 1e6))
        return assignment if history is None else assignment.model_copy(update={"history": history})

    async def _on_event(self, msg: Msg) -> None:
        event = decode_msg(msg)
        if not isinstance(event, Event):
            return
        p = event.payload
        if isinstance(p, ExperimentRequested):
            if p.experiment_id not in self.settled:
                self.outstanding.add(p.experiment_id)
        elif isinstance(p, ExperimentFinished) or (isinstance(p, ExperimentFailed) and not p.retryable):
            # finished is followed by its score; keep it outstanding until then
            if isinstance(p, ExperimentFailed):
                self.outstanding.discard(p.experiment_id)
                self.settled.add(p.experiment_id)
        elif isinstance(p, ScorePublished):
            self.outstanding.discard(p.experiment_id)
            self.settled.add(p.experiment_id)
            if p.split is Split.DEV and p.purpose is Purpose.SCORE:
                self.scored.add(p.experiment_id)
        elif isinstance(p, AgentLlmCalled):
            charged = charged_usd(p.model, p.cost_usd, p.input_tokens, p.output_tokens, p.cache_read_tokens,
                                  p.cache_write_tokens)
            self.spent[p.agent_id] = self.spent.get(p.agent_id, 0.0) + charged
        elif isinstance(p, AgentStopped):
            self.stopped_agents.add(p.agent_id)
        self.changed.set()


async def main() -> None:
    from services.runtime import service, service_id

    config = SessionConfig.from_env()
    resume_at = float(os.environ[RESUME_ENV]) if os.environ.get(RESUME_ENV) else None
    async with service("orchestrator") as (bus, stop, log):
        reason = await Orchestrator(bus, config, source=service_id("orchestrator"), resume_at=resume_at).run(stop)
        log.info("session_ended", session_id=config.session_id, reason=reason.value)
