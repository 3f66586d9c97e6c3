"""Workspace benchmark: how long an agent waits for a quick experiment, with an
experiment running beside it.

    .venv/bin/python -m bench.agents [--runs 15] [--rows 1000]

A quick experiment: ``naive_soft`` (5 epochs) trained on the train part of ``--rows``
rows of B (768-d features) and its agreement with the held-back weak labels, as
``run_code`` runs it. Meanwhile a background thread runs sandboxed 5-seed experiments
(2,000 training rows, ``naive_soft``) back to back, as a trainer would.

- ``warm``: what the trainer does: when a run is handed to a warm sandbox, the next
  sandbox starts beside it, ready for the next request (``--think-s`` later: an agent
  reads its result first); measured from the request to the result. Under load a start
  takes about 3 s of wall clock on 2 cores, so requests closer than that find the next
  sandbox still starting (try ``--think-s 1``);
- ``cold`` (the baseline, same run): a fresh sandbox per request, its start included.

Both include the sandbox (bubblewrap, seccomp, cgroups), the runner's imports, the
method and the result's return; not the bus hop (a few milliseconds: one scorer
decision and two events). Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from collections.abc import Sequence

import numpy as np

from trainer.methods import MethodContext
from trainer.sandbox import SandboxLimits, run_untrusted, sandbox_problem
from trainer.workspace import WorkspaceSandbox, workspace_inputs

QUICK = """
from trainer.methods import run_method
p = run_method("naive_soft", ctx.method_context({"epochs": 5}))
result = {"agreement": ctx.agreement(p)}
"""
EXPERIMENT = "from trainer.methods import run_method\ndef run(ctx):\n    return run_method('naive_soft', ctx)\n"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def synthetic(rows: int, dim: int = 768, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, dim)).astype(np.float32)
    weak = 1.0 / (1.0 + np.exp(-(x @ rng.normal(size=dim) / np.sqrt(dim) * 3)))
    return x, weak, [f"text {i}" for i in range(rows)]


def background(stop: threading.Event, done: list[float]) -> None:
    x, weak, texts = synthetic(2000, seed=1)
    ctxs = [MethodContext(x, weak, x[:1000], texts, texts[:1000], seed=s) for s in range(5)]
    while not stop.is_set():
        started = time.monotonic()
        result = run_untrusted(EXPERIMENT, ctxs, limits=SandboxLimits(wall_s=600))
        if not result.ok:
            log(f"background experiment failed: {result.error}")
            return
        done.append(time.monotonic() - started)


def measure(mode: str, runs: int, rows: int, think_s: float) -> list[float]:
    x, weak, texts = synthetic(rows)
    inputs = workspace_inputs(x, texts, weak, x[:200], texts[:200])
    times = []
    box = WorkspaceSandbox(inputs) if mode == "warm" else None
    for i in range(runs):
        if mode == "warm":
            time.sleep(think_s)  # an agent reads its last result before the next run
            assert box is not None
            started = time.monotonic()
            current, box = box, WorkspaceSandbox(inputs)  # the next one starts beside (as the trainer does)
            result = current.run(QUICK)
        else:
            started = time.monotonic()
            result = WorkspaceSandbox(inputs).run(QUICK)
        elapsed = time.monotonic() - started
        if not result.ok:
            raise RuntimeError(f"{mode} run {i} failed: {result.error}\n{result.stderr[-2000:]}")
        times.append(elapsed)
        log(f"  {mode} run {i + 1}/{runs}: {elapsed:.2f} s (method {result.method_s or 0:.2f} s)")
    if box is not None:
        box.close()
    return times


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--think-s", type=float, default=3.0,
                        help="seconds between a result and the next request (an LLM turn takes longer)")
    args = parser.parse_args(argv)
    if (problem := sandbox_problem()) is not None:
        log(f"no sandbox here: {problem}")
        return 2
    stop, experiments = threading.Event(), list[float]()
    worker = threading.Thread(target=background, args=(stop, experiments), daemon=True)
    worker.start()
    time.sleep(3.0)  # the experiment is under way
    report: dict[str, float | int] = {"runs": args.runs, "rows": args.rows, "think_s": args.think_s}
    try:
        for mode in ("warm", "cold"):
            log(f"{mode}: {args.runs} quick experiments on {args.rows} rows, an experiment running beside them")
            times = measure(mode, args.runs, args.rows, args.think_s)
            report[f"{mode}_p50_s"] = round(statistics.median(times), 3)
            report[f"{mode}_p95_s"] = round(quantile(times, 0.95), 3)
    finally:
        stop.set()
        worker.join(600)
    report["workspace_p50_s"], report["workspace_p95_s"] = report["warm_p50_s"], report["warm_p95_s"]
    report["cold_over_warm_p50"] = round(float(report["cold_p50_s"]) / float(report["warm_p50_s"]), 2)
    report["experiments_beside"] = len(experiments)
    report["experiment_s_median"] = round(statistics.median(experiments), 2) if experiments else 0.0
    report["target_p50_s"] = 3.0
    report["target_met"] = int(float(report["workspace_p50_s"]) < 3.0)
    print(f"{'':12}{'p50 s':>8}{'p95 s':>8}")
    for mode in ("warm", "cold"):
        print(f"{mode:12}{report[f'{mode}_p50_s']:>8}{report[f'{mode}_p95_s']:>8}")
    print(f"cold / warm p50: {report['cold_over_warm_p50']}x; {len(experiments)} 5-seed experiments ran beside "
          f"(median {report['experiment_s_median']} s); target p50 < 3 s: "
          f"{'met' if report['target_met'] else 'NOT met'}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
