"""Baseline table: weak floor, strong ceiling, and every built-in method's accuracy and PGR.

    python -m trainer.report                       # rotten_tomatoes, minilm -> mpnet, 5 seeds, dev
    python -m trainer.report --dataset imdb --seeds 3 --eval-split test --json out.json

Features are computed once and cached in ``AAR_HOME/cache/features`` (mpnet: ~5 minutes
for 6,500 short texts on 2 CPU cores the first time; seconds afterwards). Seeds vary the
weak teacher's and the student's head (initialization and mini-batch order); the splits
are fixed. PGR uses :func:`trainer.w2s.pgr` with ``n_eval`` = the eval split's size.
The ablation column is the accuracy drop when the weak labels are shuffled (the scorer's
teacher-ablation check): a method that uses the teacher drops towards chance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import numpy as np

from trainer import w2s
from trainer.data import SplitSizes
from trainer.methods import METHODS, MethodContext, run_method
from trainer.methods.seeds import run_seeds
from trainer.paired import paired_difference
from trainer.pipeline import DEFAULT_STRONG, DEFAULT_WEAK, baselines, method_inputs, prepare


def measure(
    dataset: str = "rotten_tomatoes",
    *,
    weak: str = DEFAULT_WEAK,
    strong: str = DEFAULT_STRONG,
    sizes: SplitSizes | None = None,
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4),
    eval_split: str = "dev",
    methods: list[str] | None = None,
    ablation: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    started = time.monotonic()
    prep = prepare(dataset, weak=weak, strong=strong, sizes=sizes, eval_splits=(eval_split,), progress=progress)
    features_s = time.monotonic() - started
    base = baselines(prep, seeds, eval_split)
    gold = prep.dataset.split(eval_split).labels
    prep.teach(seeds)
    teacher_on_B = [w2s.accuracy(prep.weak_labels(s), prep.dataset.B.labels) for s in seeds]
    rows = []
    naive: np.ndarray | None = None
    names = methods or list(METHODS)
    if "naive_soft" in names:  # first: every other method is compared with it, paired
        names = ["naive_soft", *(n for n in names if n != "naive_soft")]
    for name in names:
        t = time.monotonic()

        def run(ctx: MethodContext, method: str = name) -> np.ndarray:
            return run_method(method, ctx)

        correct = np.stack([w2s.correct(p, gold) for p in
                            run_seeds(run, [method_inputs(prep, s, eval_split) for s in seeds])])
        accs = [float(r.mean()) for r in correct]
        shuffled = (
            [w2s.accuracy(p, gold) for p in
             run_seeds(run, [method_inputs(prep, s, eval_split, shuffled=True) for s in seeds])]
            if ablation
            else None
        )
        result = w2s.pgr(accs, base.weak_acc, base.ceiling_acc, n_eval=base.n_eval)
        if name == "naive_soft":
            naive = correct
        vs = (paired_difference(correct, naive, base.weak_correct, base.ceiling_correct, n_bootstrap=1000)
              if naive is not None and name != "naive_soft" else None)
        rows.append(
            {
                "method": name,
                "acc": accs,
                "acc_mean": float(np.mean(accs)),
                "acc_sd": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                "pgr": result.as_dict(),
                "shuffled_acc_mean": float(np.mean(shuffled)) if shuffled else None,
                "vs_naive_pgr": None if vs is None else vs.pgr,
                "vs_naive_pgr_se": None if vs is None else vs.pgr_se,
                "vs_naive_tied": None if vs is None else vs.tied,
                "seconds_per_seed": (time.monotonic() - t) / len(seeds) / (2 if ablation else 1),
            }
        )
    return {
        "dataset": dataset,
        "weak": weak,
        "strong": strong,
        "sizes": prep.dataset.sizes.as_dict(),
        "split_fingerprints": {n: s.fingerprint for n, s in prep.dataset.splits.items()},
        "eval_split": eval_split,
        "seeds": list(seeds),
        "baselines": base.as_dict(),
        "teacher_acc_on_B": teacher_on_B,
        "features_seconds": features_s,
        "methods": rows,
        "seconds": time.monotonic() - started,
    }


def _fmt(x: float | None, digits: int = 3) -> str:
    return "null" if x is None else f"{x:.{digits}f}"


def render(report: dict[str, Any]) -> str:
    b = report["baselines"]
    w, c = np.asarray(b["weak_acc"]), np.asarray(b["ceiling_acc"])
    sizes = report["sizes"]
    lines = [
        f"{report['dataset']}: {report['weak']} -> {report['strong']}, A/B/dev/test = "
        f"{sizes['A']}/{sizes['B']}/{sizes['dev']}/{sizes['test']}, {len(report['seeds'])} seeds, "
        f"eval on {report['eval_split']} (n={b['n_eval']})",
        "",
        f"weak floor   {w.mean():.4f} (sd {w.std(ddof=1) if len(w) > 1 else 0:.4f})    "
        f"teacher accuracy on B {np.mean(report['teacher_acc_on_B']):.4f}",
        f"ceiling      {c.mean():.4f} (sd {c.std(ddof=1) if len(c) > 1 else 0:.4f})",
        "",
        "| method | acc (mean ± sd) | PGR ± se | − naive_soft, paired (PGR ± se) | acc, shuffled weak labels | s/seed |",
        "|---|---|---|---|---|---|",
    ]
    for row in report["methods"]:
        p = row["pgr"]
        pgr_text = "null" if p["value"] is None else f"{p['value']:.3f} ± {p['se']:.3f}"
        vs = row.get("vs_naive_pgr")
        vs_text = "—" if vs is None else (f"{vs:+.3f} ± {row['vs_naive_pgr_se']:.3f}"
                                          + (" (tied)" if row["vs_naive_tied"] else ""))
        lines.append(
            f"| {row['method']} | {row['acc_mean']:.4f} ± {row['acc_sd']:.4f} | {pgr_text} | {vs_text} | "
            f"{_fmt(row['shuffled_acc_mean'], 4)} | {row['seconds_per_seed']:.1f} |"
        )
    lines.append("")
    lines.append(f"total {report['seconds']:.0f}s (features {report['features_seconds']:.0f}s)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="rotten_tomatoes")
    parser.add_argument("--weak", default=DEFAULT_WEAK)
    parser.add_argument("--strong", default=DEFAULT_STRONG)
    d = SplitSizes()
    parser.add_argument("--sizes", default=f"{d.A},{d.B},{d.dev},{d.test}", help="A,B,dev,test (default: the task's)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--eval-split", default="dev", choices=["dev", "test"])
    parser.add_argument("--methods", nargs="*", default=None, help=f"default: all ({', '.join(METHODS)})")
    parser.add_argument("--no-ablation", action="store_true", help="skip the shuffled-labels column")
    parser.add_argument("--json", default=None, help="also write the full report as JSON here")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    a, b, dev, test = (int(x) for x in args.sizes.split(","))
    report = measure(
        args.dataset,
        weak=args.weak,
        strong=args.strong,
        sizes=SplitSizes(a, b, dev, test),
        seeds=tuple(range(args.seeds)),
        eval_split=args.eval_split,
        methods=args.methods,
        ablation=not args.no_ablation,
        progress=not args.quiet,
    )
    print(render(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
