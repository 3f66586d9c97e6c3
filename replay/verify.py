"""``aar replay SESSION --verify``: does every recorded score reproduce?

For each ``score.published`` / ``score.withheld`` of the session:

1. the artifacts behind it are checked: the predictions blob (``experiment.finished``),
   the method code blob (agent-written methods) and the weak-labels blob; each is
   ``ok``, ``missing`` or ``tampered`` (its bytes no longer hash to its name);
2. the stored predictions are scored again with the scorer's :class:`GroundTruth`
   (same setup: dataset, models, split sizes and seed, the session's seeds), which
   checks the scorer's arithmetic and the blob;
3. the experiment is run again from its method (built-in by name, or the code blob
   in the sandbox), params and seeds, on weak labels recomputed by the ground truth,
   and scored: accuracy and PGR must match the recorded ones within ``tolerance``.

A score is ``reproduced`` when its re-run accuracy is within the tolerance, ``differs``
when not, ``tampered``/``missing`` when an artifact is (the score cannot be trusted),
``error`` when the re-run failed.

Dev scores released to agents (``score.published``) carry the scorer's secret noise
(services/scorer/release.py): for them the check is that the recorded accuracy is
within ``RELEASE_BOUND`` noise standard deviations of the re-run, not exact. Scores the
agents never see (``score.withheld``: test, held-out, ablations, baselines) are exact.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from core.paths import AarHome

from .log import Row

DEFAULT_TOLERANCE = 1e-6
RELEASE_BOUND = 5.0  # a released dev score's noise is checked to this many standard deviations


@dataclass(slots=True)
class Verified:
    event_id: str
    experiment_id: str
    idea_id: str | None
    purpose: str
    split: str
    dataset: str
    method: str
    status: str = "reproduced"  # reproduced | differs | tampered | missing | error
    artifacts: dict[str, str] = field(default_factory=dict)  # role -> ok | missing | tampered
    recorded_accuracy: float = 0.0
    rescored_accuracy: float | None = None  # stored predictions, scored again
    rerun_accuracy: float | None = None  # method run again
    accuracy_diff: float | None = None  # rerun - recorded
    recorded_pgr: float | None = None
    rerun_pgr: float | None = None
    pgr_diff: float | None = None
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _artifact_state(blobs: Any, sha: str | None) -> str:
    from services.artifacts.store import ArtifactCorrupt, ArtifactNotFound

    if sha is None:
        return "none"
    try:
        blobs.get(sha)
    except ArtifactNotFound:
        return "missing"
    except ArtifactCorrupt:
        return "tampered"
    return "ok"


def verify(rows: list[Row], *, home: AarHome | None = None, tolerance: float = DEFAULT_TOLERANCE,
           rerun: bool = True, unsafe_no_sandbox: bool = False) -> list[Verified]:
    from schemas.experiment import ExperimentRequested, Split
    from services.artifacts.arrays import unpack_seeds
    from services.artifacts.store import BlobStore
    from services.scorer.config import ScoringConfig
    from services.scorer.truth import GroundTruth, Setup
    from services.trainer.jobs import JobFailed, load_inputs, run_job

    home = home or AarHome.from_env()
    blobs = BlobStore(home.artifacts)
    started: dict[str, Any] | None = None
    requests: dict[str, dict[str, Any]] = {}
    finished: dict[str, dict[str, Any]] = {}
    scores: list[tuple[Row, dict[str, Any]]] = []
    for row in rows:
        if row.type == "session.started":
            started = json.loads(row.payload)
        elif row.type == "experiment.requested":
            p = json.loads(row.payload)
            requests[p["experiment_id"]] = p
        elif row.type == "experiment.finished":
            p = json.loads(row.payload)
            finished.setdefault(p["experiment_id"], p)
        elif row.type in ("score.published", "score.withheld"):
            scores.append((row, json.loads(row.payload)))
    cfg = ScoringConfig.from_session_config((started or {}).get("config") or {})
    seeds = tuple(range(cfg.seeds))
    truths: dict[Setup, GroundTruth] = {}
    inputs_cache: dict[tuple[Any, ...], Any] = {}
    out: list[Verified] = []
    for row, s in scores:
        req_p = requests.get(s["experiment_id"])
        v = Verified(
            event_id=row.id, experiment_id=s["experiment_id"], idea_id=s.get("idea_id"),
            purpose=s.get("purpose", "score"), split=s["split"], dataset=s["dataset"],
            method=s.get("builtin_method") or f"code:{(s.get('method_artifact') or '')[:12]}",
            recorded_accuracy=float(s["accuracy"]), recorded_pgr=s.get("pgr"),
        )
        out.append(v)
        if req_p is None:
            v.status, v.detail = "error", "no experiment.requested for this score"
            continue
        done = finished.get(s["experiment_id"])
        v.artifacts = {
            "predictions": _artifact_state(blobs, done["predictions_artifact"]) if done else "missing",
            "method": _artifact_state(blobs, req_p.get("method_artifact")),
            "weak_labels": _artifact_state(blobs, req_p.get("weak_labels_artifact")),
        }
        bad = {k: st for k, st in v.artifacts.items() if st in ("missing", "tampered")}
        if bad:
            v.status = "tampered" if "tampered" in bad.values() else "missing"
            v.detail = "; ".join(f"{k} artifact {st}" for k, st in bad.items())
        req = ExperimentRequested.model_validate(req_p)
        setup = Setup(req.dataset, req.weak_model, req.strong_model, tuple(sorted(req.split_sizes.items())),
                      0 if req.split_seed is None else req.split_seed, seeds)
        try:
            if setup not in truths:
                truths[setup] = GroundTruth(setup, home)
            truth = truths[setup]
            if v.artifacts["predictions"] == "ok" and done is not None:
                stored = unpack_seeds(blobs.get(done["predictions_artifact"]))
                v.rescored_accuracy = truth.score(stored, Split(req.split), list(req.seeds)).pgr.student
            if not rerun or v.artifacts["method"] in ("missing", "tampered"):
                continue
            source = blobs.get(req.method_artifact).decode() if req.method_artifact else None
            key = (req.dataset, req.strong_model, tuple(sorted(req.split_sizes.items())), req.split_seed, req.split)
            if key not in inputs_cache:
                inputs_cache[key] = load_inputs(req, home)
            weak = truth.weak_labels(shuffled=req.shuffle_weak_labels)
            outcome = run_job(req, inputs_cache[key], weak, method_source=source, unsafe_no_sandbox=unsafe_no_sandbox)
            scored = truth.score(outcome.predictions, Split(req.split), list(req.seeds))
        except JobFailed as exc:
            v.status, v.detail = ("error" if v.status == "reproduced" else v.status), \
                f"{v.detail + '; ' if v.detail else ''}re-run failed: {exc.error_class}: {exc.message}"
            continue
        except Exception as exc:  # noqa: BLE001 - one bad score must not stop the report
            v.status, v.detail = ("error" if v.status == "reproduced" else v.status), \
                f"{v.detail + '; ' if v.detail else ''}{type(exc).__name__}: {exc}"
            continue
        v.rerun_accuracy = scored.pgr.student
        v.rerun_pgr = scored.pgr.value
        v.accuracy_diff = v.rerun_accuracy - v.recorded_accuracy
        if v.rerun_pgr is not None and v.recorded_pgr is not None:
            v.pgr_diff = v.rerun_pgr - v.recorded_pgr
        tol = tolerance
        if row.type == "score.published" and cfg.release_rows > 0:
            # Released to agents with secret noise (services/scorer/release.py): only the
            # noise's bound can be checked, RELEASE_BOUND standard deviations and the rounding.
            sigma = cfg.release_rows / truth.baselines["dev"].n_eval
            tol = max(tolerance, RELEASE_BOUND * sigma + 5e-5)
            v.detail = f"released with noise (sigma {sigma:.4f}): checked to within {tol:.4f}"
        if v.status == "reproduced" and abs(v.accuracy_diff) > tol:
            v.status = "differs"
            v.detail = f"re-run accuracy differs by {v.accuracy_diff:+.3g} (tolerance {tol:g})"
        if v.status == "reproduced" and v.rescored_accuracy is not None and \
                abs(v.rescored_accuracy - v.recorded_accuracy) > tol:
            v.status = "differs"
            v.detail = f"stored predictions score {v.rescored_accuracy:.6f}, recorded {v.recorded_accuracy:.6f}"
    return out
