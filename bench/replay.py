"""Replay benchmark: rebuild of every read model from a large log, ``--speed max``
re-publish rate against raw JetStream publish, and each named audit query's latency.

    .venv/bin/python bench/replay.py [--events 1000000] [--publish-events 100000]

1. log      N events of bench/bus.py's realistic mix (EventFactory, schemas models) in one
            session, plus session/agent lifecycle events, written with EventStore.append
            in batches into a temp ``events.duckdb``.
2. rebuild  ``replay.log.rows_from_connection`` + ``replay.models.rebuild`` (pure Python),
            then the leaderboard and every read model's rows; wall time (target < 10 s).
            In a fresh interpreter, as ``aar replay SESSION`` runs, reading the rows as it
            does (without the payloads of tool calls and progress, which nothing reads).
3. queries  each named audit query (``replay.audits``) through the same guarded
            ``run_query`` as ``aar audit``: best of 3, ms (target < 500 ms each).
4. publish  ``--publish-events`` of the log: raw ``Bus.publish_many`` of pre-built events
            (bench/bus.py ``publish_all``) on one fresh nats-server, then
            ``replay.republish.publish_rows(speed=max)`` of the logged rows on another;
            ratio = republish rate / raw rate.

Progress on stderr; the last stdout line is JSON with rebuild_s, republish_over_raw,
slowest_query_ms and more.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

_spec = importlib.util.spec_from_file_location("bench_bus", _HERE / "bus.py")
assert _spec is not None and _spec.loader is not None
bench_bus = importlib.util.module_from_spec(_spec)
sys.modules["bench_bus"] = bench_bus
_spec.loader.exec_module(bench_bus)

from core.logs import configure
from replay.audits import QUERIES
from replay.log import rows_from_connection
from replay.models import rebuild
from replay.republish import publish_rows
from replay.timeline import UNREAD_FOLDED
from schemas import Event
from schemas.agent import AgentStarted
from schemas.session import AgentAssignment, Backend, SessionStarted
from services.recorder.audit import open_read_only, run_query
from services.recorder.store import EventStore, Recorded

say = bench_bus.say
TARGET_REBUILD_S = 10.0
TARGET_QUERY_MS = 500.0
VERIFICATIONS = ("chain_breaks",)  # named audits that verify the whole log rather than answer a question


def build_log(db: Path, n: int, session_id: str, batch: int = 50_000) -> dict[str, float]:
    factory = bench_bus.EventFactory(seed=7)
    head: list[Event[Any]] = [Event.create(SessionStarted(name="bench", backend=Backend.CLAUDE, dataset="rotten_tomatoes",
                                        weak_model="minilm", strong_model="mpnet",
                                        agents=[AgentAssignment(agent_id=a, direction=f"direction {a}")
                                                for a in factory.agents]),
                         session_id=session_id, source="orchestrator")]
    head += [Event.create(AgentStarted(agent_id=a, direction=f"direction {a}", backend=Backend.CLAUDE, model="claude"),
                          session_id=session_id, source=a) for a in factory.agents]
    store = EventStore(db)
    gen_s = ins_s = 0.0
    seq = 0
    try:
        store.record([Recorded(e, (seq := seq + 1)) for e in head])
        left = n - len(head)
        while left > 0:
            t = time.perf_counter()
            events = factory.events(min(batch, left), session_id)
            gen_s += time.perf_counter() - t
            t = time.perf_counter()
            store.record([Recorded(e, (seq := seq + 1)) for e in events])
            ins_s += time.perf_counter() - t
            left -= len(events)
            say(f"  logged {n - left:,} of {n:,}")
        # what the recorder does once idle: catch the typed projections up, checkpoint
        t = time.perf_counter()
        store.refresh_projections()
        project_s = time.perf_counter() - t
        store.checkpoint()
    finally:
        store.close()
    return {"generate_s": gen_s, "insert_s": ins_s, "project_s": project_s}


def measure_rebuild(db: Path, session_id: str) -> dict[str, Any]:
    con = open_read_only(db)
    try:
        t0 = time.perf_counter()
        rows = rows_from_connection(con, session_id, skip_payloads=UNREAD_FOLDED)  # as `aar replay SESSION`
        t1 = time.perf_counter()
        models = rebuild(rows, session_id)
        board = models.leaderboard()
        out = models.as_dict()
        t2 = time.perf_counter()
    finally:
        con.close()
    return {"rows": len(rows), "load_s": t1 - t0, "apply_s": t2 - t1, "rebuild_s": t2 - t0,
            "ideas": len(out["ideas"]), "experiments": len(out["experiments"]), "scores": len(out["scores"]),
            "posts": len(out["forum_posts"]), "leaderboard": len(board)}


def measure_rebuild_fresh(db: Path, session_id: str) -> dict[str, Any]:
    """``measure_rebuild`` in a fresh interpreter, as ``aar replay`` runs: not in this
    process, whose heap still holds the debris of generating the log."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--rebuild-only", str(db), session_id],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rebuild failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_queries(db: Path, session_id: str) -> dict[str, float]:
    con = open_read_only(db)
    out = {}
    try:
        for q in QUERIES.values():
            best = float("inf")
            for _ in range(3):
                t = time.perf_counter()
                run_query(con, *q.bound(session_id))
                best = min(best, time.perf_counter() - t)
            out[q.name] = best * 1000
            say(f"  {q.name}: {best * 1000:.0f} ms")
    finally:
        con.close()
    return out


