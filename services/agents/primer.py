"""Background knowledge for the researchers: a concise primer shipped with the package.

Two halves: :data:`TEXT`, prose for the Claude backend (the ``read_primer`` tool, with
this session's measured baselines added); and :data:`METHODS`, the same knowledge as
data, which the offline policy reads (its exploration prior). The built-in table was
measured by ``bench/precision.py``'s setup (rotten_tomatoes, MiniLM -> MPNet, A/B/dev/test
300/2000/3000/1500, 5 seeds; bench/results/builtin-*.json): on another setup the
numbers differ, the ordering is a prior, not a fact. It says what is known, not what to
do next: no workflow.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

MEASURED_ON = "rotten_tomatoes, MiniLM -> MPNet, A/B/dev/test 300/2000/3000/1500, 5 seeds, dev split"


@dataclass(frozen=True, slots=True)
class MethodNote:
    name: str
    family: str
    idea: str
    pitfall: str
    dev_pgr: float  # measured (MEASURED_ON)
    dev_pgr_se: float
    vs_naive: float | None  # paired PGR difference against naive_soft, same rows and seeds
    vs_naive_se: float | None
    shuffled_acc: float  # accuracy with shuffled weak labels (the teacher ablation): about 0.5 is right


METHODS: dict[str, MethodNote] = {m.name: m for m in (
    MethodNote("naive_soft", "baseline", "cross-entropy on the teacher's soft labels",
               "copies the teacher's mistakes, confident ones included", 0.648, 0.054, None, None, 0.496),
    MethodNote("naive_hard", "baseline", "cross-entropy on thresholded labels",
               "throws away the teacher's confidence", 0.581, 0.056, -0.067, 0.020, 0.511),
    MethodNote("aux_conf", "confidence loss", "mixes the teacher's labels with the student's own hardened "
               "predictions, the mix growing over training (Burns et al. 2023)",
               "a large coefficient early lets the student confirm its own first guesses", 0.831, 0.054,
               0.182, 0.026, 0.569),
    MethodNote("aux_conf_fixed", "confidence loss", "aux_conf with a fixed mix", "as aux_conf", 0.830, 0.054,
               0.181, 0.027, 0.439),
    MethodNote("product", "confidence loss", "targets proportional to teacher^alpha * student^beta",
               "the student's early predictions are poor targets", 0.767, 0.054, 0.118, 0.021, 0.499),
    MethodNote("conf_filter", "data selection", "drops the rows where the teacher is least sure",
               "the dropped rows are the hard ones: the student learns less of the boundary", 0.657, 0.054,
               0.009, 0.011, 0.494),
    MethodNote("early_stop", "regularisation", "stops when agreement with held-back weak labels peaks",
               "agreement with the teacher rewards imitating it, not beating it", 0.570, 0.067, -0.079, 0.040,
               0.469),
    MethodNote("s2s_relabel", "relabelling", "trains, relabels the least certain rows with its own "
               "predictions, trains again", "relabelled mistakes are reinforced", 0.728, 0.054, 0.079, 0.016,
               0.493),
)}

TEXT = f"""\
# Weak-to-strong supervision: a primer

## The problem
A weak model (here a small embedding model with a linear head) is trained on gold labels of split A
and labels split B. A strong model (a larger embedding model with a head) learns from those weak labels
only. The question is how much of the strong model's potential the weak supervision recovers.

## PGR
PGR = (acc_student - acc_weak) / (acc_ceiling - acc_weak), on the dev split (scores you see) and on a
hidden test split and held-out datasets (the ranking). acc_weak is the teacher itself; acc_ceiling is the
same strong head trained on B's gold labels. Scores carry a standard error over seeds and paired
comparisons (the difference to naive_soft, to an idea's parents and to the leader, on the same rows and
seeds, with its own standard error and a tie mark): a difference inside two standard errors is not a
finding. Dev figures are released with a little noise, so re-submitting variants to climb dev is not
research; the test and held-out scores decide.

## What the literature found (Burns et al. 2023 and after)
- Naive training on weak labels already recovers part of the gap: the strong model generalises beyond
  its teacher's errors.
- An auxiliary confidence loss (trust the student's own hardened predictions more as training goes on)
  helps most, on NLP tasks especially.
- Bootstrapping through intermediate models, early stopping, and confidence-based data selection help
  less reliably; relabelling by the student can reinforce its own mistakes.
- Pitfalls: imitation of the teacher's errors (more epochs are not better), overfitting dev by many
  small variants, and methods that ignore the teacher (they are caught: every promoted idea is re-run
  with shuffled weak labels and a teacher trained on shuffled labels; if its gain survives, it is
  flagged).

## The method interface
A method is a module with run(ctx) -> P(class 1) per eval row. ctx holds B's strong features and weak
soft labels, the eval split's features, both splits' texts, seed, params, train_head(...) (a seeded
linear or one-hidden-layer head) and teacher(texts) (the weak teacher's P(class 1) on any texts: a budget
of texts per run, counted). No gold label is ever in it. It runs in a sandbox: no network, no files
outside the job, limits on CPU, memory and wall clock; trainer.methods gives the built-ins
(run_method(name, ctx)); load('<sha256>') from trainer.methods.stored imports another idea's code.

## The workspace
run_code runs a script in a sandbox with B split into a train part and a held-back part (weak labels
only) and dev without labels: agreement with held-back weak labels, calibration, stability across
seeds, the teacher on chosen texts. None of it measures accuracy against gold; it costs CPU-seconds from
your own budget, not a dev evaluation.

## The built-in methods as measured ({MEASURED_ON})
""" + "\n".join(
    f"- {m.name} ({m.family}): dev PGR {m.dev_pgr:.3f} ± {m.dev_pgr_se:.3f}"
    + (f", vs naive_soft {m.vs_naive:+.3f} ± {m.vs_naive_se:.3f}" if m.vs_naive is not None
       and m.vs_naive_se is not None else "")
    + f"; {m.idea}. Pitfall: {m.pitfall}."
    for m in METHODS.values()
) + "\n"


def structured() -> dict[str, Any]:
    """The primer as data (what the offline policy and the read_primer tool return)."""
    return {"measured_on": MEASURED_ON, "methods": {name: asdict(m) for name, m in METHODS.items()}}


def prior_weight(method: str) -> float:
    """How much the primer favours ``method`` when exploring: its measured dev PGR (0.5 if unknown)."""
    note = METHODS.get(method)
    return max(0.05, note.dev_pgr if note is not None else 0.5)
