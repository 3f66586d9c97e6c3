"""One researcher agent process: asks the orchestrator for its assignment, then runs
its backend (offline policy or Claude) through the toolbox until the session drains."""

from __future__ import annotations

import asyncio
import contextlib
import os

from bus import Bus
from bus.client import QueryError
from schemas import Event
from schemas.agent import AgentStarted, AgentStopped
from schemas.session import Backend
from services.orchestrator.queries import ASSIGNMENT, AssignmentRequest

from .assignment import Assignment
from .toolbox import Toolbox


async def fetch_assignment(bus: Bus, agent_id: str, stop: asyncio.Event, timeout: float = 120.0) -> Assignment | None:
    """Ask the orchestrator (it may still be starting) for this agent's assignment."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not stop.is_set():
        try:
            return await bus.ask(ASSIGNMENT, AssignmentRequest(agent_id=agent_id))
        except QueryError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"no assignment for {agent_id}: {exc}") from exc
            await asyncio.sleep(0.5)
    return None


async def run_agent(bus: Bus, assignment: Assignment, stop: asyncio.Event, *, source: str) -> str:
    toolbox = Toolbox(bus, assignment.session_id, assignment.agent_id, source=source)
    if assignment.history is not None:
        toolbox.restore(assignment.history)
    await toolbox.start()
    await bus.publish(Event.create(
        AgentStarted(agent_id=assignment.agent_id, direction=assignment.direction, backend=assignment.backend,
                     model=assignment.model if assignment.backend is Backend.CLAUDE else None, seed=assignment.seed,
                     resumed=assignment.history is not None),
        session_id=assignment.session_id, source=source,
    ))
    if assignment.backend is Backend.CLAUDE:
        from .claude import run_claude

        work = asyncio.create_task(run_claude(toolbox, assignment))
    else:
        from .offline import run_offline

        work = asyncio.create_task(run_offline(toolbox, assignment))
    stopper = asyncio.create_task(stop.wait())
    try:
        done, _ = await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
        if work in done:
            try:
                reason = work.result()
            except Exception as exc:  # noqa: BLE001 - the backend crashed: say so in the log, then exit non-zero
                reason = f"error: {type(exc).__name__}: {exc}"
        else:
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await work
            reason = "stopped"
    finally:
        stopper.cancel()
        await toolbox.close()
    cost = toolbox.cost_usd
    await bus.publish(Event.create(
        AgentStopped(agent_id=assignment.agent_id, reason=reason[:500], ideas=toolbox.ideas, cost_usd=cost),
        session_id=assignment.session_id, source=source,
    ))
    return reason


async def main() -> None:
    from services.runtime import service, service_id

    agent_id = os.environ.get("AAR_AGENT_ID") or "auto"  # auto: the orchestrator hands out the next slot
    async with service("agent") as (bus, stop, log):
        assignment = await fetch_assignment(bus, agent_id, stop)
        if assignment is None:
            return
        agent_id = assignment.agent_id
        log.info("agent_assigned", agent_id=agent_id, direction=assignment.direction_key, backend=assignment.backend.value)
        reason = await run_agent(bus, assignment, stop, source=service_id("agent"))
        log.info("agent_stopped", agent_id=agent_id, reason=reason)
        if reason.startswith("error"):
            raise SystemExit(1)
