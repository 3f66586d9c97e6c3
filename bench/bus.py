"""Bus + recorder benchmark: JetStream publish rate, end-to-end recording rate,
publish-to-committed latency at a fixed offered load, recorder peak RSS.

    .venv/bin/python bench/bus.py [--events 200000] [--rate 2000] [--duration 10]

Phases, each timed separately (fresh temp ``AAR_HOME`` and nats-server per stack):

1. raw      stack A, no recorder: N pre-built events of mixed types published with
            ``Bus.publish_many`` in pipelined chunks; time until every JetStream ack.
2. e2e      stack B, recorder process running: N fresh events published the same
            way; time from the first publish until the recorder's ``health`` query
            counts all N as committed.
3. latency  stack B: a fixed schedule of ``--rate`` events/s for ``--duration`` s.
            Every ``--tick-ms`` (default 5) the events due are created and sent
            with one ``publish_many`` (acks not awaited before the next tick), as
            many services publishing a few events each would offer them.
            ``--tick-ms 0`` creates and ``Bus.publish``-es each event on its own
            slot instead: ~0.4 ms of publisher CPU per event, which on 2 cores
            shared with nats-server and the recorder cannot hold 2,000/s (the
            table warns). After a graceful SIGTERM of the recorder the DuckDB
            file is read: latency = ``recorded_at - time`` (``recorded_at`` is
            taken when the recorder *starts* writing the batch) and,
            conservatively, end-of-batch (the recorder's ``batch_committed`` log
            line, written after commit and acks) - ``time``; and the same
            end-of-batch measured from the event's schedule slot (adds the
            publisher's lag: up to one tick). The p99 target must hold for both.
            "Committed" is the recorder's commit to its inbox file, after which
            it acks; the mover folds the inbox into ``events`` a few times a
            second (services/recorder/inbox.py). When an event became visible
            in the views (the recorder's ``batch_moved`` line covering its
            ``recorded_at``) is reported too, without a target.

Recorder RSS (with children) is sampled every 100 ms from its start to its exit.
CPU seconds of the publisher (this process), nats-server, the recorder and
"other" (everything else on the machine) are reported per phase: on a small or
shared machine they compete, and the figures mean little without them.
Progress goes to stderr; the table and one final JSON line go to stdout.
Targets (reported, never fatal): e2e >= 50% of raw; p99 < 100 ms at the offered rate.
``--py-spy DIR`` profiles the recorder during phases 2 and 3 (``py-spy`` must be
installed: ``.venv/bin/pip install py-spy``); ``--recorder-args`` starts a variant.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import functools
import json
import os
import random
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

# ``python bench/bus.py`` puts bench/ first on sys.path, where this very file
# would shadow the ``bus`` package: run against the repository root instead.
_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import duckdb
import psutil

from bus import Bus, BusSettings, NatsServer, QueryError, Role
from bus.roles import STREAM
from core.logs import configure
from schemas import Event, new_id
from schemas.agent import AgentLlmCalled, AgentToolCalled
from schemas.artifact import ArtifactKind, ArtifactStored
from schemas.base import Payload
from schemas.experiment import (
    ExperimentFailed,
    ExperimentFinished,
    ExperimentProgress,
    ExperimentRequested,
    ExperimentStarted,
    Split,
)
from schemas.forum import ForumPosted, ForumVoted
from schemas.idea import IdeaProposed
from schemas.integrity import IntegrityCheck, IntegrityFlagged, Severity
from schemas.scoring import ScorePublished

TARGET_E2E_OVER_RAW = 0.5
TARGET_P99_MS = 100.0


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# -- realistic events ------------------------------------------------------

WORDS = (
    "weak strong teacher student label labels soft hard confidence loss auxiliary entropy "
    "filtering early stopping bootstrap ensemble calibration pseudo relabel disagreement "
    "agreement margin threshold temperature sharpen smoothing curriculum warmup epoch "
    "learning rate features frozen linear probe head logistic regression accuracy PGR gap "
    "ceiling floor baseline variance seed seeds split dev test heldout review sentiment "
    "movie tweets noisy generalization distribution shift overfit underfit imitation "
    "errors systematic random prior posterior co-training self-training consistency "
    "augmentation dropout weight decay the a of to and in that we it is with for on "
    "because this method improves over naive cross-entropy when teacher is wrong"
).split()
MODELS = ("claude-sonnet-4-5", "claude-opus-4-1", "claude-haiku-4-5")
TOOLS = ("forum_search", "read_post", "propose_idea", "get_scores", "read_artifact", "write_method", "vote")
BUILTINS = ("naive_soft_ce", "aux_confidence", "product_loss", "confidence_filter", "early_stop_weak", "s2s_relabel")
DATASETS = ("rotten_tomatoes", "imdb", "tweets")

# (event type, weight): roughly what a research session emits; LLM/tool calls dominate.
MIX: tuple[tuple[str, int], ...] = (
    ("agent.llm_called", 25),
    ("agent.tool_called", 25),
    ("experiment.progress", 12),
    ("forum.voted", 7),
    ("forum.posted", 6),
    ("idea.proposed", 5),
    ("artifact.stored", 4),
    ("experiment.requested", 4),
    ("experiment.started", 3),
    ("experiment.finished", 3),
    ("score.published", 3),
    ("experiment.failed", 2),
    ("integrity.flagged", 1),
)


class EventFactory:
    """Deterministic (seeded) events with payload sizes like a real session's."""

    def __init__(self, seed: int, source: str = "bench") -> None:
        self.rng = random.Random(seed)
        self.source = source
        self.agents = [f"agent-{i}" for i in range(8)]
        self.trainers = [f"trainer-{i}" for i in range(4)]
        self.ideas = [new_id() for _ in range(200)]
        self.experiments = [new_id() for _ in range(400)]
        self.posts = [new_id() for _ in range(300)]
        self.shas = [f"{self.rng.getrandbits(256):064x}" for _ in range(300)]
        # pools of text so that building 200k events stays fast yet varied
        self.short = [self._text(6, 14) for _ in range(400)]
        self.medium = [self._text(25, 45) for _ in range(400)]  # ~150-300 chars
        self.long = [self._text(45, 80) for _ in range(400)]  # ~300-500 chars (hypotheses)
        self.bodies = [self._text(140, 200) for _ in range(200)]  # ~1 KB forum bodies
        self.code = [self._code() for _ in range(100)]  # ~600-900 chars
        types, weights = zip(*MIX, strict=True)
        self.types = list(types)
        self.weights = list(weights)
        self.builders: dict[str, Callable[[], Payload]] = {
            "agent.llm_called": self._llm,
            "agent.tool_called": self._tool,
            "experiment.progress": self._progress,
            "forum.voted": self._vote,
            "forum.posted": self._post,
            "idea.proposed": self._idea,
            "artifact.stored": self._artifact,
            "experiment.requested": self._requested,
            "experiment.started": self._started,
            "experiment.finished": self._finished,
            "score.published": self._score,
            "experiment.failed": self._failed,
            "integrity.flagged": self._flag,
        }

    def _text(self, lo: int, hi: int) -> str:
        words = self.rng.choices(WORDS, k=self.rng.randint(lo, hi))
        return " ".join(words).capitalize() + "."

    def _code(self) -> str:
        lines = ["import numpy as np", "", "def run(ctx):"]
        for _ in range(self.rng.randint(12, 20)):
            lines.append(f"    # {self._text(4, 9)}")
            lines.append(f"    x = ctx.helpers.step(x, lr={self.rng.random():.4f}, w={self.rng.randint(1, 9)})")
        lines.append("    return ctx.predict(x)")
        return "\n".join(lines)

    def c(self, seq: Sequence[Any]) -> Any:
        return self.rng.choice(seq)

    def _llm(self) -> Payload:
        r = self.rng
        inp, out = r.randint(800, 60_000), r.randint(40, 3_000)
        return AgentLlmCalled(
            agent_id=self.c(self.agents), model=self.c(MODELS), input_tokens=inp, output_tokens=out,
            cache_read_tokens=r.randint(0, inp), cache_write_tokens=r.randint(0, 4_000),
            cost_usd=round(inp * 3e-6 + out * 15e-6, 6), latency_s=round(r.uniform(0.4, 40.0), 3),
            stop_reason=self.c(("end_turn", "tool_use", "max_tokens")), attempts=1 + (r.random() < 0.05),
            idea_id=self.c(self.ideas) if r.random() < 0.6 else None,
        )

    def _tool(self) -> Payload:
        r = self.rng
        tool = self.c(TOOLS)
        if tool == "write_method":
            args: dict[str, Any] = {"name": self.c(self.short)[:40], "code": self.c(self.code)}
        elif tool == "forum_search":
            args = {"query": self.c(self.short), "limit": r.randint(5, 20), "tags": ["w2s", self.c(DATASETS)]}
        elif tool == "propose_idea":
            args = {"title": self.c(self.short), "builtin_method": self.c(BUILTINS),
                    "params": {"lr": r.random() / 100, "epochs": r.randint(1, 5), "alpha": r.random()}}
        else:
            args = {"id": self.c(self.posts + self.experiments), "verbose": r.random() < 0.3}
        ok = r.random() > 0.05
        return AgentToolCalled(
            agent_id=self.c(self.agents), tool=tool, arguments=args, ok=ok,
            error=None if ok else self.c(self.short), latency_s=round(r.uniform(0.001, 2.0), 4),
            result_summary=self.c(self.medium),
        )

    def _progress(self) -> Payload:
        return ExperimentProgress(
            experiment_id=self.c(self.experiments), trainer_id=self.c(self.trainers),
            fraction=round(self.rng.random(), 3), message=self.c(self.short),
        )

    def _vote(self) -> Payload:
        return ForumVoted(post_id=self.c(self.posts), agent_id=self.c(self.agents), value=self.c((1, 1, 1, -1)))

    def _post(self) -> Payload:
        r = self.rng
        return ForumPosted(
            post_id=new_id(), agent_id=self.c(self.agents), title=self.c(self.short)[:300], body=self.c(self.bodies),
            reply_to=self.c(self.posts) if r.random() < 0.4 else None,
            idea_ids=r.sample(self.ideas, r.randint(0, 3)), experiment_ids=r.sample(self.experiments, r.randint(0, 3)),
            tags=r.sample(["w2s", "finding", "negative-result", "question", "baseline", "bug"], 2),
        )

    def _idea(self) -> Payload:
        r = self.rng
        code = r.random() < 0.5
        return IdeaProposed(
            idea_id=new_id(), agent_id=self.c(self.agents), title=self.c(self.short)[:300],
            hypothesis=self.c(self.long), why=self.c(self.medium),
            parent_ideas=r.sample(self.ideas, r.randint(0, 3)), cites_posts=r.sample(self.posts, r.randint(0, 4)),
            method_artifact=self.c(self.shas) if code else None,
            builtin_method=None if code else self.c(BUILTINS),
            params={"lr": r.random() / 100, "epochs": r.randint(1, 5), "threshold": round(r.random(), 2)},
        )

    def _artifact(self) -> Payload:
        return ArtifactStored(
            sha256=self.c(self.shas), size=self.rng.randint(200, 5_000_000), kind=self.c(list(ArtifactKind)),
            name=f"{self.c(BUILTINS)}.py", media_type="text/x-python", owner=self.c(self.agents),
        )

    def _requested(self) -> Payload:
        r = self.rng
        code = r.random() < 0.5
        return ExperimentRequested(
            experiment_id=new_id(), idea_id=self.c(self.ideas), agent_id=self.c(self.agents),
            split=self.c((Split.DEV, Split.DEV, Split.TEST)), dataset=self.c(DATASETS),
            weak_model="all-MiniLM-L6-v2", strong_model="all-mpnet-base-v2", seeds=[0, 1, 2],
            method_artifact=self.c(self.shas) if code else None, builtin_method=None if code else self.c(BUILTINS),
            params={"lr": r.random() / 100, "epochs": r.randint(1, 5)},
        )

    def _started(self) -> Payload:
        return ExperimentStarted(experiment_id=self.c(self.experiments), trainer_id=self.c(self.trainers))

    def _finished(self) -> Payload:
        r = self.rng
        return ExperimentFinished(
            experiment_id=self.c(self.experiments), trainer_id=self.c(self.trainers),
            predictions_artifact=self.c(self.shas), runtime_s=round(r.uniform(5, 900), 2),
            peak_rss_mb=round(r.uniform(300, 4000), 1), seeds=[0, 1, 2], log_artifact=self.c(self.shas),
        )

    def _score(self) -> Payload:
        r = self.rng
        weak, ceil = 0.74 + r.random() * 0.02, 0.83 + r.random() * 0.02
        acc = weak + r.random() * (ceil - weak)
        return ScorePublished(
            experiment_id=self.c(self.experiments), idea_id=self.c(self.ideas), agent_id=self.c(self.agents),
            dataset=self.c(DATASETS), split=Split.DEV, n_seeds=3, accuracy=acc, accuracy_stderr=r.random() / 100,
            weak_accuracy=weak, ceiling_accuracy=ceil, pgr=(acc - weak) / (ceil - weak), pgr_stderr=r.random() / 10,
            builtin_method=self.c(BUILTINS),
        )

    def _failed(self) -> Payload:
        return ExperimentFailed(
            experiment_id=self.c(self.experiments), trainer_id=self.c(self.trainers), error_class="RuntimeError",
            message=self.c(self.long), runtime_s=round(self.rng.uniform(0, 300), 2), retryable=self.rng.random() < 0.5,
        )

    def _flag(self) -> Payload:
        return IntegrityFlagged(
            check=self.c(list(IntegrityCheck)), severity=self.c(list(Severity)), detail=self.c(self.medium),
            idea_id=self.c(self.ideas), experiment_id=self.c(self.experiments), agent_id=self.c(self.agents),
            evidence={"dev": round(self.rng.random(), 3), "test": round(self.rng.random(), 3)},
        )

    def payload(self) -> Payload:
        return self.builders[self.rng.choices(self.types, self.weights)[0]]()

    def event(self, session_id: str) -> Event:
        return Event.create(self.payload(), session_id=session_id, source=self.source,
                            correlation_id=self.c(self.ideas))

    def events(self, n: int, session_id: str) -> list[Event]:
        return [self.event(session_id) for _ in range(n)]


