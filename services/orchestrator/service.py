"""The orchestrator: owns the session lifecycle.

Publishes ``session.started`` with the whole configuration, counts scored
experiments, and publishes ``session.ended`` with the reason when the
experiment budget or the wall-clock limit is reached, or when it is stopped.
"""

from __future__ import annotations

import asyncio
import time

from bus import Bus
from schemas import Event, EventType, decode
from schemas.experiment import Purpose, Split
from schemas.scoring import ScorePublished
from schemas.session import AgentAssignment, Budgets, EndReason, SessionEnded, SessionStarted

from .config import SessionConfig


class Orchestrator:
    def __init__(self, bus: Bus, config: SessionConfig, source: str = "orchestrator") -> None:
        self.bus = bus
        self.config = config
        self.source = source
        self.scored: set[str] = set()
        self.done = asyncio.Event()
        self.reason: EndReason | None = None

    async def run(self, stop: asyncio.Event) -> EndReason:
        cfg = self.config
        started = Event.create(
            SessionStarted(
                name=cfg.name,
                backend=cfg.backend,
                dataset=cfg.dataset,
                weak_model=cfg.weak_model,
                strong_model=cfg.strong_model,
                agents=[AgentAssignment(agent_id=f"agent-{i + 1}", direction="") for i in range(cfg.agents)],
                trainers=cfg.trainers,
                budgets=Budgets(max_experiments=cfg.max_experiments, max_usd=cfg.max_usd, max_wall_s=cfg.max_wall_s),
                config=cfg.model_dump(mode="json"),
            ),
            session_id=cfg.session_id,
            source=self.source,
        )
        await self.bus.nc.subscribe(f"aar.{cfg.session_id}.{EventType.SCORE_PUBLISHED.value}", cb=self._on_score)
        await self.bus.publish(started)
        deadline = time.monotonic() + cfg.max_wall_s if cfg.max_wall_s else None
        while self.reason is None:
            if stop.is_set():
                self.reason = EndReason.INTERRUPTED
            elif deadline is not None and time.monotonic() >= deadline:
                self.reason = EndReason.WALL_CLOCK
            else:
                try:
                    await asyncio.wait_for(self.done.wait(), timeout=0.2)
                except TimeoutError:
                    pass
        await self.bus.publish(
            Event.create(
                SessionEnded(reason=self.reason, experiments=len(self.scored)),
                session_id=cfg.session_id,
                source=self.source,
                causation=started,
            )
        )
        return self.reason

    async def _on_score(self, msg) -> None:  # type: ignore[no-untyped-def]
        event = decode(msg.data, msg.subject)
        payload = event.payload if isinstance(event, Event) else None
        if isinstance(payload, ScorePublished) and payload.split is Split.DEV and payload.purpose is Purpose.SCORE:
            self.scored.add(event.payload.experiment_id)  # type: ignore[attr-defined]
            limit = self.config.max_experiments
            if limit is not None and len(self.scored) >= limit and self.reason is None:
                self.reason = EndReason.MAX_EXPERIMENTS
                self.done.set()


async def main() -> None:
    from services.runtime import service, service_id

    config = SessionConfig.from_env()
    async with service("orchestrator") as (bus, stop, log):
        reason = await Orchestrator(bus, config, source=service_id("orchestrator")).run(stop)
        log.info("session_ended", session_id=config.session_id, reason=reason.value)
