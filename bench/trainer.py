"""Trainer benchmark: feature extraction throughput against a bare transformers loop,
time per 5-seed experiment on cached features, scorer latency.

    .venv/bin/python bench/trainer.py [--backbone minilm|mpnet] [--n 256] [--seeds 5]
                                      [--session-strong minilm|mpnet] [--skip-session]

(a) features   The same ``--n`` texts (a fixed random sample of the dataset's pool) are
               embedded by ``trainer.features.embed_texts`` (no cache; sorts by length,
               ``inference_mode``) and by a bare loop: ``AutoModel`` + tokenizer, texts in
               their given order, same batch size, same ``max_length``, mean pooling
               under ``torch.no_grad``. Both run on the same thread count after a warm-up
               batch; models are loaded before timing. Each is timed ``--repeats`` times,
               alternating, and the median is kept. ``feature_over_bare`` = trainer
               sentences/s / bare sentences/s (> 1: the trainer is faster). The two
               outputs are compared (``max_abs_diff``): they must be the same features.
(b) experiment ``trainer.pipeline.prepare`` (weak ``--weak``, strong ``--backbone``,
               ``--sizes``) fills the feature cache untimed; then, on a fresh
               ``Prepared`` loaded from the cache, the seeds' weak teachers are trained
               (``teachers_5seeds_s``, batched: in a session the scorer does this once
               and ships the labels) and the built-in ``naive_soft`` runs over
               ``--seeds`` seeds as the trainer runs it, every seed at once with the
               heads trained as one batched model (``trainer.methods.seeds``):
               ``experiment_5seeds_s``. The baseline, in the same run, on the same
               inputs: the seeds one after the other (``sequential_5seeds_s``); the
               two must give the same predictions (``batched_max_abs_diff``). Then
               the same method as agent code in bubblewrap: one sandbox for the whole
               job (``sandboxed_experiment_s``, the trainer's path) against one sandbox
               per seed (``sandboxed_per_seed_s``), with the sandbox's own cost
               (start, imports, inputs, result: wall time minus ``run(ctx)``).
               Figures are scaled to 5 seeds when ``--seeds`` differs.
(c) scorer     ``experiment.finished`` -> ``score.published`` latency in a real session:
               ``aar up --agents 2 --max-experiments 8 --strong-model <--session-strong>
               --sizes 20,400,400,200 --seeds 5 --session bench`` (plus ``--max-wall``
               under ``--session-timeout``) runs as a subprocess in a fresh temporary
               AAR_HOME (only fetched backbones are reused, through a symlink). Then, from
               its event log (DuckDB, read-only), every ``score.published`` is joined to the
               ``experiment.finished`` it answers (its ``causation_id``) and the difference
               of their ``time`` columns is taken. ``score_latency_ms`` is the p50, with
               ``score_latency_p95_ms``, max and ``score_latency_n``. The latency includes
               the publish and delivery of ``experiment.finished`` (and any queueing in the
               scorer's consumer), the scorer fetching the predictions artifact over NATS,
               scoring all seeds and building ``score.published``. Each ``time`` is stamped
               when its event is created, just before it is published, so the scorer's own
               publish round trip falls outside the figure. The two times come from two
               processes (trainer, scorer) on the same host's clock. When the
               session fails or yields no pair: null and the reason, never a made-up
               number. ``--skip-session`` skips (c).

Progress goes to stderr; readable figures and then ONE JSON line go to stdout.
Features are cached in ``AAR_HOME/cache/features`` (default ./.aar), like the trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# ``python bench/trainer.py`` puts bench/ first on sys.path, where this very file
# would shadow the ``trainer`` package: run against the repository root instead.
_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np

from trainer import models, w2s
from trainer._util import usable_cpus
from trainer.data import SplitSizes, load_pool
from trainer.features import embed_texts
from trainer.methods import MethodContext, run_method
from trainer.methods.seeds import run_seeds
from trainer.paired import paired_difference
from trainer.pipeline import DEFAULT_WEAK, baselines, method_inputs, prepare

METHOD = "naive_soft"
PAIRED_WITH = "aux_conf"  # compared with METHOD, paired, for paired_se_vs_naive


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def sample_texts(dataset: str, n: int, seed: int = 0) -> list[str]:
    texts, _ = load_pool(dataset)
    if n > len(texts):
        raise SystemExit(f"--n {n} is more than the {len(texts)} texts of {dataset}")
    rows = np.random.default_rng(seed).choice(len(texts), size=n, replace=False)
    return [texts[i] for i in rows]


# --------------------------------------------------------------------------- (a) features


class BareEncoder:
    """The baseline: what one writes by hand with transformers, nothing else."""

    def __init__(self, path: Path, max_length: int) -> None:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()
        self.tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = transformers.AutoModel.from_pretrained(str(path), local_files_only=True).eval()
        self.max_length = max_length

    def embed(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        import torch

        out = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                out.append(((hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)).numpy())
        return np.concatenate(out).astype(np.float32)


def bench_features(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    threads = usable_cpus()
    torch.set_num_threads(threads)
    texts = sample_texts(args.dataset, args.n)
    path = models.model_path(args.backbone, progress=True)  # fetches mpnet on first use
    length = models.max_length(args.backbone, path)
    log(f"(a) {args.backbone}: {len(texts)} texts from {args.dataset}, batch {args.batch_size}, "
        f"max_length {length}, {threads} threads, {args.repeats} repeats")

    def trainer_run(items: Sequence[str]) -> np.ndarray:
        return embed_texts(args.backbone, items, batch_size=args.batch_size, device="cpu", progress=False,
                           threads=threads)

    bare = BareEncoder(path, length)
    trainer_run(texts[: args.batch_size])  # loads the trainer's model and warms both up
    bare.embed(texts[: args.batch_size], args.batch_size)

    # Diagnostic: the bare loop on texts sorted by token length (longest first, like the
    # trainer), which shows how much of the ratio is padding saved by the sort.
    lengths = [len(ids) for ids in bare.tokenizer(texts, truncation=True, max_length=length)["input_ids"]]
    by_length = [texts[i] for i in np.argsort(-np.asarray(lengths), kind="stable")]

    times: dict[str, list[float]] = {"trainer": [], "bare": [], "bare_sorted": []}
    outputs: dict[str, np.ndarray] = {}
    runners = {
        "trainer": trainer_run,
        "bare": lambda items: bare.embed(items, args.batch_size),
        "bare_sorted": lambda items: bare.embed(by_length, args.batch_size),
    }
    for repeat in range(args.repeats):
        order = ("bare", "trainer", "bare_sorted")
        for name in order[repeat % 3 :] + order[: repeat % 3]:  # rotate: no order bias
            started = time.perf_counter()
            outputs[name] = runners[name](texts)
            times[name].append(time.perf_counter() - started)
            log(f"    {name:11s} repeat {repeat + 1}: {len(texts) / times[name][-1]:7.1f} sentences/s")
    trainer_s, bare_s = statistics.median(times["trainer"]), statistics.median(times["bare"])
    sorted_s = statistics.median(times["bare_sorted"])
    diff = float(np.abs(outputs["trainer"] - outputs["bare"]).max())
    return {
        "backbone": args.backbone,
        "n_texts": len(texts),
        "batch_size": args.batch_size,
        "max_length": length,
        "threads": threads,
        "repeats": args.repeats,
        "feature_sentences_per_s": len(texts) / trainer_s,
        "bare_sentences_per_s": len(texts) / bare_s,
        "bare_sorted_sentences_per_s": len(texts) / sorted_s,
        "feature_over_bare": bare_s / trainer_s,
        "feature_s": times["trainer"],
        "bare_s": times["bare"],
        "bare_sorted_s": times["bare_sorted"],
        "mean_tokens": float(np.mean(lengths)),
        "max_abs_diff": diff,
    }


# --------------------------------------------------------------------------- (b) experiment


def bench_experiment(args: argparse.Namespace) -> dict[str, Any]:
    a, b, dev, test = (int(x) for x in args.sizes.split(","))
    sizes = SplitSizes(a, b, dev, test)
    seeds = tuple(range(args.seeds))
    log(f"(b) {METHOD} over {len(seeds)} seeds: {args.dataset} {args.weak} -> {args.backbone}, sizes {args.sizes}")
    started = time.perf_counter()
    prepare(args.dataset, weak=args.weak, strong=args.backbone, sizes=sizes, eval_splits=("dev",), progress=True)
    fill_s = time.perf_counter() - started  # feature extraction where the cache was cold

    started = time.perf_counter()
    prep = prepare(args.dataset, weak=args.weak, strong=args.backbone, sizes=sizes, eval_splits=("dev",),
                   progress=False)
    load_s = time.perf_counter() - started  # a fresh Prepared: no teacher cached yet

    gold = prep.dataset.split("dev").labels
    started = time.perf_counter()
    prep.teach(seeds)  # every seed's weak teacher, batched (in a session: once, by the scorer)
    teachers_s = time.perf_counter() - started
    ctxs = [method_inputs(prep, seed, "dev") for seed in seeds]
    # Baseline, same run: the seeds one after the other (the trainer before batching).
    started = time.perf_counter()
    one_by_one = [run_method(METHOD, ctx) for ctx in ctxs]
    sequential_s = time.perf_counter() - started
    # The trainer's path (services/trainer/jobs.py): every seed at once, heads batched.
    started = time.perf_counter()
    batched = run_seeds(lambda ctx: run_method(METHOD, ctx), ctxs)
    total = time.perf_counter() - started
    same = max(float(np.abs(a - b).max()) for a, b in zip(one_by_one, batched, strict=True))
    accs = [w2s.accuracy(p, gold) for p in batched]
    correct = [w2s.correct(p, gold) for p in batched]
    sandbox = bench_sandboxed(ctxs, args.skip_sandbox)
    # Precision (untimed): the dev PGR's standard error, and that of a paired difference
    # (trainer/paired.py) between a second built-in and naive_soft on the same rows and seeds.
    base = baselines(prep, tuple(seeds), "dev")
    score = w2s.pgr(accs, base.weak_acc, base.ceiling_acc, n_eval=base.n_eval)
    other = np.stack([w2s.correct(p, gold) for p in run_seeds(lambda c: run_method(PAIRED_WITH, c), ctxs)])
    paired = paired_difference(other, np.stack(correct), base.weak_correct, base.ceiling_correct)
    log(f"    dev PGR {score.value} ± {score.se}; {PAIRED_WITH} - {METHOD}: PGR {paired.pgr} ± {paired.pgr_se}")
    return {
        "method": METHOD,
        "weak": args.weak,
        "strong": args.backbone,
        "sizes": sizes.as_dict(),
        "seeds": len(seeds),
        "experiment_s": total,
        "experiment_5seeds_s": total * 5 / len(seeds),
        "sequential_5seeds_s": sequential_s * 5 / len(seeds),
        "batched_over_sequential": sequential_s / total,
        "batched_max_abs_diff": same,
        "teachers_5seeds_s": teachers_s * 5 / len(seeds),
        **sandbox,
        "features_fill_s": fill_s,
        "features_cached_load_s": load_s,
        "acc_mean": float(np.mean(accs)),
        "dev_pgr": score.value,
        "dev_pgr_se": score.se,  # None: the weak/ceiling gap is within noise (PGR is null)
        "gap": float(np.mean(base.ceiling_acc) - np.mean(base.weak_acc)),
        "paired_with": PAIRED_WITH,
        "paired_pgr_diff": paired.pgr,
        "paired_se_vs_naive": paired.pgr_se,
        "paired_acc_se_vs_naive": paired.accuracy_se,
    }


# Agent code as an agent writes it: the built-in, called from a module run in the sandbox.
AGENT_METHOD = f"""
from trainer.methods import MethodContext, run_method
from trainer.methods.seeds import run_seeds

