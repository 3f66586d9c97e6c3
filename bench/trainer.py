"""Trainer benchmark: feature extraction throughput against a bare transformers loop,
time per 5-seed experiment on cached features, scorer latency.

    .venv/bin/python bench/trainer.py [--backbone minilm|mpnet] [--n 256] [--seeds 5]

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
               ``Prepared`` loaded from the cache, the built-in ``naive_soft`` method
               runs over ``--seeds`` seeds through ``method_inputs`` + ``run_method``.
               ``experiment_5seeds_s`` is that wall time (the weak teacher trained
               inside ``method_inputs`` included; feature extraction excluded), scaled
               to 5 seeds when ``--seeds`` differs.
(c) scorer     ``experiment.finished`` -> ``score.published`` latency. Reported as
               null with the reason (never a made-up number) until this bench drives
               the scorer service.

Progress goes to stderr; readable figures and then ONE JSON line go to stdout.
Features are cached in ``AAR_HOME/cache/features`` (default ./.aar), like the trainer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
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

import numpy as np  # noqa: E402

from trainer import models, w2s  # noqa: E402
from trainer._util import usable_cpus  # noqa: E402
from trainer.data import SplitSizes, load_pool  # noqa: E402
from trainer.features import embed_texts  # noqa: E402
from trainer.methods import run_method  # noqa: E402
from trainer.pipeline import DEFAULT_WEAK, method_inputs, prepare  # noqa: E402

METHOD = "naive_soft"


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
    inputs_s = method_s = 0.0
    accs = []
    for seed in seeds:
        t0 = time.perf_counter()
        ctx = method_inputs(prep, seed, "dev")  # trains this seed's weak teacher
        t1 = time.perf_counter()
        preds = run_method(METHOD, ctx)
        t2 = time.perf_counter()
        inputs_s += t1 - t0
        method_s += t2 - t1
        accs.append(w2s.accuracy(preds, gold))
    total = inputs_s + method_s
    return {
        "method": METHOD,
        "weak": args.weak,
        "strong": args.backbone,
        "sizes": sizes.as_dict(),
        "seeds": len(seeds),
        "experiment_s": total,
        "experiment_5seeds_s": total * 5 / len(seeds),
        "teacher_and_inputs_s": inputs_s,
        "method_s": method_s,
        "features_fill_s": fill_s,
        "features_cached_load_s": load_s,
        "acc_mean": float(np.mean(accs)),
    }


# --------------------------------------------------------------------------- (c) scorer


def bench_scorer(args: argparse.Namespace) -> dict[str, Any]:
    """Never a made-up figure: null and the reason until a measurement exists."""
    if not (ROOT / "services" / "scorer" / "__main__.py").is_file():
        note = "not measured: scorer service not present"
    else:
        note = ("not measured: services/scorer exists but this bench does not drive it yet "
                "(needs session.started -> experiment.finished through a running stack)")
    return {"score_latency_ms": None, "score_latency_note": note}


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
    args = p.parse_args(argv)
    if args.n < 1 or args.seeds < 1 or args.repeats < 1 or args.batch_size < 1:
        p.error("--n, --seeds, --repeats and --batch-size must be >= 1")
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
          f"(teacher + inputs {exp['teacher_and_inputs_s']:.2f} s, method {exp['method_s']:.2f} s; "
          f"dev acc {exp['acc_mean']:.4f})")
    print(f"    cached features load           {exp['features_cached_load_s']:8.2f} s   "
          f"(first prepare, filling the cache where cold: {exp['features_fill_s']:.1f} s)")
    if scorer["score_latency_ms"] is None:
        print(f"(c) score_latency_ms: null   {scorer['score_latency_note']}")
    else:
        print(f"(c) score_latency_ms            {scorer['score_latency_ms']:8.1f} ms")
    print(f"total {time.perf_counter() - started:.0f} s")
    out = {
        "feature_over_bare": round(feats["feature_over_bare"], 3),
        "feature_sentences_per_s": round(feats["feature_sentences_per_s"], 1),
        "bare_sentences_per_s": round(feats["bare_sentences_per_s"], 1),
        "bare_sorted_sentences_per_s": round(feats["bare_sorted_sentences_per_s"], 1),
        "experiment_5seeds_s": round(exp["experiment_5seeds_s"], 3),
        **scorer,
        "backbone": feats["backbone"],
        "n": feats["n_texts"],
        "seeds": exp["seeds"],
        "threads": feats["threads"],
        "max_abs_diff": feats["max_abs_diff"],
        "features": feats,
        "experiment": exp,
    }
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