# -- processes -------------------------------------------------------------


@dataclass
class Sampler:
    """Samples RSS (process + children) of named processes every ``interval`` s."""

    interval: float = 0.1
    procs: dict[str, psutil.Process] = field(default_factory=dict)
    peak_mb: dict[str, float] = field(default_factory=dict)
    last_mb: dict[str, float] = field(default_factory=dict)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def watch(self, name: str, pid: int) -> None:
        self.procs[name] = psutil.Process(pid)

    def unwatch(self, name: str) -> None:
        self.procs.pop(name, None)

    @staticmethod
    def rss_tree(proc: psutil.Process) -> int:
        total = 0
        for p in [proc, *proc.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
        return total

    def sample(self) -> None:
        for name, proc in list(self.procs.items()):
            try:
                mb = self.rss_tree(proc) / 2**20
            except psutil.Error:
                continue
            self.last_mb[name] = mb
            self.peak_mb[name] = max(self.peak_mb.get(name, 0.0), mb)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)


def cpu_seconds(pid: int) -> float:
    with contextlib.suppress(psutil.Error):
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    return float("nan")


def busy_seconds() -> float:
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0)


@dataclass
class CpuMeter:
    """CPU seconds used by each process over one phase (to see who got the 2 cores)."""

    pids: dict[str, int]
    start: dict[str, float] = field(default_factory=dict)
    t0: float = 0.0

    def __enter__(self) -> CpuMeter:
        self.start = {n: cpu_seconds(p) for n, p in self.pids.items()}
        self.busy0 = busy_seconds()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.t0
        self.used = {n: cpu_seconds(p) - self.start[n] for n, p in self.pids.items()}
        # whatever else ran on the machine meanwhile (other jobs, py-spy, kernel threads)
        self.used["other"] = max(busy_seconds() - self.busy0 - sum(self.used.values()), 0.0)

    def percent(self) -> dict[str, float]:
        return {n: round(100 * s / self.wall, 1) for n, s in self.used.items()}

    def summary(self) -> str:
        parts = [f"{n} {s:.1f}s ({100 * s / self.wall:.0f}%)" for n, s in self.used.items()]
        return f"CPU over {self.wall:.1f}s of {os.cpu_count()} CPUs: " + ", ".join(parts)


