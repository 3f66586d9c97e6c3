"""The scorer process.

Consumes every event through its durable consumer ``scorer`` and:

- ``session.started``: builds the ground truth of the session's dataset (splits,
  cached features, weak teacher per seed), publishes ``baseline.computed`` (weak
  floor and strong ceiling, dev and test, over the session's seeds) and stores the
  weak labels on B as an artifact for trainers;
- ``idea.proposed``: within the agent's rate limit, publishes
  ``experiment.requested`` (dev split, all seeds); over it, ``integrity.flagged``;
- ``experiment.finished``: fetches the predictions (re-hashed on the way), scores
  them against gold, publishes ``score.published`` (dev; aggregates only; test,
  held-out and ablation scores go to ``score.withheld``, which agents cannot read) and, for an idea
  among the best on dev, schedules its test, held-out and teacher-ablation runs;
- ablation results: ``integrity.flagged`` when shuffling the weak labels does not
  remove the idea's gain (the method ignores its teacher); test results:
  ``integrity.flagged`` on a dev/test gap.

State is rebuilt from the log (through the recorder) when the scorer restarts.
Ids of everything it publishes are derived from the event that caused it, so a
redelivered event never schedules an experiment twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import structlog
from nats.aio.msg import Msg

from bus import Bus, decode_msg
from bus.client import BusError
from core.audit import AuditRequest, Param
from core.paths import AarHome
from schemas import Event, decode
from schemas.artifact import ArtifactKind
from schemas.base import EventType
from schemas.base import derived_id as base_derived_id
from schemas.experiment import (
    ExperimentFailed,
    ExperimentFinished,
    ExperimentRequested,
    Purpose,
    Split,
    dataset_split,
)
from schemas.idea import IdeaDuplicate, IdeaProposed
from schemas.integrity import IntegrityCheck, IntegrityFlagged, Severity
from schemas.scoring import Against, BaselineComputed, BaselineKind, Comparison, ScorePublished, ScoreWithheld
from schemas.session import SessionDraining, SessionEnded, SessionResumed, SessionStarted
from schemas.workspace import WorkspaceFinished, WorkspaceRefused, WorkspaceRequested, WorkspaceScheduled
from services.artifacts.arrays import MEDIA_TYPE, pack_seeds, unpack_seeds
from services.artifacts.client import ArtifactClient
from services.recorder.queries import AUDIT
from trainer import w2s
from trainer.paired import PairedDifference, paired_difference
from trainer.teacher import pack_teachers

from .ablation import ignores_teacher, retained_gain
from .config import ScoringConfig
from .duplicates import method_key
from .policy import RateLimiter
from .queries import IDEA, LEADERBOARD, IdeaRequest, IdeaView, Leaderboard, LeaderboardEntry, LeaderboardRequest
from .release import Release
from .truth import GroundTruth, Scored, Setup
from .workspace import WorkspaceBudget

DURABLE = "scorer"
# Events per page when a session is rebuilt from the log (AAR_SCORER_EVENTS_PAGE: tests page through few).
EVENTS_PAGE = max(1, int(os.environ.get("AAR_SCORER_EVENTS_PAGE", "2000")))
STARTED_REFRESH_S = 5.0


def derived_id(*parts: object) -> str:
    return base_derived_id("s-", *parts)


@dataclass(slots=True)
class SessionState:
    started: Event[Any]
    config: ScoringConfig
    main: Setup
    heldout: list[Setup]
    limiter: RateLimiter
    truths: dict[str, asyncio.Task[GroundTruth]] = field(default_factory=dict)  # dataset -> its (running) build
    weak_artifacts: dict[tuple[str, bool], str] = field(default_factory=dict)  # (dataset, shuffled) -> sha
    requests: dict[str, ExperimentRequested] = field(default_factory=dict)
    scores: dict[str, ScorePublished] = field(default_factory=dict)  # experiment_id -> score
    promoted: set[str] = field(default_factory=set)  # idea ids
    ideas: dict[str, IdeaProposed] = field(default_factory=dict)
    idea_events: dict[str, str] = field(default_factory=dict)  # idea id -> the event that proposed it
    flags: dict[str, list[str]] = field(default_factory=dict)  # idea id -> integrity checks that fired
    # Per-row dev correctness [seeds, rows] of each idea's main dev score, and of the naive_soft
    # session baseline: what paired comparisons resample. In memory only (a restarted scorer
    # compares the ideas scored after it started).
    correct: dict[str, np.ndarray] = field(default_factory=dict)
    naive: np.ndarray | None = None
    naive_experiment: str | None = None
    ties: dict[tuple[str, str], bool] = field(default_factory=dict)  # (idea, leader) -> tied
    draining: bool = False
    # What agents see of a dev score is released with secret noise (release.py); the
    # full-precision scores stay here, in memory, for promotion, the leader and the checks.
    release: Release = field(default_factory=Release)
    full: dict[str, ScorePublished] = field(default_factory=dict)  # experiment_id -> full precision
    released_acc: dict[str, float] = field(default_factory=dict)  # idea id -> its released dev accuracy
    naive_released: float | None = None  # naive_soft's released dev accuracy (never shown alone)
    teacher_artifacts: dict[tuple[str, bool], str] = field(default_factory=dict)  # (dataset, shuffled) -> sha
    workspace: WorkspaceBudget = field(default_factory=WorkspaceBudget)
    methods: dict[str, str] = field(default_factory=dict)  # method key -> the first idea scheduled with it

    def all_scores(self) -> list[ScorePublished]:
        """Every score, at full precision where this process scored it (else as the log has it)."""
        return [self.full.get(k, v) for k, v in self.scores.items()]


class Scorer:
    def __init__(
        self, bus: Bus, *, home: AarHome | None = None, source: str = "scorer", ack_wait: float = 60.0
    ) -> None:
        self.bus = bus
        self.home = home or AarHome.from_env()
        self.source = source
        self.ack_wait = ack_wait
        self.sessions: dict[str, SessionState] = {}
        self.artifacts = ArtifactClient(bus, timeout=60.0)
        self.log = structlog.get_logger("scorer").bind(service=source)
        self.scored = 0
        self._started: set[str] = set()  # sessions the log saw start (read on a miss, see _session)
        self._started_at = float("-inf")
        self._background: set[asyncio.Task[Any]] = set()

    def _spawn(self, coro: Any, what: str) -> asyncio.Task[Any]:
        """Work that must not hold up the event stream (held-out ground truth and requests)."""
        task = asyncio.ensure_future(coro)
        self._background.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._background.discard(t)
            if not t.cancelled() and t.exception() is not None:
                self.log.error("background_failed", what=what, error=repr(t.exception()))

        task.add_done_callback(done)
        return task

    async def run(self, stop: asyncio.Event) -> None:
        sub = await self.bus.pull(DURABLE, "aar.>", ack_wait=self.ack_wait, max_deliver=-1, max_ack_pending=10_000)
        await self.bus.serve("scorer", [LEADERBOARD.answer(self._leaderboard), IDEA.answer(self._idea)])
        self.log.info("scorer_ready", durable=DURABLE)
        while not stop.is_set():
            for msg in await self.bus.fetch(sub, 50, timeout=0.5):
                async with Bus.heartbeat(msg, interval=max(1.0, self.ack_wait / 3)):
                    try:
                        await self.handle(msg)
                    except BusError as exc:
                        # A service we depend on (artifacts, recorder, the gateway) did not answer or
                        # took nothing: retry later (what was published before is stored once).
                        self.log.warning("scorer_retry_later", subject=msg.subject, error=str(exc))
                        await msg.nak(delay=2.0)
                        continue
                    except Exception:
                        self.log.exception("scorer_handler_crashed", subject=msg.subject)
                await msg.ack()

    async def handle(self, msg: Msg) -> None:
        event = decode_msg(msg)
        if not isinstance(event, Event):
            return
        payload = event.payload
        if isinstance(payload, SessionStarted):
            await self.on_session_started(event)
        elif isinstance(payload, IdeaProposed):
            await self.on_idea(event, payload)
        elif isinstance(payload, ExperimentFinished):
            await self.on_finished(event, payload)
        elif isinstance(payload, ExperimentFailed):
            await self.on_failed(event, payload)
        elif isinstance(payload, WorkspaceRequested):
            await self.on_workspace(event, payload)
        elif isinstance(payload, WorkspaceFinished):
            if (state := self.sessions.get(event.session_id)) is not None:
                state.workspace.finished(payload.run_id, payload.agent_id, payload.cpu_s, payload.runtime_s)
        elif isinstance(payload, SessionDraining | SessionEnded):
            if (state := self.sessions.get(event.session_id)) is not None:
                state.draining = True
        elif isinstance(payload, SessionResumed):
            # It goes on: new ideas are scored again (the state is rebuilt from the log if need be).
            if (state := await self._session(event.session_id)) is not None:
                state.draining = False
        elif isinstance(payload, IntegrityFlagged) and payload.idea_id:
            if (state := self.sessions.get(event.session_id)) is not None:
                state.flags.setdefault(payload.idea_id, []).append(payload.check.value)

    # -- sessions --------------------------------------------------------------

    async def on_session_started(self, event: Event[Any], *, rebuilding: bool = False) -> SessionState:
        """A session's state, baselines and its naive_soft reference run (``rebuilding``: the
        log has what was requested already; :meth:`_session` restores it)."""
        payload: SessionStarted = event.payload
        if event.session_id in self.sessions:
            return self.sessions[event.session_id]
        cfg = ScoringConfig.from_session_config(payload.config)
        seeds = tuple(range(cfg.seeds))
        main = Setup(
            payload.dataset, payload.weak_model, payload.strong_model,
            tuple(sorted(cfg.split_sizes.items())), cfg.split_seed, seeds,
        )
        heldout = [
            Setup(name, payload.weak_model, payload.strong_model,
                  tuple(sorted(cfg.heldout_sizes.items())), cfg.split_seed, seeds)
            for name in cfg.heldout
        ]
        state = SessionState(event, cfg, main, heldout, RateLimiter(cfg.rate_limit, cfg.rate_window_s),
                             release=Release(rows=cfg.release_rows))
        self.sessions[event.session_id] = state
        t0 = time.monotonic()
        truth = await self._truth(state, main)
        for split, base in truth.baselines.items():
            for kind, accs in ((BaselineKind.WEAK, base.weak_acc), (BaselineKind.CEILING, base.ceiling_acc)):
                mean, se = w2s.mean_se(accs)
                await self._emit(
                    event,
                    BaselineComputed(
                        kind=kind, dataset=main.dataset, split=Split(split), weak_model=main.weak_model,
                        strong_model=main.strong_model, seeds=list(base.seeds), accuracies=list(accs),
                        mean=mean, stderr=se,
                    ),
                    derived_id(event.id, "baseline", kind.value, split),
                )
        self.log.info(
            "baselines_published", session_id=event.session_id, dataset=main.dataset,
            seconds=round(time.monotonic() - t0, 1),
            dev_weak=round(sum(truth.baselines["dev"].weak_acc) / len(seeds), 4),
            dev_ceiling=round(sum(truth.baselines["dev"].ceiling_acc) / len(seeds), 4),
        )
        if cfg.paired_baseline and not rebuilding:  # naive_soft on dev, once: what every dev score is compared with
            req = await self._request(state, event, None, None, Purpose.BASELINE, Split.DEV, main,
                                      method_artifact=None, builtin_method="naive_soft", params={})
            state.naive_experiment = req.experiment_id
        if cfg.promote_top > 0:
            for setup in heldout:  # features and baselines of the held-out sets, while ideas are scored
                self._spawn(self._truth(state, setup), f"held-out ground truth {setup.dataset}")
        return state

    async def _truth(self, state: SessionState, setup: Setup) -> GroundTruth:
        """The setup's ground truth, built once (concurrent callers wait for the same build)."""
        task = state.truths.get(setup.dataset)
        if task is None or (task.done() and (task.cancelled() or task.exception() is not None)):
            task = state.truths[setup.dataset] = asyncio.ensure_future(
                asyncio.to_thread(GroundTruth, setup, self.home))  # a failed build is tried again
        return await asyncio.shield(task)

    def _built(self, state: SessionState, dataset: str) -> GroundTruth | None:
        task = state.truths.get(dataset)
        if task is None or not task.done() or task.cancelled() or task.exception() is not None:
            return None
        return task.result()

    async def _weak_artifact(self, state: SessionState, setup: Setup, shuffled: bool) -> str:
        key = (setup.dataset, shuffled)
        if key not in state.weak_artifacts:
            truth = await self._truth(state, setup)
            state.weak_artifacts[key] = await self.artifacts.put(
                pack_seeds(truth.weak_labels(shuffled=shuffled)),
                ArtifactKind.OTHER,
                name=f"{setup.dataset}.weak-labels{'.shuffled' if shuffled else ''}.npz",
                media_type=MEDIA_TYPE,
                session_id=state.started.session_id,
            )
        return state.weak_artifacts[key]

    async def _teacher_artifact(self, state: SessionState, setup: Setup, shuffled: bool) -> str | None:
        """The weak teachers' weights (per seed) that answer ``ctx.teacher``; in the ablation
        run (``shuffled``) teachers trained on shuffled labels of A, which carry no signal."""
        if state.config.teacher_queries <= 0:
            return None
        key = (setup.dataset, shuffled)
        if key not in state.teacher_artifacts:
            truth = await self._truth(state, setup)
            heads = await asyncio.to_thread(truth.teachers, shuffled=shuffled)
            state.teacher_artifacts[key] = await self.artifacts.put(
                pack_teachers(heads), ArtifactKind.OTHER,
                name=f"{setup.dataset}.teacher{'.shuffled' if shuffled else ''}.npz", media_type=MEDIA_TYPE,
                session_id=state.started.session_id,
            )
        return state.teacher_artifacts[key]

    # -- workspace runs ----------------------------------------------------------------

    async def on_workspace(self, event: Event[Any], req: WorkspaceRequested) -> None:
        """Schedule an agent's workspace run within its budget, or refuse it (saying why).
        The run counts as seen only once its answer is published (a failed publish is retried
        on redelivery; derived ids keep a re-published answer single)."""
        state = await self._session(event.session_id)
        if state is None:
            return
        cfg, ws = state.config, state.workspace
        if ws.known(req.run_id):
            return  # a redelivery, or another event reusing the id: scheduled (or refused) once
        reason = None
        running = ws.busy(req.agent_id)
        left = ws.left(req.agent_id, cfg.workspace_cpu_s)
        if state.draining:
            reason = "the session is ending: no more workspace runs"
        elif cfg.workspace_cpu_s <= 0:
            reason = "this session has no workspace (workspace_cpu_s = 0)"
        elif running is not None:
            reason = f"one workspace run at a time: {running} is still running"
        elif left < 1.0:
            reason = (f"the workspace budget of {cfg.workspace_cpu_s:g} seconds per agent is spent "
                      f"({ws.spent.get(req.agent_id, 0.0):.1f} used; a run is charged its CPU-seconds, at least "
                      "its wall-clock seconds): evaluate ideas with propose_idea instead")
        if reason is not None:
            spent = round(ws.spent.get(req.agent_id, 0.0), 3)
            if ws.refuse(req.run_id, req.agent_id):
                await self._emit(event, WorkspaceRefused(
                    run_id=req.run_id, agent_id=req.agent_id, reason=reason, spent_cpu_s=spent,
                    budget_cpu_s=cfg.workspace_cpu_s,
                ), derived_id(event.id, "workspace_refused"))
            self.log.info("workspace_refused", run_id=req.run_id, agent_id=req.agent_id, reason=reason)
            return
        wall = min(req.wall_s, cfg.workspace_wall_s)
        cpu = min(left, wall)  # one core: a run cannot use more CPU than its wall clock
        main = state.main
        await self._emit(event, WorkspaceScheduled(
            run_id=req.run_id, agent_id=req.agent_id, code_artifact=req.code_artifact, wall_s=wall, cpu_s=cpu,
            dataset=main.dataset, weak_model=main.weak_model, strong_model=main.strong_model,
            split_sizes=main.split_sizes, split_seed=main.split_seed, seed=main.seeds[0],
            heldback=cfg.workspace_heldback, weak_labels_artifact=await self._weak_artifact(state, main, False),
            teacher_artifact=await self._teacher_artifact(state, main, False), teacher_queries=cfg.teacher_queries,
            spent_cpu_s=round(ws.spent.get(req.agent_id, 0.0), 3), budget_cpu_s=cfg.workspace_cpu_s,
        ), derived_id(event.id, "workspace_scheduled"))
        ws.schedule(req.run_id, req.agent_id, cpu, wall)

    async def _session(self, session_id: str) -> SessionState | None:
        """The session's state; rebuilt from the log after a restart. A session the log
        never saw start costs no query (one list of started sessions per process), so
        events for made-up sessions cannot keep the scorer busy with lookups (the list is
        read again at most every ``STARTED_REFRESH_S``, for a session that began meanwhile)."""
        if session_id in self.sessions:
            return self.sessions[session_id]
        if session_id not in self._started and time.monotonic() >= self._started_at + STARTED_REFRESH_S:
            rows = (await self.bus.ask(AUDIT, AuditRequest(
                sql="SELECT DISTINCT session_id FROM events WHERE type = 'session.started'"), timeout=30.0)).rows
            self._started = {str(r[0]) for r in rows}
            self._started_at = time.monotonic()
        if session_id not in self._started:
            return None
        found = await self._events("session_id = ? AND type = 'session.started'", [session_id], limit=1)
        if not found:
            return None
        state = await self.on_session_started(found[0], rebuilding=True)
        finished: dict[str, str] = {}  # experiment id -> its predictions
        for ev in await self._events("session_id = ? AND type IN ('idea.proposed', 'experiment.requested', "
                                     "'experiment.finished', 'score.published', 'score.withheld', "
                                     "'workspace.scheduled', 'workspace.refused', 'workspace.finished')", [session_id]):
            if isinstance(ev, Event) and isinstance(ev.payload, ExperimentFinished):
                finished.setdefault(ev.payload.experiment_id, ev.payload.predictions_artifact)
                continue
            if isinstance(ev, Event) and isinstance(ev.payload, WorkspaceScheduled | WorkspaceRefused
                                                    | WorkspaceFinished):
                state.workspace.replay(ev.payload)
                continue
            if isinstance(ev, Event) and isinstance(ev.payload, IdeaProposed):
                state.ideas.setdefault(ev.payload.idea_id, ev.payload)
                state.idea_events.setdefault(ev.payload.idea_id, ev.id)
            elif isinstance(ev, Event) and isinstance(ev.payload, ExperimentRequested):
                state.requests[ev.payload.experiment_id] = ev.payload
                if ev.payload.purpose is not Purpose.SCORE and ev.payload.idea_id:
                    state.promoted.add(ev.payload.idea_id)
                if ev.payload.purpose is Purpose.BASELINE and state.naive_experiment is None:
                    state.naive_experiment = ev.payload.experiment_id
                if (ev.payload.purpose is Purpose.SCORE and ev.payload.split is Split.DEV and ev.payload.idea_id
                        and ev.payload.dataset == state.main.dataset):
                    state.methods.setdefault(method_key(ev.payload.builtin_method, ev.payload.method_artifact,
                                                        dict(ev.payload.params)), ev.payload.idea_id)
            elif isinstance(ev, Event) and isinstance(ev.payload, ScorePublished):
                state.scores[ev.payload.experiment_id] = ev.payload
                if (ev.type == EventType.SCORE_PUBLISHED and ev.payload.idea_id
                        and ev.payload.dataset == state.main.dataset):
                    state.released_acc.setdefault(ev.payload.idea_id, ev.payload.accuracy)
        if state.config.paired_baseline and state.naive_experiment is None:  # never requested (or not recorded)
            req = await self._request(state, found[0], None, None, Purpose.BASELINE, Split.DEV, state.main,
                                      method_artifact=None, builtin_method="naive_soft", params={})
            state.naive_experiment = req.experiment_id
        restored = await self._restore_pairs(state, finished)
        self.log.info("session_rebuilt", session_id=session_id, requests=len(state.requests), scores=len(state.scores),
                      paired_restored=restored)
        return state

    async def _restore_pairs(self, state: SessionState, finished: dict[str, str]) -> int:
        """What paired comparisons resample, back from the stored predictions of the runs the
        log has scored: naive_soft's and every idea's main dev score (so that an idea scored
        after a restart is still compared with its parents, the leader and naive_soft), and
        each dev score at full precision (the log has the released ones)."""
        restored = 0
        wanted = [(exp, req) for exp, req in state.requests.items() if exp in finished and exp in state.scores
                  and req.split is Split.DEV and req.dataset == state.main.dataset
                  and (req.experiment_id == state.naive_experiment
                       or (req.purpose is Purpose.SCORE and req.idea_id is not None))]
        if not wanted:
            return 0
        truth = await self._truth(state, state.main)
        n_eval = truth.baselines[dataset_split(Split.DEV)].n_eval
        for exp, req in wanted:
            try:
                predictions = unpack_seeds(await self.artifacts.get(finished[exp]))
                scored = await asyncio.to_thread(truth.score, predictions, req.split, list(req.seeds))
            except Exception as exc:  # noqa: BLE001 - a lost artifact costs that idea its pairs, nothing more
                self.log.warning("pairs_not_restored", experiment_id=exp, error=repr(exc)[:300])
                continue
            if exp == state.naive_experiment:
                state.naive = scored.correct
                state.naive_released = state.release.noisy(scored.pgr.student, n_eval, exp)
            elif req.idea_id is not None:
                state.correct.setdefault(req.idea_id, scored.correct)
                p = scored.pgr  # the full precision too: promotion and the leader use it, never the released one
                state.full.setdefault(exp, state.scores[exp].model_copy(update={
                    "accuracy": p.student, "accuracy_stderr": w2s.mean_se(scored.accuracies)[1], "pgr": p.value,
                    "pgr_stderr": p.se}))
            restored += 1
        return restored

    async def _events(self, where: str, params: list[Param], *, limit: int | None = None) -> list[Event[Any]]:
        """Events from the log (through the recorder) in (time, id) order, rebuilt into
        envelopes: ``where`` is this module's SQL, every value in it a ``?`` bound from
        ``params``. Read in pages (a keyset on time and id), so that an answer cut to
        fit one reply never loses the rest. (Baselines re-published while rebuilding
        carry derived ids: stored once.)"""
        keys = ("id", "type", "schema_version", "session_id", "source", "time", "correlation_id", "causation_id",
                "payload")
        out: list[Event[Any]] = []
        after, keyset = "", list[Param]()
        while True:
            page = min(limit, EVENTS_PAGE) if limit is not None else EVENTS_PAGE
            sql = (
                "SELECT id, type, schema_version, session_id, source, strftime(time, '%Y-%m-%dT%H:%M:%S.%fZ'), "
                f"correlation_id, causation_id, payload, epoch_us(time) FROM events WHERE ({where}){after} "
                "ORDER BY time, id LIMIT ?"
            )
            result = await self.bus.ask(AUDIT, AuditRequest(sql=sql, params=[*params, *keyset, page]), timeout=30.0)
            rows = result.rows
            for row in rows:
                event = decode(json.dumps(dict(zip(keys, row[:-1], strict=True))).encode())
                if isinstance(event, Event):
                    out.append(event)
            if limit is not None and len(out) >= limit:
                return out[:limit]
            if not rows:
                if result.truncated:
                    raise BusError(f"one event is too large for a reply of the recorder ({result.truncated_reason})")
                return out
            if len(rows) < page and not result.truncated:
                return out
            after, keyset = " AND (epoch_us(time), id) > (?, ?)", [int(rows[-1][-1]), str(rows[-1][0])]

    # -- ideas -> experiments ------------------------------------------------------

    async def on_idea(self, event: Event[Any], idea: IdeaProposed) -> None:
        state = await self._session(event.session_id)
        if state is None:
            self.log.warning("idea_without_session", idea_id=idea.idea_id, session_id=event.session_id)
            return
        first = state.idea_events.setdefault(idea.idea_id, event.id)
        if first != event.id:
            # An idea id belongs to the first proposal under it: another event reusing it
            # (an agent copying an id it saw) schedules nothing. (A redelivery of the same
            # event goes on: what it already scheduled is not scheduled again.)
            self.log.warning("idea_id_reused", idea_id=idea.idea_id, agent_id=idea.agent_id, source=event.source,
                             first_event=first, event_id=event.id)
            return
        state.ideas[idea.idea_id] = idea
        if state.draining:
            self.log.info("idea_after_budget", idea_id=idea.idea_id, agent_id=idea.agent_id)
            return
        key = method_key(idea.builtin_method, idea.method_artifact, dict(idea.params))
        original = state.methods.get(key)
        if original is not None and original != idea.idea_id:
            # The same method with the same parameters was scheduled already: answered with
            # that idea's score, no experiment (and nothing against the rate limit).
            first_idea = state.ideas.get(original)
            await self._emit(event, IdeaDuplicate(
                idea_id=idea.idea_id, agent_id=idea.agent_id, duplicate_of=original,
                duplicate_of_agent=first_idea.agent_id if first_idea else None, method_key=key,
            ), derived_id(event.id, "duplicate"))
            self.log.info("idea_duplicate", idea_id=idea.idea_id, duplicate_of=original, agent_id=idea.agent_id)
            return
        # Rate limits count the verified publisher (the gateway binds agent_id to it).
        who = event.source
        if not state.limiter.allow(who):
            wait = state.limiter.retry_after(who)
            await self._emit(
                event,
                IntegrityFlagged(
                    check=IntegrityCheck.RATE_LIMIT, severity=Severity.INFO,
                    detail=(f"agent {idea.agent_id} is over its limit of {state.config.rate_limit} evaluations per "
                            f"{state.config.rate_window_s:g}s; idea {idea.idea_id} was not scheduled "
                            f"(retry in {wait:.0f}s)"),
                    idea_id=idea.idea_id, agent_id=idea.agent_id,
                    evidence={"limit": state.config.rate_limit, "window_s": state.config.rate_window_s,
                              "retry_after_s": round(wait, 1)},
                ),
                derived_id(event.id, "rate_limit"),
            )
            return
        state.methods.setdefault(key, idea.idea_id)
        await self._request(state, event, idea.idea_id, idea.agent_id, Purpose.SCORE, Split.DEV, state.main,
                            method_artifact=idea.method_artifact, builtin_method=idea.builtin_method,
                            params=dict(idea.params))

    async def _request(
        self, state: SessionState, cause: Event[Any], idea_id: str | None, agent_id: str | None,
        purpose: Purpose, split: Split, setup: Setup, *, method_artifact: str | None,
        builtin_method: str | None, params: dict[str, Any], shuffled: bool = False,
    ) -> ExperimentRequested:
        experiment_id = "x-" + hashlib.sha256(
            f"{cause.id}/{purpose.value}/{split.value}/{setup.dataset}".encode()
        ).hexdigest()[:24]
        if (known := state.requests.get(experiment_id)) is not None:
            return known  # already scheduled (a redelivered cause, after a restart)
        req = ExperimentRequested(
            experiment_id=experiment_id, idea_id=idea_id, agent_id=agent_id, purpose=purpose, split=split,
            dataset=setup.dataset, weak_model=setup.weak_model, strong_model=setup.strong_model,
            seeds=list(setup.seeds), method_artifact=method_artifact, builtin_method=builtin_method,
            params=params, shuffle_weak_labels=shuffled,
            weak_labels_artifact=await self._weak_artifact(state, setup, shuffled),
            split_sizes=setup.split_sizes, split_seed=setup.split_seed,
            teacher_artifact=await self._teacher_artifact(state, setup, shuffled),
            teacher_queries=state.config.teacher_queries,
        )
        state.requests[experiment_id] = req
        await self._emit(cause, req, derived_id(cause.id, "requested", experiment_id), correlation=idea_id)
        self.log.info("experiment_requested", experiment_id=experiment_id, idea_id=idea_id,
                      purpose=purpose.value, split=split.value, dataset=setup.dataset)
        return req

    async def _leaderboard(self, request: LeaderboardRequest, asker: str = "") -> Leaderboard:
        """Dev-split scores of a session's ideas, best PGR first (aggregates only)."""
        session_id, limit = request.session_id, request.limit
        state = self.sessions.get(session_id)
        if state is None:
            raise ValueError(f"unknown session {session_id!r} (or its baselines are not computed yet)")
        rows: list[LeaderboardEntry] = []
        for score in state.scores.values():
            if score.purpose is not Purpose.SCORE or score.split is not Split.DEV or score.idea_id is None:
                continue
            idea = state.ideas.get(score.idea_id)
            rows.append(LeaderboardEntry(
                idea_id=score.idea_id, agent_id=score.agent_id, title=idea.title if idea else "",
                method=score.builtin_method or f"code:{(score.method_artifact or '')[:12]}",
                params=dict(idea.params) if idea else {},
                parent_ideas=list(idea.parent_ideas) if idea else [],
                pgr=score.pgr, pgr_stderr=score.pgr_stderr, accuracy=round(score.accuracy, 4),
                flags=sorted(set(state.flags.get(score.idea_id, []))),
                vs_naive_pgr=next((c.pgr_diff for c in score.comparisons if c.against is Against.NAIVE_SOFT), None),
                vs_naive_pgr_se=next((c.pgr_diff_se for c in score.comparisons
                                      if c.against is Against.NAIVE_SOFT), None),
            ))
        rows.sort(key=lambda r: (r.pgr is None, -(r.pgr or 0.0)))
        main = self._built(state, state.main.dataset)
        base = main.baselines["dev"] if main else None
        shown = rows[:limit]
        if main is not None and shown:
            ties = await asyncio.to_thread(self._ties, state, main, [r.idea_id for r in shown])
            shown = [r.model_copy(update={"tied_with_leader": ties.get(r.idea_id)}) for r in shown]
        return Leaderboard(
            session_id=session_id,
            weak_accuracy=round(sum(base.weak_acc) / len(base.weak_acc), 4) if base else None,
            ceiling_accuracy=round(sum(base.ceiling_acc) / len(base.ceiling_acc), 4) if base else None,
            scored=len(rows),
            entries=shown,
        )

    async def _idea(self, request: IdeaRequest, asker: str = "") -> IdeaView:
        """One idea with its released dev score, ancestors and children (what agents may see)."""
        state = self.sessions.get(request.session_id) or await self._session(request.session_id)
        if state is None:
            raise ValueError(f"unknown session {request.session_id!r}")
        idea = state.ideas.get(request.idea_id)
        if idea is None:
            raise LookupError(f"no idea {request.idea_id!r} in session {request.session_id}")

        def released(idea_id: str) -> ScorePublished | None:
            return next((s for s in state.scores.values()  # the log's copy: what agents were shown
                         if s.idea_id == idea_id and s.purpose is Purpose.SCORE and s.split is Split.DEV
                         and s.dataset == state.main.dataset and not isinstance(s, ScoreWithheld)), None)

        mine = released(idea.idea_id)
        ancestors: list[dict[str, Any]] = []
        seen = {idea.idea_id}
        frontier = [(p, 1) for p in idea.parent_ideas]
        while frontier and len(ancestors) < 50:
            parent_id, depth = frontier.pop(0)
            if parent_id in seen:
                continue
            seen.add(parent_id)
            parent = state.ideas.get(parent_id)
            score = released(parent_id)
            ancestors.append({"idea_id": parent_id, "agent_id": parent.agent_id if parent else None, "depth": depth,
                              "pgr": None if score is None or score.pgr is None else round(score.pgr, 4)})
            if parent is not None:
                frontier += [(p, depth + 1) for p in parent.parent_ideas]
        return IdeaView(
            idea_id=idea.idea_id, agent_id=idea.agent_id, title=idea.title, hypothesis=idea.hypothesis, why=idea.why,
            builtin_method=idea.builtin_method, method_artifact=idea.method_artifact, params=dict(idea.params),
            parent_ideas=list(idea.parent_ideas), cites_posts=list(idea.cites_posts),
            dev_score=None if mine is None else {
                "accuracy": mine.accuracy, "accuracy_stderr": mine.accuracy_stderr, "pgr": mine.pgr,
                "pgr_stderr": mine.pgr_stderr, "n_seeds": mine.n_seeds,
                "comparisons": [c.model_dump(mode="json") for c in mine.comparisons]},
            ancestors=ancestors,
            children=sorted(i for i, other in state.ideas.items() if idea.idea_id in other.parent_ideas),
        )

    # -- results -> scores -------------------------------------------------------

    async def on_finished(self, event: Event[Any], done: ExperimentFinished) -> None:
        state = await self._session(event.session_id)
        req = state.requests.get(done.experiment_id) if state else None
        if state is None or req is None:
            self.log.warning("result_for_unknown_experiment", experiment_id=done.experiment_id)
            return
        if done.experiment_id in state.scores:
            return  # already scored (a re-run job)
        setup = state.main if req.dataset == state.main.dataset else next(
            (s for s in state.heldout if s.dataset == req.dataset), None
        )
        if setup is None:
            self.log.warning("result_for_unknown_dataset", experiment_id=done.experiment_id, dataset=req.dataset)
            return
        truth = await self._truth(state, setup)
        predictions = unpack_seeds(await self.artifacts.get(done.predictions_artifact))
        scored = truth.score(predictions, req.split, list(req.seeds))
        p = scored.pgr
        k = len(scored.accuracies)
        _, acc_se = w2s.mean_se(scored.accuracies)
        main_dev = req.split is Split.DEV and setup is state.main
        comparisons: list[tuple[Comparison, float]] = []
        n_eval = truth.baselines[dataset_split(req.split)].n_eval
        if main_dev and req.purpose is Purpose.BASELINE and req.experiment_id == state.naive_experiment:
            state.naive = scored.correct
            state.naive_released = state.release.noisy(p.student, n_eval, req.experiment_id)
        elif main_dev and req.purpose is Purpose.SCORE and req.idea_id is not None:
            comparisons = await asyncio.to_thread(self._comparisons, state, truth, req, scored)
            state.correct[req.idea_id] = scored.correct
        score = ScorePublished(
            experiment_id=req.experiment_id, idea_id=req.idea_id, agent_id=req.agent_id, purpose=req.purpose,
            dataset=req.dataset, split=req.split, n_seeds=k, accuracy=p.student, accuracy_stderr=acc_se,
            weak_accuracy=p.weak, ceiling_accuracy=p.ceiling, pgr=p.value, pgr_stderr=p.se,
            method_artifact=req.method_artifact, builtin_method=req.builtin_method,
            comparisons=[c for c, _ in comparisons],
        )
        state.full[req.experiment_id] = score
        if main_dev and req.purpose is Purpose.SCORE and req.idea_id is not None:
            sigma = state.release.sigma(n_eval)
            score, released = state.release.score(
                score, n_eval=n_eval, seed_se=acc_se, key=req.experiment_id,
                comparisons=[(c, other, sigma) for c, other in comparisons])
            state.released_acc.setdefault(req.idea_id, released)
        if req.purpose is not Purpose.SCORE or req.split is not Split.DEV:
            score = ScoreWithheld(**score.model_dump())  # test / held-out / ablation: never shown to agents
        state.scores[req.experiment_id] = score
        await self._emit(event, score, derived_id(event.id, "score"), correlation=req.idea_id)
        self.scored += 1
        self.log.info("score_published", experiment_id=req.experiment_id, purpose=req.purpose.value,
                      split=req.split.value, dataset=req.dataset, accuracy=round(p.student, 4),
                      pgr=None if p.value is None else round(p.value, 4))
        full = state.full[req.experiment_id]
        if req.purpose is Purpose.SCORE and req.split is Split.DEV:
            await self._maybe_promote(state, event, req, full)
        elif req.purpose is Purpose.ABLATION:
            await self._check_ablation(state, event, req, full)
        elif req.split is Split.TEST:
            await self._check_dev_test_gap(state, event, req, full)

    def _comparisons(self, state: SessionState, truth: GroundTruth, req: ExperimentRequested,
                     scored: Scored) -> list[tuple[Comparison, float]]:
        """This dev score minus naive_soft's, each parent's and the leader's, paired on the
        same rows and seeds (trainer/paired.py), seeded by the experiment id: the same
        log gives the same figures. Each comes with the other's released accuracy (what
        the released difference is taken from, release.py). Others not scored in this
        process are left out."""
        idea = state.ideas.get(req.idea_id or "")
        others: list[tuple[Against, str | None, np.ndarray, float | None]] = []
        if state.naive is not None:
            others.append((Against.NAIVE_SOFT, None, state.naive, state.naive_released))
        for parent in dict.fromkeys(idea.parent_ideas if idea else []):
            if parent in state.correct and parent != req.idea_id:
                others.append((Against.PARENT, parent, state.correct[parent], state.released_acc.get(parent)))
        leader = self._leader(state, exclude=req.idea_id)
        if leader is not None and leader in state.correct:
            others.append((Against.LEADER, leader, state.correct[leader], state.released_acc.get(leader)))
        out = []
        for against, other_id, other, released in others:
            if other.shape[1] != scored.correct.shape[1] or released is None:
                continue
            d = self._paired(state, truth, scored.correct, other, req.experiment_id)
            out.append((Comparison(
                against=against, idea_id=other_id, accuracy_diff=round(d.accuracy, 6),
                accuracy_diff_se=round(d.accuracy_se, 6), accuracy_ci=[round(x, 6) for x in d.accuracy_ci],
                pgr_diff=None if d.pgr is None else round(d.pgr, 6),
                pgr_diff_se=None if d.pgr_se is None else round(d.pgr_se, 6),
                pgr_ci=None if d.pgr_ci is None else [round(x, 6) for x in d.pgr_ci],
                tied=d.tied, n_bootstrap=d.n_bootstrap, bootstrap_seed=d.seed,
            ), released))
        return out

    @staticmethod
    def _paired(state: SessionState, truth: GroundTruth, a: np.ndarray, b: np.ndarray, key: str) -> PairedDifference:
        """``a - b`` on the main dev split, against its weak and ceiling rows, bootstrapped
        with a seed derived from ``key`` (so the log alone reproduces the figures)."""
        base = truth.baselines["dev"]
        seed = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
        return paired_difference(a, b, base.weak_correct, base.ceiling_correct,
                                 n_bootstrap=state.config.comparison_bootstrap, seed=seed)

    def _ties(self, state: SessionState, truth: GroundTruth, ideas: list[str]) -> dict[str, bool]:
        """Whether each idea is statistically tied with the current leader (paired, as
        :meth:`_comparisons`); remembered per (idea, leader), so a leaderboard costs a
        bootstrap only for what changed. Ideas without per-row results here: left out."""
        leader = self._leader(state)
        if leader is None or leader not in state.correct:
            return {}
        out = {leader: True}
        for idea in ideas:
            if idea == leader or idea not in state.correct:
                continue
            key = (idea, leader)
            mine, theirs = state.released_acc.get(idea), state.released_acc.get(leader)
            if mine is None or theirs is None:
                continue
            if key not in state.ties:
                # Decided on the released accuracies (release.py), like a released comparison.
                d = self._paired(state, truth, state.correct[idea], state.correct[leader], f"{idea}/{leader}")
                state.ties[key] = state.release.tied(mine, theirs, d.accuracy_se,
                                                     state.release.sigma(truth.baselines["dev"].n_eval),
                                                     f"tie/{idea}/{leader}")
            out[idea] = state.ties[key]
        return out

    @staticmethod
    def _leader(state: SessionState, exclude: str | None = None) -> str | None:
        """The idea with the best main dev PGR so far (ties: the earlier score)."""
        best: tuple[float, str] | None = None
        for s in state.all_scores():
            if (s.purpose is Purpose.SCORE and s.split is Split.DEV and s.dataset == state.main.dataset
                    and s.idea_id is not None and s.idea_id != exclude and s.pgr is not None
                    and (best is None or s.pgr > best[0])):
                best = (s.pgr, s.idea_id)
        return best[1] if best else None

    async def on_failed(self, event: Event[Any], failed: ExperimentFailed) -> None:
        if not failed.retryable:
            self.log.info("experiment_failed", experiment_id=failed.experiment_id, error_class=failed.error_class)

    def _dev_score_of(self, state: SessionState, idea_id: str | None) -> ScorePublished | None:
        return next(
            (s for s in state.all_scores()
             if s.idea_id == idea_id and s.purpose is Purpose.SCORE and s.split is Split.DEV
             and s.dataset == state.main.dataset),
            None,
        )

    async def _maybe_promote(
        self, state: SessionState, event: Event[Any], req: ExperimentRequested, score: ScorePublished
    ) -> None:
        cfg = state.config
        if cfg.promote_top == 0 or score.pgr is None or score.pgr <= 0 or req.idea_id is None:
            return
        if req.idea_id in state.promoted:
            return
        better = sum(
            1 for s in state.all_scores()
            if s.purpose is Purpose.SCORE and s.split is Split.DEV and s.pgr is not None and s.pgr > score.pgr
            and s.idea_id != req.idea_id
        )
        if better >= cfg.promote_top:
            return
        state.promoted.add(req.idea_id)
        common: dict[str, Any] = dict(method_artifact=req.method_artifact, builtin_method=req.builtin_method,
                                      params=dict(req.params))
        await self._request(state, event, req.idea_id, req.agent_id, Purpose.ABLATION, Split.DEV, state.main,
                            shuffled=True, **common)
        await self._request(state, event, req.idea_id, req.agent_id, Purpose.SCORE, Split.TEST, state.main, **common)
        # The held-out ground truth has been building since the session started; a promotion
        # waits for what is left of it, so that the request exists before the session can
        # drain (the orchestrator waits only for requested experiments).
        for setup in state.heldout:
            await self._request(state, event, req.idea_id, req.agent_id, Purpose.SCORE, Split.HELDOUT, setup,
                                **common)

    async def _check_ablation(
        self, state: SessionState, event: Event[Any], req: ExperimentRequested, ablated: ScorePublished
    ) -> None:
        original = self._dev_score_of(state, req.idea_id)
        if original is None:
            return
        retained = retained_gain(original.accuracy, original.weak_accuracy, ablated.accuracy)
        if retained is None:
            return  # no gain over the weak floor: nothing to explain
        evidence = {
            "accuracy": round(original.accuracy, 4), "shuffled_accuracy": round(ablated.accuracy, 4),
            "weak_accuracy": round(original.weak_accuracy, 4), "retained": round(retained, 4),
            "threshold": state.config.ablation_retained, "ablation_experiment_id": req.experiment_id,
        }
        if ignores_teacher(original.accuracy, original.weak_accuracy, ablated.accuracy, state.config.ablation_retained):
            # Agents read integrity flags: the ablation's own score stays withheld (it is
            # in its score.withheld event, which the evidence names).
            await self._emit(
                event,
                IntegrityFlagged(
                    check=IntegrityCheck.TEACHER_ABLATION, severity=Severity.WARNING,
                    detail=(f"idea {req.idea_id} keeps at least {state.config.ablation_retained:.0%} of its gain over "
                            "the weak floor with shuffled weak labels: the method does not rely on its teacher"),
                    idea_id=req.idea_id, experiment_id=original.experiment_id, agent_id=req.agent_id,
                    evidence={"threshold": state.config.ablation_retained,
                              "ablation_experiment_id": req.experiment_id},
                ),
                derived_id(event.id, "ablation_flag"),
                correlation=req.idea_id,
            )
            self.log.warning("teacher_ablation_flagged", idea_id=req.idea_id, **evidence)
        else:
            self.log.info("teacher_ablation_passed", idea_id=req.idea_id, **evidence)

    async def _check_dev_test_gap(
        self, state: SessionState, event: Event[Any], req: ExperimentRequested, test: ScorePublished
    ) -> None:
        dev = self._dev_score_of(state, req.idea_id)
        if dev is None or dev.pgr is None or test.pgr is None:
            return
        gap = dev.pgr - test.pgr
        se = math.hypot(dev.pgr_stderr or 0.0, test.pgr_stderr or 0.0)
        if gap > state.config.dev_test_gap and gap > 3 * se:
            await self._emit(
                event,
                IntegrityFlagged(
                    check=IntegrityCheck.DEV_TEST_GAP, severity=Severity.WARNING,
                    # The test score itself stays withheld (its score.withheld event is named).
                    detail=(f"idea {req.idea_id}: its test PGR is more than {state.config.dev_test_gap:g} "
                            "and 3 standard errors below its dev PGR"),
                    idea_id=req.idea_id, experiment_id=req.experiment_id, agent_id=req.agent_id,
                    evidence={"dev_experiment_id": dev.experiment_id, "test_experiment_id": req.experiment_id,
                              "threshold": state.config.dev_test_gap},
                ),
                derived_id(event.id, "dev_test_gap"),
                correlation=req.idea_id,
            )

    async def _emit(self, cause: Event[Any], payload: Any, event_id: str, correlation: str | None = None) -> None:
        await self.bus.publish(
            Event.create(payload, session_id=cause.session_id, source=self.source, causation=cause,
                         correlation_id=correlation, id=event_id)
        )


async def main() -> None:
    from services.runtime import service, service_id

    async with service("scorer") as (bus, stop, _log):
        await Scorer(bus, source=service_id("scorer")).run(stop)
