"""The trainer worker: shares the durable consumer ``trainers`` on ``aar.*.experiment.requested``.

Per job: ``experiment.started`` -> ``experiment.progress`` per seed (with ``in_progress``
heartbeats so the server does not hand the job to another worker) -> predictions
stored as an artifact -> ``experiment.finished`` (or ``experiment.failed``) -> ack.

Exactly once: a worker killed mid-job never acks, so the job is redelivered after
``ack_wait`` to another worker. Result events carry ids derived from the experiment
id, so a job that finished but died before its ack is recorded once even if it is
run again (JetStream dedup window, then the recorder's id key).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

import structlog
from nats.aio.msg import Msg

from bus import Bus, decode_msg
from bus.client import QueryError
from core.paths import AarHome
from schemas import Event
from schemas.artifact import ArtifactKind
from schemas.experiment import (
    ExperimentFailed,
    ExperimentFinished,
    ExperimentProgress,
    ExperimentRequested,
    ExperimentStarted,
)
from schemas.integrity import IntegrityCheck, IntegrityFlagged, Severity
from services.artifacts.arrays import MEDIA_TYPE, pack_seeds, unpack_seeds
from services.artifacts.client import ArtifactClient
from trainer.methods.stored import MAX_IMPORTS, references
from trainer.sandbox import SandboxLimits, sandbox_problem
from trainer.teacher import Teacher, unpack_teachers

from .ids import derived_id
from .jobs import Inputs, JobFailed, describe, load_inputs, run_job

DURABLE = "trainers"
FILTER = "aar.*.experiment.requested"


class TrainerWorker:
    def __init__(
        self,
        bus: Bus,
        *,
        home: AarHome | None = None,
        source: str = "trainer",
        unsafe_no_sandbox: bool = False,
        limits: SandboxLimits | None = None,
        ack_wait: float = 30.0,
        max_deliver: int = 3,
    ) -> None:
        self.bus = bus
        self.home = home or AarHome.from_env()
        self.source = source
        self.unsafe = unsafe_no_sandbox
        self.limits = limits or SandboxLimits()
        self.ack_wait = ack_wait
        self.max_deliver = max_deliver
        self.artifacts = ArtifactClient(bus, timeout=60.0)
        self.jobs_done = 0
        self.log = structlog.get_logger("trainer").bind(service=source)
        self._inputs: dict[tuple[Any, ...], Inputs] = {}
        self._teachers: dict[tuple[str, str, str], Teacher] = {}

    async def run(self, stop: asyncio.Event) -> None:
        """Both queues at once: experiments, and agents' workspace runs."""
        from .workspace import WorkspaceWorker

        self.workspace = WorkspaceWorker(self)
        await asyncio.gather(self.run_experiments(stop), self.workspace.run(stop))

    async def teacher(self, sha: str, weak_model: str, dataset: str, budget: int) -> Teacher:
        """A run's teacher: the weak teachers stored as ``sha`` (one per seed), answering at
        most ``budget`` texts; the heads and their embedding cache are loaded once per process."""
        key = (sha, weak_model, dataset)
        if key not in self._teachers:
            heads = unpack_teachers(await self.artifacts.get(sha))
            if len(self._teachers) >= 8:
                self._teachers.pop(next(iter(self._teachers)))
            base = Teacher(heads, weak_model, dataset, budget=0, home=self.home)
            await asyncio.to_thread(base.warm)  # the weak model's load is the platform's, not a run's
            self._teachers[key] = base
        return self._teachers[key].fresh(budget)

    async def run_experiments(self, stop: asyncio.Event) -> None:
        if self.unsafe:
            self.log.warning("unsafe_no_sandbox", detail="agent code runs WITHOUT the sandbox; every such job is flagged")
        elif (problem := sandbox_problem()) is not None:
            self.log.warning("sandbox_unavailable", detail=problem, effect="agent-code experiments will fail")
        sub = await self.bus.pull(
            DURABLE, FILTER, ack_wait=self.ack_wait, max_deliver=self.max_deliver, max_ack_pending=1000
        )
        self.log.info("trainer_ready", durable=DURABLE)
        while not stop.is_set():
            for msg in await self.bus.fetch(sub, 1, timeout=1.0):
                await self.handle(msg)

    # -- one job -----------------------------------------------------------

    async def handle(self, msg: Msg) -> None:
        event = decode_msg(msg)
        if not isinstance(event, Event) or not isinstance(event.payload, ExperimentRequested):
            # Not a job: the recorder has recorded it as rejected; do not retry it.
            self.log.warning("not_a_job", subject=msg.subject)
            await msg.ack()
            return
        req: ExperimentRequested = event.payload
        attempt = msg.metadata.num_delivered if msg.metadata else 1
        log = self.log.bind(**describe(req), attempt=attempt)
        await self._emit(
            event,
            ExperimentStarted(
                experiment_id=req.experiment_id,
                trainer_id=self.source,
                attempt=attempt,
                sandboxed=req.method_artifact is None or not self.unsafe,
            ),
            derived_id(event.id, "started", attempt),
        )
        log.info("job_started")
        async with Bus.heartbeat(msg, interval=max(1.0, self.ack_wait / 3)):
            try:
                await self._run(event, req, attempt, log)
            except QueryError as exc:
                # The platform (artifacts service) failed, not the method: retry elsewhere/later.
                retry = attempt < self.max_deliver
                await self._failed(event, req, attempt, "PlatformError", str(exc), retryable=retry)
                log.warning("job_platform_error", error=str(exc), retry=retry)
                if retry:
                    await msg.nak(delay=2.0)
                    return
            except Exception as exc:  # a bug or bad input: report it, never crash the worker
                log.exception("job_crashed")
                await self._failed(event, req, attempt, type(exc).__name__, str(exc) or repr(exc))
        await msg.ack()
        self.jobs_done += 1

    async def _run(self, event: Event[Any], req: ExperimentRequested, attempt: int, log: Any) -> None:
        if req.weak_labels_artifact is None:
            raise JobFailed("MissingInputs", "the request names no weak-labels artifact")
        weak = unpack_seeds(await self.artifacts.get(req.weak_labels_artifact))
        source = None
        stored: dict[str, str] = {}
        if req.method_artifact is not None:
            source = (await self.artifacts.get(req.method_artifact)).decode("utf-8", "replace")
            stored = await self._stored(source, exclude=req.method_artifact)
            if self.unsafe:
                await self._flag(
                    event,
                    IntegrityCheck.UNSAFE_NO_SANDBOX,
                    Severity.WARNING,
                    "agent code ran without the sandbox (trainer started with --unsafe-no-sandbox)",
                    req,
                )
        inputs = await asyncio.to_thread(self._load_inputs, req)
        teacher = None
        if req.teacher_artifact is not None and req.teacher_queries > 0:
            # The budget is per seed's run(ctx); the job's seeds share one count.
            teacher = await self.teacher(req.teacher_artifact, req.weak_model, req.dataset,
                                         req.teacher_queries * len(req.seeds))
        loop = asyncio.get_running_loop()

        def on_seed(done: int, total: int) -> None:
            asyncio.run_coroutine_threadsafe(
                self._emit(
                    event,
                    ExperimentProgress(
                        experiment_id=req.experiment_id,
                        trainer_id=self.source,
                        fraction=done / total,
                        message=f"seed {done}/{total}",
                    ),
                    derived_id(event.id, "progress", attempt, done),
                ),
                loop,
            )

        try:
            outcome = await asyncio.to_thread(
                run_job,
                req,
                inputs,
                weak,
                method_source=source,
                unsafe_no_sandbox=self.unsafe,
                limits=self.limits,
                on_seed=on_seed,
                stored=stored,
                teacher=teacher,
            )
        except JobFailed as exc:
            log_sha = await self._store_log(event, req, exc.log)
            # What the kernel and the trainer saw (kernel / monitor) decides; what the
            # method's own process reported (inside / stderr) is evidence alongside.
            if any(v.get("blocking") for v in exc.violations):
                await self._flag(
                    event, IntegrityCheck.SANDBOX_VIOLATION, Severity.DISQUALIFY, exc.message, req,
                    evidence={"violations": exc.violations[:20], "log_artifact": log_sha},
                )
            elif exc.violations:
                await self._flag(
                    event, IntegrityCheck.SANDBOX_LIMIT, Severity.WARNING, exc.message, req,
                    evidence={"violations": exc.violations[:20], "log_artifact": log_sha},
                )
            await self._failed(
                event, req, attempt, exc.error_class, exc.message, log_sha=log_sha, violations=exc.violations
            )
            log.warning("job_failed", error_class=exc.error_class, error=exc.message)
            return
        predictions = await self.artifacts.put(
            pack_seeds(outcome.predictions),
            ArtifactKind.PREDICTIONS,
            name=f"{req.experiment_id}.predictions.npz",
            media_type=MEDIA_TYPE,
            session_id=event.session_id,
        )
        log_sha = await self._store_log(event, req, outcome.log)
        await self._emit(
            event,
            ExperimentFinished(
                experiment_id=req.experiment_id,
                trainer_id=self.source,
                predictions_artifact=predictions,
                runtime_s=round(outcome.runtime_s, 3),
                peak_rss_mb=round(outcome.peak_rss_mb, 1),
                seeds=list(req.seeds),
                log_artifact=log_sha,
                imports=list(stored),
                teacher_queries=teacher.queries if teacher is not None else 0,
            ),
            derived_id(event.id, "finished"),
        )
        log.info("job_finished", runtime_s=round(outcome.runtime_s, 2), predictions=predictions[:12])

    async def _stored(self, source: str, exclude: str) -> dict[str, str]:
        """The stored methods ``source`` names by hash, and those they name (at most
        ``MAX_IMPORTS``): sha256 -> code. Hex strings that are no artifact are ignored."""
        found: dict[str, str] = {}
        todo = [sha for sha in references(source) if sha != exclude]
        while todo and len(found) < MAX_IMPORTS:
            sha = todo.pop(0)
            if sha in found or sha == exclude:
                continue
            try:
                code = (await self.artifacts.get(sha)).decode("utf-8", "replace")
            except QueryError as exc:
                if "no artifact" in str(exc):
                    continue  # a hex string that names nothing stored
                raise  # the artifacts service failed: the job is retried (PlatformError)
            try:
                compile(code, f"{sha}.py", "exec")
            except (SyntaxError, ValueError):
                continue  # not a Python module (predictions, weak labels, a log)
            found[sha] = code
            todo += [s for s in references(code) if s not in found]
        return found

    def _load_inputs(self, req: ExperimentRequested) -> Inputs:
        key = (req.dataset, req.strong_model, tuple(sorted(req.split_sizes.items())), req.split_seed, req.split)
        if key not in self._inputs:
            if len(self._inputs) >= 8:
                self._inputs.pop(next(iter(self._inputs)))
            self._inputs[key] = load_inputs(req, self.home)
        return self._inputs[key]

    # -- publishing ----------------------------------------------------------

    async def _emit(self, cause: Event[Any], payload: Any, event_id: str) -> None:
        await self.bus.publish(
            Event.create(payload, session_id=cause.session_id, source=self.source, causation=cause, id=event_id)
        )

    async def _store_log(self, event: Event[Any], req: ExperimentRequested, text: str) -> str | None:
        if not text:
            return None
        with contextlib.suppress(QueryError):
            return await self.artifacts.put(
                text.encode()[-(1 << 20):],
                ArtifactKind.LOG,
                name=f"{req.experiment_id}.log",
                media_type="text/plain",
                session_id=event.session_id,
            )
        return None

    async def _failed(
        self,
        event: Event[Any],
        req: ExperimentRequested,
        attempt: int,
        error_class: str,
        message: str,
        *,
        retryable: bool = False,
        log_sha: str | None = None,
        violations: list[dict[str, str]] | None = None,
    ) -> None:
        await self._emit(
            event,
            ExperimentFailed(
                experiment_id=req.experiment_id,
                trainer_id=self.source,
                idea_id=req.idea_id,
                error_class=error_class,
                message=message[:4000],
                attempt=attempt,
                log_artifact=log_sha,
                retryable=retryable,
                sandbox_violations=[f"{v['kind']}: {v['detail']}"[:500] for v in (violations or [])][:20],
                deliveries=attempt,
            ),
            derived_id(event.id, "failed", attempt),
        )

    async def _flag(
        self,
        event: Event[Any],
        check: IntegrityCheck,
        severity: Severity,
        detail: str,
        req: ExperimentRequested,
        evidence: dict[str, Any] | None = None,
    ) -> None:
        await self._emit(
            event,
            IntegrityFlagged(
                check=check,
                severity=severity,
                detail=detail[:4000],
                idea_id=req.idea_id,
                experiment_id=req.experiment_id,
                agent_id=req.agent_id,
                evidence=evidence or {},
            ),
            derived_id(event.id, "flag", check.value),
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m services.trainer", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        help="run agent code without bubblewrap (only for trusted code; every such job is flagged)",
    )
    parser.add_argument("--ack-wait", type=float, default=30.0, help="seconds before an unacknowledged job is redelivered")
    parser.add_argument("--wall-s", type=float, default=600.0, help="wall-clock limit per seed of a sandboxed job (a job of k seeds gets k times this)")
    parser.add_argument("--memory-gb", type=float, default=8.0,
                        help="memory of the whole sandbox per seed, RAM disks included (without cgroups: per process)")
    return parser.parse_args(argv)


async def main(argv: list[str] | None = None) -> None:
    import os

    from services.runtime import service, service_id

    args = parse_args(argv)
    unsafe = args.unsafe_no_sandbox or os.environ.get("AAR_UNSAFE_NO_SANDBOX") == "1"
    limits = SandboxLimits(wall_s=args.wall_s, memory_bytes=int(args.memory_gb * (1 << 30)))
    async with service("trainer") as (bus, stop, _log):
        worker = TrainerWorker(
            bus, source=service_id("trainer"), unsafe_no_sandbox=unsafe, limits=limits, ack_wait=args.ack_wait
        )
        await worker.run(stop)