def run(ctx):
    return run_method({METHOD!r}, ctx)
"""


def bench_sandboxed(ctxs: list[MethodContext], skip: bool) -> dict[str, Any]:
    """The same experiment as agent code in bubblewrap: one sandbox for every seed (the
    trainer's path), against one sandbox per seed (before), in the same run."""
    from trainer.sandbox import run_untrusted, sandbox_problem

    problem = "--skip-sandbox" if skip else sandbox_problem()
    if problem is not None:
        return {"sandboxed_experiment_s": None, "sandbox_note": f"not measured: {problem}"}
    log(f"    sandboxed: {len(ctxs)} seeds in one sandbox, then one sandbox per seed")
    started = time.perf_counter()
    job = run_untrusted(AGENT_METHOD, ctxs)
    one_s = time.perf_counter() - started
    if not job.ok:
        return {"sandboxed_experiment_s": None, "sandbox_note": f"not measured: the job failed: {job.error}"}
    started = time.perf_counter()
    per_seed = [run_untrusted(AGENT_METHOD, ctx) for ctx in ctxs]
    per_seed_s = time.perf_counter() - started
    k = 5 / len(ctxs)
    return {
        "sandboxed_experiment_s": one_s * k,
        "sandboxed_per_seed_s": per_seed_s * k,
        "sandboxed_one_over_per_seed": per_seed_s / one_s,
        "sandbox_overhead_s": one_s - (job.method_s or 0.0),  # start, imports, inputs, result
        "sandbox_method_s": job.method_s,
        "sandbox_overhead_per_seed_s": sum(r.runtime_s - (r.method_s or 0.0) for r in per_seed) / len(per_seed),
        "sandbox_note": "naive_soft called from agent code in bubblewrap; overhead = wall time minus run(ctx)",
    }


# --------------------------------------------------------------------------- (c) scorer

SESSION_NAME = "bench"
SESSION_ARGS = ("--agents", "2", "--max-experiments", "8", "--sizes", "20,400,400,200", "--seeds", "5")
LATENCY_INCLUDES = ("the trainer's publish of experiment.finished and its delivery to the scorer's consumer "
                    "(queueing behind other events included), the scorer fetching the predictions artifact "
                    "over NATS (re-hashed), scoring every seed against gold and building score.published; "
                    "both times are stamped when each event is created, just before its publish, so the "
                    "scorer's own publish round trip is not in it; the two times come from two processes "
                    "(trainer, scorer) on the same host's clock")

# Each score.published joined to the experiment.finished it answers (causation_id).
PAIRS_SQL = """
SELECT f.id AS finished_id, s.id AS score_id, s.payload->>'experiment_id' AS experiment_id,
       date_diff('microsecond', f.time, s.time) / 1000.0 AS latency_ms
FROM events s JOIN events f ON s.causation_id = f.id
WHERE s.type = 'score.published' AND f.type = 'experiment.finished' AND s.session_id = ?
ORDER BY s.time
"""


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no output)"
    return "\n".join(text[-lines:]) or "(no output)"


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 60.0) -> None:
    """Stop the ``aar up`` we started: SIGINT (it shuts its services down), then SIGKILL its group."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=grace_s)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()


def latencies(db: Path, session_name: str) -> tuple[str | None, list[float], dict[str, Any]]:
    """(session id, latencies in ms, facts about the session) read from the log, read-only."""
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute(
            "SELECT session_id FROM events WHERE type = 'session.started' AND payload->>'name' = ? "
            "ORDER BY time DESC LIMIT 1", [session_name]).fetchone()
        if row is None:  # a fresh home holds one session whatever its name field is called
            row = con.execute("SELECT session_id FROM events WHERE type = 'session.started' "
                              "ORDER BY time DESC LIMIT 1").fetchone()
        if row is None:
            return None, [], {}
        session_id = row[0]
        ms = [float(r[3]) for r in con.execute(PAIRS_SQL, [session_id]).fetchall()]
        counts = dict(con.execute(
            "SELECT type, count(*) FROM events WHERE session_id = ? AND type IN "
            "('experiment.finished', 'experiment.failed', 'score.published', 'score.withheld') GROUP BY 1",
            [session_id]).fetchall())
        ended = con.execute("SELECT payload->>'reason' FROM events WHERE session_id = ? AND type = 'session.ended' "
                            "LIMIT 1", [session_id]).fetchone()
        return session_id, ms, {"counts": counts, "end_reason": ended[0] if ended else None}
    finally:
        con.close()


def bench_scorer(args: argparse.Namespace) -> dict[str, Any]:
    """A real ``aar up`` session in a fresh AAR_HOME, then latencies from its event log.
    Null and the reason whenever there is no measurement: never a made-up figure."""
    none = {"score_latency_ms": None, "score_latency_p95_ms": None, "score_latency_n": 0}
    if args.skip_session:
        return {**none, "score_latency_note": "not measured: --skip-session"}
    tmp = Path(tempfile.mkdtemp(prefix="aar-bench-"))
    home = tmp / "aar"
    (home / "cache").mkdir(parents=True)
    # Fetched backbones (mpnet) are reused from the usual AAR_HOME rather than fetched again;
    # everything else (log, artifacts, features, NATS store) starts empty.
    models_dir = Path(os.environ.get("AAR_HOME", ROOT / ".aar")).expanduser().resolve() / "cache" / "models"
    if models_dir.is_dir():
        (home / "cache" / "models").symlink_to(models_dir, target_is_directory=True)
    cmd = [sys.executable, "-m", "aar.cli", "up", *SESSION_ARGS, "--strong-model", args.session_strong,
           "--session", SESSION_NAME, "--max-wall", str(max(60, args.session_timeout - 90))]
    shown = "aar up " + " ".join(cmd[4:])
    out_path = tmp / "aar-up.out"
    log(f"(c) {shown}  (AAR_HOME={home}, output in {out_path}, timeout {args.session_timeout} s)")
    started = time.perf_counter()
    failure: str | None = None
    with out_path.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "AAR_HOME": str(home)}, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=args.session_timeout)
        except subprocess.TimeoutExpired:
            _stop(proc)
            rc = proc.returncode
            failure = f"session did not finish within {args.session_timeout} s (stopped)"
        except BaseException:
            _stop(proc)
            raise
    session_s = time.perf_counter() - started
    if failure is None and rc != 0:
        failure = f"aar up exited with {rc}"
    details: dict[str, Any] = {"command": shown, "session_s": round(session_s, 1), "aar_home": str(home),
                               "strong_model": args.session_strong}
    session_id: str | None = None
    ms: list[float] = []
    facts: dict[str, Any] = {}
    if failure is None:
        try:
            session_id, ms, facts = latencies(home / "events.duckdb", SESSION_NAME)
        except Exception as exc:  # noqa: BLE001 - reported, never replaced by a number
            failure = f"could not read the event log: {type(exc).__name__}: {exc}"
        if failure is None and session_id is None:
            failure = "no session.started in the event log"
        elif failure is None and not ms:
            failure = f"no experiment.finished -> score.published pair in the log ({facts.get('counts')})"
    details.update(session_id=session_id, **facts)
    if failure is not None:
        log(f"(c) failed: {failure}\n--- last lines of aar up ({out_path}) ---\n{_tail(out_path)}")
        return {**none, "score_latency_note": f"not measured: {failure}; aar up output kept in {out_path}",
                "scorer": details}
    p50 = statistics.median(ms)
    p95 = float(np.percentile(ms, 95))
    details.update(latencies_ms=[round(x, 1) for x in ms], p50_ms=round(p50, 1), p95_ms=round(p95, 1),
                   max_ms=round(max(ms), 1), min_ms=round(min(ms), 1), n=len(ms))
    if not args.keep_session_home:
        shutil.rmtree(tmp, ignore_errors=True)
        details["aar_home"] = None
    return {
        "score_latency_ms": round(p50, 1),
        "score_latency_p95_ms": round(p95, 1),
        "score_latency_max_ms": round(max(ms), 1),
        "score_latency_n": len(ms),
        "score_latency_note": f"experiment.finished -> score.published, p50 of {len(ms)} pairs; includes "
                              + LATENCY_INCLUDES,
        "scorer": details,
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default="minilm", choices=["minilm", "mpnet"],
                   help="backbone of (a) and the strong side of (b) (default minilm: fast)")
    p.add_argument("--weak", default=DEFAULT_WEAK, help="weak teacher's backbone in (b)")
    p.add_argument("--n", type=int, default=256, help="texts embedded in (a)")
    p.add_argument("--seeds", type=int, default=5, help="seeds in (b); the figure is scaled to 5")
    p.add_argument("--dataset", default="rotten_tomatoes")
    p.add_argument("--sizes", default="1000,1000,1000,1000", help="A,B,dev,test splits in (b)")
    p.add_argument("--batch-size", type=int, default=32, help="both encoders in (a) (the trainer's default)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs of each encoder in (a); the median is kept")
    p.add_argument("--skip-session", action="store_true", help="skip (c), the aar up session")
    p.add_argument("--skip-sandbox", action="store_true", help="skip the sandboxed experiment of (b)")
    p.add_argument("--session-strong", default="minilm", choices=["minilm", "mpnet"],
                   help="strong model of the (c) session (default minilm: no MPNet fetch or extraction)")
    p.add_argument("--session-timeout", type=int, default=900,
                   help="seconds before the (c) session is stopped and reported as failed")
    p.add_argument("--keep-session-home", action="store_true",
                   help="keep the temporary AAR_HOME of (c) (it is kept anyway when the session fails)")
    args = p.parse_args(argv)
    if args.n < 1 or args.seeds < 1 or args.repeats < 1 or args.batch_size < 1:
        p.error("--n, --seeds, --repeats and --batch-size must be >= 1")
    if args.session_timeout < 120:
        p.error("--session-timeout must be >= 120")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    feats = bench_features(args)
    exp = bench_experiment(args)
    scorer = bench_scorer(args)

    print(f"trainer bench: {platform.processor() or platform.machine()}, {usable_cpus()} usable cores, "
          f"AAR_HOME={os.environ.get('AAR_HOME', '.aar')}")
    print(f"(a) features, {feats['backbone']}, {feats['n_texts']} texts, batch {feats['batch_size']}, "
          f"{feats['threads']} threads (median of {feats['repeats']})")
    print(f"    trainer.features.embed_texts   {feats['feature_sentences_per_s']:8.1f} sentences/s")
    print(f"    bare transformers loop         {feats['bare_sentences_per_s']:8.1f} sentences/s")
    print(f"    bare loop, texts sorted by length {feats['bare_sorted_sentences_per_s']:5.1f} sentences/s   "
          f"(diagnostic; {feats['mean_tokens']:.0f} tokens per text on average)")
    print(f"    feature_over_bare              {feats['feature_over_bare']:8.2f}x   "
          f"(max |difference| of the features {feats['max_abs_diff']:.1e})")
    print(f"(b) {exp['method']}, {exp['weak']} -> {exp['strong']}, {exp['seeds']} seeds on cached features")
    print(f"    experiment_5seeds_s            {exp['experiment_5seeds_s']:8.2f} s   "
          f"(seeds batched; one by one {exp['sequential_5seeds_s']:.2f} s: x{exp['batched_over_sequential']:.2f}, "
          f"max |diff| {exp['batched_max_abs_diff']:.1e}; dev acc {exp['acc_mean']:.4f})")
    print(f"    teachers_5seeds_s              {exp['teachers_5seeds_s']:8.2f} s   "
          "(weak teachers, batched; once per session, by the scorer)")
    if exp["sandboxed_experiment_s"] is None:
        print(f"    sandboxed_experiment_s: null   {exp['sandbox_note']}")
    else:
        print(f"    sandboxed_experiment_s         {exp['sandboxed_experiment_s']:8.2f} s   "
              f"(one sandbox per job; one per seed {exp['sandboxed_per_seed_s']:.2f} s: "
              f"x{exp['sandboxed_one_over_per_seed']:.2f}; sandbox start + imports {exp['sandbox_overhead_s']:.2f} s "
              f"per job, {exp['sandbox_overhead_per_seed_s']:.2f} s per seed before)")
    print(f"    dev PGR {exp['dev_pgr']} ± {exp['dev_pgr_se']} (gap {exp['gap']:.3f}); "
          f"{exp['paired_with']} - {exp['method']}: PGR {exp['paired_pgr_diff']} ± {exp['paired_se_vs_naive']} paired")
    print(f"    cached features load           {exp['features_cached_load_s']:8.2f} s   "
          f"(first prepare, filling the cache where cold: {exp['features_fill_s']:.1f} s)")
    if scorer["score_latency_ms"] is None:
        print(f"(c) score_latency_ms: null   {scorer['score_latency_note']}")
    else:
        d = scorer["scorer"]
        print(f"(c) scorer, session {d['session_id']} ({d['strong_model']}; {d['session_s']:.0f} s, "
              f"ended: {d['end_reason']}; events {d['counts']})")
        print(f"    score_latency_ms (p50)         {scorer['score_latency_ms']:8.1f} ms   "
              f"(p95 {scorer['score_latency_p95_ms']:.1f} ms, max {scorer['score_latency_max_ms']:.1f} ms, "
              f"n {scorer['score_latency_n']})")
        print(f"    experiment.finished -> score.published; includes {LATENCY_INCLUDES}")
    print(f"total {time.perf_counter() - started:.0f} s")
    out = {
        "feature_over_bare": round(feats["feature_over_bare"], 3),
        "feature_sentences_per_s": round(feats["feature_sentences_per_s"], 1),
        "bare_sentences_per_s": round(feats["bare_sentences_per_s"], 1),
        "bare_sorted_sentences_per_s": round(feats["bare_sorted_sentences_per_s"], 1),
        "experiment_5seeds_s": round(exp["experiment_5seeds_s"], 3),
        "sequential_5seeds_s": round(exp["sequential_5seeds_s"], 3),
        "sandboxed_experiment_s": None if exp["sandboxed_experiment_s"] is None
        else round(exp["sandboxed_experiment_s"], 3),
        "dev_pgr_se": exp["dev_pgr_se"],
        "paired_se_vs_naive": exp["paired_se_vs_naive"],
        "score_latency_ms": scorer["score_latency_ms"],
        "score_latency_p95_ms": scorer["score_latency_p95_ms"],
        "score_latency_n": scorer["score_latency_n"],
        "score_latency_note": scorer["score_latency_note"],
        "backbone": feats["backbone"],
        "n": feats["n_texts"],
        "seeds": exp["seeds"],
        "threads": feats["threads"],
        "max_abs_diff": feats["max_abs_diff"],
        "features": feats,
        "experiment": exp,
        "scorer": scorer.get("scorer"),
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