class Processes:
    """Everything this benchmark starts, stopped in ``close`` whatever happens."""

    def __init__(self) -> None:
        self.servers: list[NatsServer] = []
        self.popens: list[subprocess.Popen[bytes]] = []

    def server(self, store: Path) -> NatsServer:
        srv = NatsServer(store)
        self.servers.append(srv)
        return srv.start()

    def spawn(self, args: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with open(log, "ab") as fh:
            proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        self.popens.append(proc)
        return proc

    @staticmethod
    def terminate(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int | None:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                proc.wait()
        return proc.returncode

    def close(self) -> None:
        for proc in reversed(self.popens):
            self.terminate(proc)
        for srv in reversed(self.servers):
            with contextlib.suppress(Exception):
                srv.stop()


# -- phases ----------------------------------------------------------------


async def connect_admin(server: NatsServer, name: str) -> Bus:
    bus = await Bus.connect(BusSettings.for_role(server.url, server.credentials, Role.ADMIN), name=name)
    await bus.ensure_stream()
    return bus


async def publish_all(bus: Bus, events: Sequence[Event], chunk: int, concurrency: int,
                      progress: Callable[[int], None] | None = None) -> float:
    """Publish ``events`` with ``Bus.publish_many`` in chunks, ``concurrency``
    chunks in flight; returns the seconds until the last JetStream ack."""
    starts = iter(range(0, len(events), chunk))
    done = 0

    async def worker() -> None:
        nonlocal done
        for start in starts:
            part = events[start:start + chunk]
            seqs = await bus.publish_many(part, timeout=120.0)
            if len(seqs) != len(part):
                raise RuntimeError(f"{len(seqs)} acks for {len(part)} events")
            done += len(part)
            if progress is not None:
                progress(done)

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - t0


def describe_events(events: Sequence[Event]) -> dict[str, Any]:
    sizes = sorted(len(e.to_json()) for e in events[:20_000])
    by_type = Counter(e.type.value for e in events)
    return {
        "mean_bytes": statistics.fmean(sizes),
        "p50_bytes": sizes[len(sizes) // 2],
        "p99_bytes": sizes[int(len(sizes) * 0.99)],
        "max_bytes": sizes[-1],
        "types": dict(by_type.most_common()),
    }


async def phase_raw(args: argparse.Namespace, procs: Processes, home: Path, report: dict[str, Any]) -> None:
    say(f"phase 1 (raw): building {args.events:,} events")
    factory = EventFactory(seed=1)
    t = time.perf_counter()
    events = factory.events(args.events, f"bench-raw-{new_id()}")
    report["build_s"] = time.perf_counter() - t
    report["sizes"] = describe_events(events)
    s = report["sizes"]
    say(f"  built in {report['build_s']:.1f}s; JSON size mean {s['mean_bytes']:.0f} B, p50 {s['p50_bytes']} B, "
        f"p99 {s['p99_bytes']} B, max {s['max_bytes']} B")
    srv = procs.server(home / "nats")
    bus = await connect_admin(srv, "bench-raw")
    try:
        me = os.getpid()
        step = max(args.events // 5, 1)
        nxt = [step]

        def progress(done: int) -> None:
            if done >= nxt[0]:
                nxt[0] += step
                say(f"  acked {done:,}")

        with CpuMeter({"bench": me, "nats-server": srv.pid}) as cpu:
            secs = await publish_all(bus, events, args.chunk, args.concurrency, progress)
        info = await bus.js.stream_info(STREAM)
        if info.state.messages != args.events:
            raise RuntimeError(f"stream holds {info.state.messages} messages, expected {args.events}")
        report["raw_s"] = secs
        report["raw_publish_per_s"] = args.events / secs
        report["raw_cpu"] = cpu.summary()
        report.setdefault("cpu_pct", {})["raw"] = cpu.percent()
        report["stream_bytes_per_event"] = info.state.bytes / max(info.state.messages, 1)
        say(f"  raw: {args.events:,} acked in {secs:.2f}s = {args.events / secs:,.0f} events/s; {cpu.summary()}")
    finally:
        await bus.close()
        srv.stop()
    del events


async def health(bus: Bus) -> dict[str, Any]:
    return await bus.request("recorder", "health", {}, timeout=10.0)


async def wait_for_count(bus: Bus, target: int, timeout: float, poll: float,
                         proc: subprocess.Popen[bytes], every: float = 2.0,
                         timeline: list[tuple[float, int]] | None = None) -> tuple[float | None, int]:
    """Poll the recorder's health until it counts ``target`` events; returns
    (perf_counter when seen, last count) or (None, count) on timeout."""
    deadline = time.perf_counter() + timeout
    last_print = time.perf_counter()
    count = -1
    while time.perf_counter() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"recorder exited with {proc.returncode}")
        with contextlib.suppress(QueryError):
            count = int((await health(bus))["events"])
            if timeline is not None:
                timeline.append((time.perf_counter(), count))
            if count >= target:
                return time.perf_counter(), count
        if time.perf_counter() - last_print > every:
            last_print = time.perf_counter()
            say(f"  recorder has {count:,} / {target:,}")
        await asyncio.sleep(poll)
    return None, count


async def phase_e2e_and_latency(args: argparse.Namespace, procs: Processes, home: Path,
                                sampler: Sampler, report: dict[str, Any]) -> None:
    aar_home = home
    aar_home.mkdir(parents=True, exist_ok=True)
    srv = procs.server(aar_home / "nats")
    bus = await connect_admin(srv, "bench-e2e")
    try:
        env = {
            **os.environ,
            **BusSettings.for_role(srv.url, srv.credentials, Role.RECORDER).to_env(),
            "AAR_HOME": str(aar_home),
            "AAR_LOG_FORMAT": "json",
            # one JSON line per batch (batch_committed, with its duration): the
            # end-of-commit time used for the conservative latency figure.
            "AAR_LOG_LEVEL": "DEBUG",
            "PYTHONUNBUFFERED": "1",
        }
        log_path = aar_home / "recorder.log"
        t_spawn = time.perf_counter()
        rec = procs.spawn([sys.executable, *shlex.split(args.recorder_args)], env=env, log=log_path)
        report["recorder_log"] = str(log_path)
        sampler.watch("recorder", rec.pid)
        sampler.watch("nats-server", srv.pid)
        sampler.start()
        seen, base = await wait_for_count(bus, 0, 60.0, 0.1, rec)
        if seen is None:
            raise RuntimeError(f"recorder did not answer health within 60s; see {log_path}")
        say(f"  recorder pid {rec.pid} ready in {seen - t_spawn:.1f}s (events {base})")

        # -- phase 2: end to end ---------------------------------------------
        say(f"phase 2 (e2e): building {args.events:,} fresh events")
        factory = EventFactory(seed=2)
        events = factory.events(args.events, f"bench-e2e-{new_id()}")
        pids = {"bench": os.getpid(), "nats-server": srv.pid, "recorder": rec.pid}
        py_spy = await start_py_spy(args, procs, rec.pid, "e2e")
        say(f"  publishing {args.events:,} with the recorder running")
        published_at: list[float] = []
        timeline: list[tuple[float, int]] = []

        async def publisher() -> None:
            secs = await publish_all(bus, events, args.chunk, args.concurrency)
            published_at.append(secs)

        with CpuMeter(pids) as cpu:
            t0 = time.perf_counter()
            pub = asyncio.create_task(publisher())
            try:
                seen, count = await wait_for_count(bus, base + args.events, args.e2e_timeout, args.poll, rec,
                                                   timeline=timeline)
                await pub
            finally:
                if not pub.done():
                    pub.cancel()
                    await asyncio.wait({pub})  # let it finish cancelling; its error is not ours to raise
        stop_py_spy(procs, py_spy)
        if seen is None:
            raise RuntimeError(f"recorder had {count - base:,}/{args.events:,} after {args.e2e_timeout}s")
        e2e_s = seen - t0
        report["e2e_s"] = e2e_s
        report["e2e_publish_s"] = published_at[0]
        report["e2e_per_s"] = args.events / e2e_s
        report["e2e_cpu"] = cpu.summary()
        report.setdefault("cpu_pct", {})["e2e"] = cpu.percent()
        # the recorder's own pace: while the publisher ran, and alone once it had finished
        t_pub = t0 + published_at[0]
        during = [(t, c) for t, c in timeline if t <= t_pub]
        after = [(t, c) for t, c in timeline if t >= t_pub]
        if len(during) >= 2:
            report["recorder_rate_while_publishing"] = (during[-1][1] - during[0][1]) / (during[-1][0] - during[0][0])
        if len(after) >= 2 and after[-1][0] > after[0][0]:
            report["recorder_rate_alone"] = (after[-1][1] - after[0][1]) / (after[-1][0] - after[0][0])
            report["backlog_at_publish_end"] = base + args.events - after[0][1]
        h = await health(bus)
        report["e2e_batches"] = h["batches"]
        say(f"  e2e: {args.events:,} committed in {e2e_s:.2f}s = {args.events / e2e_s:,.0f} events/s "
            f"(publishing alone took {published_at[0]:.2f}s); {cpu.summary()}")
        events.clear()  # free the memory before the latency phase

        # The recorder checkpoints the log when idle: wait for that, so that phase 3
        # measures a steady load, not the tail of phase 2's burst (commits no longer wait
        # for a checkpoint, but it competes for the CPUs). How long it took is reported.
        report["wal_bytes_after_burst"] = h.get("wal_bytes")
        t = time.perf_counter()
        while time.perf_counter() - t < 120:
            now = await health(bus)  # the checkpoint counter moves once the checkpoint has ended
            if int(now.get("wal_bytes", 0)) <= 1_000_000 and (
                    int(h.get("wal_bytes", 0)) <= 1_000_000 or now.get("checkpoints") != h.get("checkpoints")):
                break
            await asyncio.sleep(0.05)
        report["burst_checkpoint_wait_s"] = time.perf_counter() - t
        say(f"  WAL after the burst {fmt(h.get('wal_bytes'))} B, checkpointed within "
            f"{report['burst_checkpoint_wait_s']:.2f}s")

        # -- phase 3: latency at a fixed offered load ------------------------
        base = count
        lat_session = f"bench-lat-{new_id()}"
        n = int(args.rate * args.duration)
        say(f"phase 3 (latency): {n:,} events at {args.rate:,.0f}/s for {args.duration:.0f}s, "
            f"each created right before its publish")
        lat_factory = EventFactory(seed=3)
        payloads = [lat_factory.payload() for _ in range(n)]  # payload content only; envelope made at send
        sender, source = bus, "bench-latency"
        if args.gateway:  # through the gateway, as a trainer identity: size, budget and identity checks on
            sender, source, gw = await start_gateway(procs, srv, aar_home, pids)
            payloads = [ExperimentProgress(experiment_id=f"x-{i:08d}", trainer_id=source, fraction=(i % 100) / 100,
                                           message=lat_factory._text(25, 40)[:300]) for i in range(n)]
            say(f"  through the gateway (pid {gw.pid}) as {source}: experiment.progress events")
        py_spy = await start_py_spy(args, procs, rec.pid, "latency")
        with CpuMeter(pids) as cpu:
            paced = await paced_publish(sender, payloads, args.rate, args.tick_ms, lat_session, source=source)
            seen, count = await wait_for_count(bus, base + n, 60.0, args.poll, rec)
        stop_py_spy(procs, py_spy)
        if sender is not bus:
            await sender.close()
        report["latency_through_gateway"] = bool(args.gateway)
        if paced.errors:
            raise RuntimeError(f"{len(paced.errors)} publishes failed in the latency phase, "
                               f"first: {paced.errors[0]!r}")
        if seen is None:
            raise RuntimeError(f"recorder had {count - base:,}/{n:,} latency events after 60s")
        report["offered_rate"] = args.rate
        report["achieved_rate"] = n / paced.offered_s if paced.offered_s > 0 else float("nan")
        report["latency_events"] = n
        report["tick_ms"] = args.tick_ms
        lag_ms = sorted(x * 1000 for x in paced.lag)
        report["schedule_lag_p99_ms"] = quantile(lag_ms, 0.99)
        report["schedule_lag_max_ms"] = lag_ms[-1]
        report["latency_cpu"] = cpu.summary()
        report.setdefault("cpu_pct", {})["latency"] = cpu.percent()
        ack_ms = sorted((a - s) * 1000 for a, s in zip(paced.acks, paced.sent, strict=True) if a == a)
        report["ack_p50_ms"] = quantile(ack_ms, 0.5)
        report["ack_p99_ms"] = quantile(ack_ms, 0.99)
        say(f"  offered {report['achieved_rate']:,.0f}/s; JetStream ack p50 {report['ack_p50_ms']:.1f} ms, "
            f"p99 {report['ack_p99_ms']:.1f} ms; {cpu.summary()}")

        # -- stop the recorder gracefully, then read its file -----------------
        say("  stopping the recorder (SIGTERM) to read events.duckdb")
        t = time.perf_counter()
        rc = procs.terminate(rec, timeout=30)
        report["recorder_exit"] = rc
        report["recorder_stop_s"] = time.perf_counter() - t
        sampler.sample()
        sampler.stop()
        analyse_db(aar_home / "events.duckdb", lat_session, log_path, report, paced.lag)
    finally:
        await bus.close()
        srv.stop()


@dataclass
class Paced:
    sent: list[float]  # epoch s: the event's ``time`` (set by Event.create right before publishing)
    acks: list[float]  # epoch s: JetStream ack received (nan if none)
    lag: list[float]  # s: how late each event was created against its schedule slot
    offered_s: float
    errors: list[BaseException]


async def start_gateway(procs: Processes, srv: NatsServer, home: Path,
                        pids: dict[str, int]) -> tuple[Bus, str, subprocess.Popen[bytes]]:
    """A gateway process (its budgets out of the way) and a trainer identity's bus."""
    identity = "trainer-bench"
    srv.add_identity(identity, Role.TRAINER)
    env = {**os.environ, **BusSettings.for_role(srv.url, srv.credentials, Role.GATEWAY).to_env(),
           "AAR_HOME": str(home), "AAR_LOG_FORMAT": "json", "AAR_PUBLISH_BUDGETS": json.dumps({"trainer": 10**12})}
    gw = procs.spawn([sys.executable, "-m", "services.gateway"], env=env, log=home / "gateway.log")
    pids["gateway"] = gw.pid
    admin = await connect_admin(srv, "bench-gateway-probe")
    try:
        for _ in range(300):
            try:
                await admin.request("gateway", "health", {}, timeout=0.5)
                break
            except QueryError:
                await asyncio.sleep(0.1)
        else:
            raise RuntimeError(f"the gateway did not answer within 30s; see {home / 'gateway.log'}")
    finally:
        await admin.close()
    bus = await Bus.connect(BusSettings.for_identity(srv.url, srv.credentials, identity), name=identity)
    return bus, identity, gw


async def paced_publish(bus: Bus, payloads: Sequence[Payload], rate: float, tick_ms: float,
                        session_id: str, source: str = "bench-latency") -> Paced:
    """Publish one event per slot of a fixed schedule (``rate`` per second, no
    drift: slot i is at start + i/rate). Each event is created right before its
    publish and acks are not awaited before the next one. With ``tick_ms`` > 0
    the events due are instead sent together every ``tick_ms`` with one
    ``publish_many`` (a cheaper publisher: less CPU taken from the recorder)."""
    n = len(payloads)
    out = Paced([float("nan")] * n, [float("nan")] * n, [0.0] * n, 0.0, [])
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()

    def done(first: int, count: int, task: asyncio.Task[Any]) -> None:
        tasks.discard(task)
        if task.cancelled():
            return
        if (exc := task.exception()) is not None:
            out.errors.append(exc)
            return
        now = time.time()
        for k in range(first, first + count):
            out.acks[k] = now

    def make(i: int, slot0: float, interval: float) -> Event:
        ev = Event.create(payloads[i], session_id=session_id, source=source)
        out.sent[i] = ev.time.timestamp()
        out.lag[i] = loop.time() - (slot0 + i * interval)
        return ev

    interval = 1.0 / rate
    start = loop.time() + 0.05
    i = 0
    if tick_ms <= 0:
        for i in range(n):
            # always yield: a publisher behind schedule must still let the
            # publish tasks (and the ack reader) run instead of queueing them
            await asyncio.sleep(max(start + i * interval - loop.time(), 0.0))
            task: asyncio.Task[Any] = asyncio.create_task(bus.publish(make(i, start, interval), timeout=30.0))
            task.add_done_callback(functools.partial(done, i, 1))
            tasks.add(task)
    else:
        tick = tick_ms / 1000
        k = 0
        while i < n:
            await asyncio.sleep(max(start + k * tick - loop.time(), 0.0))
            k += 1
            due = min(n, int((loop.time() - start) / interval) + 1)
            if due <= i:
                continue
            events = [make(j, start, interval) for j in range(i, due)]
            batch: asyncio.Task[Any] = asyncio.create_task(bus.publish_many(events, timeout=30.0))
            batch.add_done_callback(functools.partial(done, i, due - i))
            tasks.add(batch)
            i = due
    out.offered_s = loop.time() - start
    if tasks:
        await asyncio.wait(set(tasks), timeout=60)
    return out


async def start_py_spy(args: argparse.Namespace, procs: Processes, pid: int, phase: str) -> tuple[Any, Path] | None:
    """``py-spy record`` the recorder (collapsed stacks) for one phase, if asked."""
    if not args.py_spy:
        return None
    out = Path(args.py_spy).resolve()
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"recorder-{phase}.txt"
    exe = Path(sys.executable).parent / "py-spy"
    proc = procs.spawn(
        [str(exe if exe.exists() else "py-spy"), "record", "--pid", str(pid), "--rate", str(args.py_spy_rate),
         "--format", "raw", "--threads", "-o", str(path)],
        env=dict(os.environ), log=out / f"py-spy-{phase}.log",
    )
    await asyncio.sleep(1.0)  # py-spy attaches
    return proc, path


def stop_py_spy(procs: Processes, handle: tuple[Any, Path] | None) -> None:
    if handle is None:
        return
    proc, path = handle
    proc.send_signal(signal.SIGINT)  # py-spy writes its profile on Ctrl-C
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        procs.terminate(proc)
    if path.exists():
        summarize_profile(path)


def summarize_profile(path: Path, top: int = 25) -> None:
    """Print where the recorder's samples went: per thread, then the hottest
    functions by self and by inclusive samples (idle frames included, marked)."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = stack.split(";")
        total += count
        threads[frames[0]] += count
        self_c[frames[-1]] += count
        for f in set(frames[1:]):
            incl[f] += count
    say(f"  py-spy {path.name}: {total} samples")
    for t, c in threads.most_common():
        say(f"    thread {t}: {100 * c / total:.1f}%")
    say("    self:")
    for f, c in self_c.most_common(top):
        say(f"      {100 * c / total:5.1f}%  {f}")
    say("    inclusive:")
    for f, c in incl.most_common(top):
        say(f"      {100 * c / total:5.1f}%  {f}")


def quantile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def log_records(log_path: Path, event: str) -> list[dict[str, Any]]:
    """The recorder's JSON log lines of one ``event``, each with ``_t`` (epoch s)."""
    out = []
    for line in log_path.read_text(errors="replace").splitlines():
        if f'"{event}"' not in line:
            continue
        with contextlib.suppress(ValueError, KeyError):
            rec = json.loads(line)
            rec["_t"] = datetime.fromisoformat(rec["timestamp"].replace("Z", "+00:00")).timestamp()
            out.append(rec)
    return out


def batch_ends(log_path: Path) -> tuple[list[float], list[dict[str, Any]]]:
    """Timestamps (epoch s) of the recorder's ``batch_committed`` lines: each is
    written after the batch's commit *and* acks."""
    batches = log_records(log_path, "batch_committed")
    return [b["_t"] for b in batches], batches


def analyse_db(db: Path, lat_session: str, log_path: Path, report: dict[str, Any],
               lag: Sequence[float]) -> None:
    """Latency figures from the recorded file. ``lag``: how late the publisher created
    each event (in creation order) after its schedule slot, in s."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        # creation order: the order of ``lag`` (one publisher, events made one by one)
        rows = con.execute(
            "SELECT epoch_us(time), epoch_us(recorded_at) FROM events WHERE session_id = ? ORDER BY time, stream_seq",
            [lat_session],
        ).fetchall()
        per_batch = con.execute(
            "SELECT session_id, count(*) AS batches, median(n), max(n) FROM "
            "(SELECT session_id, recorded_at, count(*) AS n FROM events GROUP BY ALL) GROUP BY ALL"
        ).fetchall()
        report["db_events"] = (con.execute("SELECT count(*) FROM events").fetchone() or [0])[0]
    finally:
        con.close()
    report["db_batches"] = {
        s.split("-")[1]: {"batches": b, "median_size": float(m), "max_size": int(x)} for s, b, m, x in per_batch
    }
    start_ms = sorted((r - t) / 1000 for t, r in rows)
    report["p50_recorded_at_ms"] = quantile(start_ms, 0.5)
    report["p99_recorded_at_ms"] = quantile(start_ms, 0.99)
    report["max_recorded_at_ms"] = start_ms[-1] if start_ms else float("nan")
    ends, batches = batch_ends(log_path)
    commit_ms: list[float] = []
    slot_ms: list[float] = []
    for i, (t, r) in enumerate(rows):
        k = bisect.bisect_left(ends, r / 1e6)  # the first batch end at or after this batch's start
        if k < len(ends):
            commit_ms.append((ends[k] - t / 1e6) * 1000)
            if len(rows) == len(lag):
                slot_ms.append(commit_ms[-1] + lag[i] * 1000)
    commit_ms.sort()
    slot_ms.sort()
    # visible in the views: the first move whose rows reach this event's recorded_at
    moves = [m for m in log_records(log_path, "batch_moved") if m.get("recorded_upto") is not None]
    covered = [float(m["recorded_upto"]) for m in moves]  # grows with each move
    visible_ms = sorted((moves[k]["_t"] - t / 1e6) * 1000 for t, r in rows
                        if (k := bisect.bisect_left(covered, r / 1e6 - 1e-6)) < len(moves))
    report["p50_visible_ms"] = quantile(visible_ms, 0.5)
    report["p99_visible_ms"] = quantile(visible_ms, 0.99)
    report["p50_from_slot_ms"] = quantile(slot_ms, 0.5)
    report["p99_from_slot_ms"] = quantile(slot_ms, 0.99)
    report["p50_ms"] = quantile(commit_ms, 0.5)
    report["p99_ms"] = quantile(commit_ms, 0.99)
    report["max_ms"] = commit_ms[-1] if commit_ms else float("nan")
    report["latency_matched"] = len(commit_ms)
    first = rows[0][1] / 1e6 if rows else float("inf")
    # checkpoints that overlapped the phase: ended after its first event was created and
    # began before its last batch was committed (an idle one after the phase is not counted)
    last_end = ends[min(bisect.bisect_left(ends, rows[-1][1] / 1e6), len(ends) - 1)] if rows and ends else 0.0
    ckpts = [c for c in log_records(log_path, "checkpointed")
             if c["_t"] >= rows[0][0] / 1e6 and c["_t"] - float(c["ms"]) / 1000 < last_end] if rows else []
    report["latency_checkpoints"] = len(ckpts)
    report["latency_checkpoint_ms_max"] = max((float(c["ms"]) for c in ckpts), default=0.0)
    lat_batches = [b for end, b in zip(ends, batches, strict=True) if end >= first]
    if lat_batches:
        ms = sorted(float(b["ms"]) for b in lat_batches)
        sizes = sorted(int(b["received"]) for b in lat_batches)
        report["latency_batch_ms_p50"] = quantile(ms, 0.5)
        report["latency_batch_ms_p99"] = quantile(ms, 0.99)
        report["latency_batch_size_p50"] = quantile(sizes, 0.5)
    e2e_batches = [b for b in batches if int(b["received"]) >= 1000]
    if e2e_batches:
        per_event_us = sorted(1000 * float(b["ms"]) / int(b["received"]) for b in e2e_batches)
        report["recorder_us_per_event_full_batches"] = quantile(per_event_us, 0.5)


# -- report ----------------------------------------------------------------


def p99_pass(r: dict[str, Any]) -> bool:
    """The latency target holds from the event's creation and from its schedule slot."""
    return max(r.get("p99_ms", float("inf")), r.get("p99_from_slot_ms", float("inf"))) < TARGET_P99_MS


def fmt(v: Any, spec: str = ",.0f") -> str:
    if isinstance(v, float | int) and v == v:
        return format(v, spec)
    return "n/a"


def print_table(report: dict[str, Any]) -> None:
    r = report
    e2e_ok = r.get("e2e_over_raw", 0) >= TARGET_E2E_OVER_RAW
    p99_ok = p99_pass(r)
    mode = f"publish_many every {r['tick_ms']:g} ms" if r.get("tick_ms") else "one Bus.publish per event"
    held = "" if r.get("achieved_rate", 0) >= 0.98 * r.get("offered_rate", 0) else "  WARNING: schedule not held"
    rows = [
        ("events per throughput phase", fmt(r.get("events"))),
        ("event JSON size mean / p99", f"{fmt(r['sizes']['mean_bytes'])} B / {fmt(r['sizes']['p99_bytes'])} B"),
        ("raw JetStream publish", f"{fmt(r.get('raw_publish_per_s'))} events/s ({fmt(r.get('raw_s'), '.2f')} s)"),
        ("end-to-end (committed)", f"{fmt(r.get('e2e_per_s'))} events/s ({fmt(r.get('e2e_s'), '.2f')} s; "
                                   f"publish done at {fmt(r.get('e2e_publish_s'), '.2f')} s)"),
        ("recorder rate while publishing / alone",
         f"{fmt(r.get('recorder_rate_while_publishing'))} / {fmt(r.get('recorder_rate_alone'))} events/s "
         f"(backlog {fmt(r.get('backlog_at_publish_end'))} when publishing ended)"),
        ("e2e / raw", f"{fmt(r.get('e2e_over_raw'), '.2f')}  target >= {TARGET_E2E_OVER_RAW:.2f}  "
                      f"{'PASS' if e2e_ok else 'FAIL'}"),
        ("latency offered / achieved", f"{fmt(r.get('offered_rate'))} / {fmt(r.get('achieved_rate'))} events/s "
                                       f"({mode}){held}"),
        ("publisher lag behind schedule p99/max",
         f"{fmt(r.get('schedule_lag_p99_ms'), '.1f')} / {fmt(r.get('schedule_lag_max_ms'), '.1f')} ms"),
        ("publish -> JetStream ack p50/p99",
         f"{fmt(r.get('ack_p50_ms'), '.1f')} / {fmt(r.get('ack_p99_ms'), '.1f')} ms"),
        ("publish -> batch start (recorded_at) p50/p99",
         f"{fmt(r.get('p50_recorded_at_ms'), '.1f')} / {fmt(r.get('p99_recorded_at_ms'), '.1f')} ms"),
        ("publish -> committed+acked p50/p99", f"{fmt(r.get('p50_ms'), '.1f')} / {fmt(r.get('p99_ms'), '.1f')} ms  "
                                               f"target p99 < {TARGET_P99_MS:.0f} ms  {'PASS' if p99_ok else 'FAIL'}"),
        ("schedule slot -> committed+acked p50/p99",
         f"{fmt(r.get('p50_from_slot_ms'), '.1f')} / {fmt(r.get('p99_from_slot_ms'), '.1f')} ms  "
         f"target p99 < {TARGET_P99_MS:.0f} ms  {'PASS' if p99_ok else 'FAIL'}"),
        ("publish -> visible in the views p50/p99",
         f"{fmt(r.get('p50_visible_ms'), '.1f')} / {fmt(r.get('p99_visible_ms'), '.1f')} ms (moved from the inbox)"),
        ("WAL after phase 2 / wait for its checkpoint",
         f"{fmt(r.get('wal_bytes_after_burst'))} B / {fmt(r.get('burst_checkpoint_wait_s'), '.2f')} s"),
        ("recorder checkpoints (latency phase)",
         f"{fmt(r.get('latency_checkpoints'))}, longest {fmt(r.get('latency_checkpoint_ms_max'), '.1f')} ms"),
        ("recorder batch ms p50/p99 (latency phase)",
         f"{fmt(r.get('latency_batch_ms_p50'), '.1f')} / {fmt(r.get('latency_batch_ms_p99'), '.1f')} ms, "
         f"batch size p50 {fmt(r.get('latency_batch_size_p50'))}"),
        ("recorder commit+acks per event (batches >= 1000)",
         f"{fmt(r.get('recorder_us_per_event_full_batches'), '.1f')} us"),
        ("recorder graceful stop (SIGTERM -> exit)", f"{fmt(r.get('recorder_stop_s'), '.2f')} s"),
        ("recorder peak RSS", f"{fmt(r.get('recorder_peak_rss_mb'), '.0f')} MB"),
        ("nats-server peak RSS", f"{fmt(r.get('nats_peak_rss_mb'), '.0f')} MB"),
        ("CPU raw phase", r.get("raw_cpu", "n/a")),
        ("CPU e2e phase", r.get("e2e_cpu", "n/a")),
        ("CPU latency phase", r.get("latency_cpu", "n/a")),
        ("wall time", f"{fmt(r.get('wall_s'), '.1f')} s on {os.cpu_count()} CPUs"),
    ]
    width = max(len(k) for k, _ in rows)
    print()
    print("bus benchmark".center(width + 40, "-"))
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print("-" * (width + 40), flush=True)


async def run(args: argparse.Namespace, procs: Processes, workdir: Path, report: dict[str, Any]) -> None:
    sampler = Sampler(interval=0.1)
    try:
        await phase_raw(args, procs, workdir / "raw", report)
        await phase_e2e_and_latency(args, procs, workdir / "e2e", sampler, report)
    finally:
        sampler.stop()
        report["recorder_peak_rss_mb"] = sampler.peak_mb.get("recorder", float("nan"))
        report["nats_peak_rss_mb"] = sampler.peak_mb.get("nats-server", float("nan"))
        report["rss_samples"] = sampler.samples


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=200_000, help="events per throughput phase (default 200000)")
    p.add_argument("--rate", type=float, default=2000.0, help="offered load of the latency phase, events/s")
    p.add_argument("--duration", type=float, default=10.0, help="seconds of the latency phase")
    p.add_argument("--tick-ms", type=float, default=5.0,
                   help="latency phase: every T ms, one publish_many of the events due (default 5); "
                        "0 = one Bus.publish per event on its own slot (costly publisher)")
    p.add_argument("--chunk", type=int, default=1000, help="events per publish_many call")
    p.add_argument("--concurrency", type=int, default=4, help="publish_many calls in flight (<= 4000 msgs pending)")
    p.add_argument("--poll", type=float, default=0.1, help="seconds between recorder health polls")
    p.add_argument("--e2e-timeout", type=float, default=900.0, help="give up on the recorder after this many s")
    p.add_argument("--py-spy", metavar="DIR", help="py-spy record the recorder during phases 2 and 3 into DIR")
    p.add_argument("--py-spy-rate", type=int, default=100, help="py-spy samples per second")
    p.add_argument("--recorder-args", default="-m services.recorder",
                   help="how the recorder is started after the interpreter (to try variants)")
    p.add_argument("--keep", action="store_true", help="keep the temp AAR_HOMEs (always kept on error)")
    p.add_argument("--gateway", action="store_true",
                   help="latency phase through the gateway, as a trainer identity (identity, size and budget checks)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    configure(json=False, level=os.environ.get("AAR_LOG_LEVEL", "WARNING"))  # library logs -> stderr
    workdir = Path(tempfile.mkdtemp(prefix="aar-bench-bus-"))
    say(f"workdir {workdir}; {os.cpu_count()} CPUs (publisher, nats-server and recorder share them)")
    report: dict[str, Any] = {"events": args.events}
    procs = Processes()
    ok = failed = False

    def on_term(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.perf_counter()
    try:
        asyncio.run(run(args, procs, workdir, report))
        ok = True
    except KeyboardInterrupt:
        say("interrupted: stopping everything")
        failed = False
    except Exception as exc:  # noqa: BLE001 - any failure of the run is reported; the exit code says so
        say(f"FAILED: {type(exc).__name__}: {exc}")
        failed = True
    finally:
        procs.close()
        report["wall_s"] = time.perf_counter() - t0
        if args.keep or (not ok and failed):
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    if not ok:
        return 1
    report["e2e_over_raw"] = report["e2e_per_s"] / report["raw_publish_per_s"]
    print_table(report)
    keys = ("raw_publish_per_s", "e2e_per_s", "e2e_over_raw", "p50_ms", "p99_ms", "p50_recorded_at_ms",
            "p99_recorded_at_ms", "max_ms", "ack_p50_ms", "ack_p99_ms", "recorder_peak_rss_mb", "nats_peak_rss_mb",
            "events", "offered_rate", "achieved_rate", "latency_events", "e2e_s", "e2e_publish_s", "raw_s",
            "recorder_us_per_event_full_batches", "recorder_rate_while_publishing", "recorder_rate_alone",
            "schedule_lag_p99_ms", "schedule_lag_max_ms", "p50_from_slot_ms", "p99_from_slot_ms",
            "p50_visible_ms", "p99_visible_ms", "latency_checkpoints", "latency_checkpoint_ms_max", "wal_bytes_after_burst",
            "burst_checkpoint_wait_s", "tick_ms", "latency_through_gateway", "wall_s")
    out = {k: (round(report[k], 3) if isinstance(report.get(k), float) else report.get(k)) for k in keys}
    out["e2e_pass"] = report["e2e_over_raw"] >= TARGET_E2E_OVER_RAW
    out["p99_pass"] = p99_pass(report)
    out["cpus"] = os.cpu_count()
    out["cpu_pct"] = report.get("cpu_pct")
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
