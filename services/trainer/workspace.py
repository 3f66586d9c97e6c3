"""The trainer's second queue: agents' workspace runs (``workspace.scheduled`` ->
``workspace.finished``), on the durable consumer ``workspace``, beside the experiments.

A run gets the session's agent-visible data (B cut into a train part and a held-back
part, weak labels only; dev without labels), the weak teacher on demand, and the stored
methods its code names; it runs in a sandbox of its own with the workspace's limits
(:data:`trainer.workspace.DEFAULT_LIMITS`, at most the CPU the scorer granted). After a
run the worker starts the next sandbox for the same data ahead of time (warm), so a
quick run pays neither the interpreter's start nor the imports.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from typing import Any, Protocol

from nats.aio.msg import Msg

from bus import Bus, decode_msg
from bus.client import QueryError
from core.paths import AarHome
from schemas import Event
from schemas.integrity import IntegrityCheck, IntegrityFlagged, Severity
from schemas.workspace import MAX_OUTPUT, MAX_RESULT, WorkspaceFinished, WorkspaceScheduled
from services.artifacts.arrays import unpack_seeds
from services.artifacts.client import ArtifactClient
from trainer.data import DEFAULT_SPLIT_SEED, SplitSizes, get_dataset
from trainer.features import split_features
from trainer.sandbox import SandboxLimits, SandboxResult, SandboxUnavailableError
from trainer.teacher import Teacher
from trainer.workspace import DEFAULT_LIMITS, WorkspaceInputs, WorkspaceSandbox, workspace_inputs

from .ids import derived_id


class Host(Protocol):
    """What the workspace queue uses of its trainer (services.trainer.service.TrainerWorker)."""

    bus: Bus
    artifacts: ArtifactClient
    home: AarHome
    unsafe: bool
    limits: SandboxLimits
    source: str
    log: Any

    async def _stored(self, source: str, exclude: str) -> dict[str, str]: ...
    async def _emit(self, cause: Event[Any], payload: Any, event_id: str) -> None: ...
    async def teacher(self, sha: str, weak_model: str, dataset: str, budget: int) -> Teacher: ...

DURABLE = "workspace"
FILTER = "aar.*.workspace.scheduled"
MAX_DELIVER = 3
WARM_MAX = 2  # warm sandboxes a trainer keeps (the sessions' data most recently used)
WARM_IDLE_S = 600.0  # a warm sandbox nobody took for this long is stopped


def _tail(text: str, limit: int = MAX_OUTPUT) -> tuple[str, int]:
    return (text, 0) if len(text) <= limit else (text[-limit:], len(text) - limit)


class WorkspaceWorker:
    def __init__(self, trainer: Host) -> None:
        self.t = trainer
        self.limits = replace(DEFAULT_LIMITS, memory_bytes=min(DEFAULT_LIMITS.memory_bytes,
                                                               trainer.limits.memory_bytes))
        self.log = trainer.log.bind(queue=DURABLE)
        self._inputs: dict[tuple[Any, ...], WorkspaceInputs] = {}
        self._warm: dict[tuple[Any, ...], WorkspaceSandbox] = {}
        self._warm_since: dict[tuple[Any, ...], float] = {}
        self.runs_done = 0

    async def run(self, stop: asyncio.Event) -> None:
        sub = await self.t.bus.pull(DURABLE, FILTER, ack_wait=30.0, max_deliver=MAX_DELIVER, max_ack_pending=1000)
        self.log.info("workspace_ready", durable=DURABLE)
        try:
            while not stop.is_set():
                for msg in await self.t.bus.fetch(sub, 1, timeout=1.0):
                    await self.handle(msg)
                self._evict()
        finally:
            for box in self._warm.values():
                box.close()
            self._warm.clear()

    async def handle(self, msg: Msg) -> None:
        event = decode_msg(msg)
        if not isinstance(event, Event) or not isinstance(event.payload, WorkspaceScheduled):
            await msg.ack()
            return
        req: WorkspaceScheduled = event.payload
        log = self.log.bind(run_id=req.run_id, agent_id=req.agent_id)
        attempt = msg.metadata.num_delivered if msg.metadata else 1
        async with Bus.heartbeat(msg, interval=10.0):
            try:
                await self._run(event, req, log)
            except QueryError as exc:  # the artifacts service failed: try again, then say so
                log.warning("workspace_platform_error", error=str(exc), attempt=attempt)
                if attempt < MAX_DELIVER:
                    await msg.nak(delay=2.0)
                    return
                await self._finished(event, req, ok=False, error=f"PlatformError: {exc}"[:4000])
            except Exception as exc:  # a bug or bad input: reported, the worker goes on
                log.exception("workspace_crashed")
                # Nothing measured it: the run is charged all it was granted.
                await self._finished(event, req, ok=False, error=f"{type(exc).__name__}: {exc}"[:4000],
                                     cpu_s=req.cpu_s)
        await msg.ack()
        self.runs_done += 1

    async def _run(self, event: Event[Any], req: WorkspaceScheduled, log: Any) -> None:
        if self.t.unsafe:
            # Without the sandbox the code could read the host's dataset files, and a workspace
            # run's output goes straight back to the agent: refused, not flagged afterwards.
            await self._finished(event, req, ok=False, error=(
                "Refused: this trainer runs agent code without the sandbox (--unsafe-no-sandbox); a workspace "
                "run's output goes back to the agent, so workspace runs need the sandbox"))
            return
        code = (await self.t.artifacts.get(req.code_artifact)).decode("utf-8", "replace")
        stored = await self.t._stored(code, exclude=req.code_artifact)
        key = (event.session_id, req.dataset, req.strong_model,
               tuple(sorted(req.split_sizes.items())), req.split_seed, req.seed, req.heldback,
               req.weak_labels_artifact, req.teacher_artifact, req.teacher_queries)
        inputs = await self._load(key, req)
        teacher = await self._teacher(req)
        box = self._warm.pop(key, None)
        self._warm_since.pop(key, None)
        warm = box is not None and box.alive()
        if box is not None and not warm:
            box.close()
            box = None
        try:
            if box is None:
                box = await asyncio.to_thread(self._start, inputs, teacher)
        except SandboxUnavailableError as exc:
            await self._finished(event, req, ok=False, error=f"SandboxUnavailable: {exc}", rows=inputs.rows)
            return
        cpu_s = min(req.cpu_s, float(self.limits.cpu_s))
        # The next run of this session's data finds its sandbox started: beside a warm run
        # (which is short), or after a cold one (two starts at once would slow this one).
        ahead = asyncio.ensure_future(asyncio.to_thread(self._start, inputs, teacher)) if warm else None
        try:
            result = await asyncio.to_thread(box.run, code, wall_s=req.wall_s, cpu_s=cpu_s, stored=stored)
        finally:
            if ahead is None:
                ahead = asyncio.ensure_future(asyncio.to_thread(self._start, inputs, teacher))
            with contextlib.suppress(SandboxUnavailableError):
                self._warm[key] = await ahead
                self._warm_since[key] = time.monotonic()
            self._evict()
        queries = getattr(box.teacher, "queries", 0)
        await self._report(event, req, result, inputs, queries, warm, list(stored), log)

    def _evict(self) -> None:
        """Stop warm sandboxes idle too long, and all but the newest ``WARM_MAX``."""
        now = time.monotonic()
        for key in [k for k, since in self._warm_since.items() if now - since > WARM_IDLE_S]:
            self._drop(key)
        while len(self._warm) > WARM_MAX:
            self._drop(min(self._warm_since, key=self._warm_since.__getitem__))

    def _drop(self, key: tuple[Any, ...]) -> None:
        box = self._warm.pop(key, None)
        self._warm_since.pop(key, None)
        if box is not None:
            box.close()

    def _start(self, inputs: WorkspaceInputs, teacher: Teacher | None) -> WorkspaceSandbox:
        return WorkspaceSandbox(inputs, limits=self.limits, unsafe_no_sandbox=self.t.unsafe,
                                teacher=teacher.fresh(teacher.budget) if teacher is not None else None)

    async def _load(self, key: tuple[Any, ...], req: WorkspaceScheduled) -> WorkspaceInputs:
        if key not in self._inputs:
            weak = unpack_seeds(await self.t.artifacts.get(req.weak_labels_artifact))
            if req.seed not in weak:
                raise ValueError(f"the weak-labels artifact has no labels for seed {req.seed}")

            def load() -> WorkspaceInputs:
                sizes = SplitSizes(**req.split_sizes) if req.split_sizes else None
                ds = get_dataset(req.dataset, sizes, DEFAULT_SPLIT_SEED if req.split_seed is None else req.split_seed)
                home = self.t.home
                b = split_features(req.strong_model, ds.B, home=home, progress=False)
                dev = split_features(req.strong_model, ds.dev, home=home, progress=False)
                return workspace_inputs(b, list(ds.B.texts), weak[req.seed], dev, list(ds.dev.texts),
                                        heldback=req.heldback, seed=req.seed)

            if len(self._inputs) >= 4:
                self._inputs.pop(next(iter(self._inputs)))
            self._inputs[key] = await asyncio.to_thread(load)
        return self._inputs[key]

    async def _teacher(self, req: WorkspaceScheduled) -> Teacher | None:
        if req.teacher_artifact is None or req.teacher_queries <= 0:
            return None
        return await self.t.teacher(req.teacher_artifact, req.weak_model, req.dataset, req.teacher_queries)

    async def _report(self, event: Event[Any], req: WorkspaceScheduled, result: SandboxResult,
                      inputs: WorkspaceInputs, queries: int, warm: bool, imports: list[str], log: Any) -> None:
        value = result.value_json or ""
        dropped = 0
        if len(value) > MAX_RESULT:
            value, dropped = "", len(value)
        stdout, out_cut = _tail(result.stdout)
        stderr, err_cut = _tail(result.stderr)
        out_cut += max(0, result.stdout_bytes - len(result.stdout.encode()))
        err_cut += max(0, result.stderr_bytes - len(result.stderr.encode()))
        blocking = bool(result.blocking_violations)
        violations = [f"{v.kind.value} ({v.source}): {v.detail}"[:500] for v in result.violations][:20]
        error = result.error or ""
        if dropped:
            error = (error + "; " if error else "") + (
                f"the result is {dropped:,} characters of JSON, over the {MAX_RESULT:,} a run returns: "
                "return a summary")
        if result.query_errors:
            error = (error + "; " if error else "") + f"teacher queries refused: {result.query_errors[0]}"
        if violations:
            await self._flag(event, req, result, violations)
        await self._finished(
            event, req, ok=result.ok and not dropped, exit_status=result.returncode, error=error[:4000],
            runtime_s=round(result.runtime_s, 3), cpu_s=round(result.cpu_s, 3),
            peak_memory_mb=round(result.peak_memory_bytes / 2**20, 1), stdout=stdout, stdout_dropped=out_cut,
            stderr=stderr, stderr_dropped=err_cut, result_json=value, result_dropped=dropped, rows=inputs.rows,
            teacher_queries=queries, violations=violations, blocking=blocking, warm=warm,
        )
        log.info("workspace_finished", ok=result.ok, runtime_s=round(result.runtime_s, 3), warm=warm,
                 cpu_s=round(result.cpu_s, 3), imports=len(imports), teacher_queries=queries)

    async def _finished(self, event: Event[Any], req: WorkspaceScheduled, **fields: Any) -> None:
        await self.t._emit(event, WorkspaceFinished(run_id=req.run_id, agent_id=req.agent_id,
                                                    trainer_id=self.t.source, code_artifact=req.code_artifact,
                                                    **fields),
                           derived_id(event.id, "finished"))

    async def _flag(self, event: Event[Any], req: WorkspaceScheduled, result: SandboxResult,
                    violations: list[str]) -> None:
        blocking = bool(result.blocking_violations)
        check = IntegrityCheck.SANDBOX_VIOLATION if blocking else IntegrityCheck.SANDBOX_LIMIT
        await self.t._emit(event, IntegrityFlagged(
            check=check, severity=Severity.DISQUALIFY if blocking else Severity.WARNING,
            detail=f"workspace run {req.run_id} of {req.agent_id}: {result.error or violations[0]}"[:4000],
            agent_id=req.agent_id,
            evidence={"run_id": req.run_id, "code_artifact": req.code_artifact, "violations": violations,
                      "workspace": True},
        ), derived_id(event.id, "flag", check.value))