async def measure_publish(rows: list[Any], n: int, workdir: Path) -> dict[str, float]:
    procs = bench_bus.Processes()
    try:
        srv = procs.server(workdir / "nats-raw")
        bus = await bench_bus.connect_admin(srv, "bench-replay-raw")
        events = bench_bus.EventFactory(seed=3).events(n, "s-bench-raw")
        raw_s = await bench_bus.publish_all(bus, events, 1000, 4)
        await bus.close()
        srv.stop()
        say(f"  raw: {n:,} in {raw_s:.2f}s = {n / raw_s:,.0f}/s")
        srv = procs.server(workdir / "nats-replay")
        bus = await bench_bus.connect_admin(srv, "bench-replay")
        rep_s = await publish_rows(bus, rows[:n], "s-bench-replayed", None)
        await bus.close()
        say(f"  republish --speed max: {n:,} in {rep_s:.2f}s = {n / rep_s:,.0f}/s")
    finally:
        procs.close()
    return {"raw_publish_per_s": n / raw_s, "republish_per_s": n / rep_s}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--events", type=int, default=1_000_000, help="events in the synthetic log (default 1000000)")
    p.add_argument("--publish-events", type=int, default=100_000, help="events in each publish phase")
    p.add_argument("--keep", action="store_true", help="keep the temp folder")
    p.add_argument("--rebuild-only", nargs=2, metavar=("DB", "SESSION"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rebuild_only:  # the child of measure_rebuild_fresh
        print(json.dumps(measure_rebuild(Path(args.rebuild_only[0]), args.rebuild_only[1])))
        return 0
    configure(json=False, level=os.environ.get("AAR_LOG_LEVEL", "WARNING"))
    workdir = Path(tempfile.mkdtemp(prefix="aar-bench-replay-"))
    sid = "s-bench-replay"
    report: dict[str, Any] = {"events": args.events, "cpus": os.cpu_count()}
    t0 = time.perf_counter()
    try:
        db = workdir / "events.duckdb"
        say(f"log: {args.events:,} events into {db}")
        report.update(build_log(db, args.events, sid))
        say("rebuild")
        r = measure_rebuild_fresh(db, sid)
        r.pop("rows")
        report.update(r)
        say(f"  rebuild {r['rebuild_s']:.2f}s (load {r['load_s']:.2f}s + apply {r['apply_s']:.2f}s)")
        say("named queries")
        q = measure_queries(db, sid)
        report["query_ms"] = {k: round(v, 1) for k, v in q.items()}
        # The target is for the queries that answer questions; chain_breaks re-hashes the
        # whole log (a verification, like `aar verify-log`): reported on its own.
        answers = {k: v for k, v in q.items() if k not in VERIFICATIONS}
        report["slowest_query_ms"] = max(answers.values())
        report["slowest_query"] = max(answers, key=answers.__getitem__)
        report["chain_check_ms"] = round(sum(q.get(k, 0.0) for k in VERIFICATIONS), 1)
        con = open_read_only(db)
        try:  # whole events (payloads included) to re-publish
            rows = rows_from_connection(con, sid)[: args.publish_events]
        finally:
            con.close()
        n = len(rows)
        say(f"publish: {n:,} events raw vs republish")
        report.update(asyncio.run(measure_publish(rows, n, workdir)))
        report["publish_events"] = n
        report["republish_over_raw"] = report["republish_per_s"] / report["raw_publish_per_s"]
    finally:
        report["wall_s"] = time.perf_counter() - t0
        if args.keep:
            say(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    report["rebuild_pass"] = report["rebuild_s"] < TARGET_REBUILD_S
    report["queries_pass"] = report["slowest_query_ms"] < TARGET_QUERY_MS
    for k, v in report["query_ms"].items():
        print(f"{k:<24} {v:>8.1f} ms")
    print(f"rebuild of {args.events:,} events: {report['rebuild_s']:.2f}s "
          f"({'PASS' if report['rebuild_pass'] else 'FAIL'} < {TARGET_REBUILD_S:g}s); slowest query "
          f"{report['slowest_query_ms']:.0f} ms ({'PASS' if report['queries_pass'] else 'FAIL'} < {TARGET_QUERY_MS:g} ms); "
          f"republish/raw {report['republish_over_raw']:.2f}; chain check {report['chain_check_ms']:.0f} ms")
    print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in report.items()}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
