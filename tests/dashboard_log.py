"""A recorded session for the dashboard's tests, written into a real DuckDB log with the
recorder's own store: 2 agents, 5 ideas (one of them agent-written code stored in the
artifact store, one building on the other agent's idea and citing its post), dev scores
with paired comparisons, a promoted idea's test and held-out scores, a failed
experiment, forum posts with a reply and votes, an LLM call, an integrity flag, and a
title that tries to be HTML."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from core.paths import AarHome
from schemas import Event, Payload
from schemas.agent import AgentLlmCalled, AgentStarted, AgentStopped
from schemas.experiment import (
    ExperimentFailed,
    ExperimentFinished,
    ExperimentRequested,
    ExperimentStarted,
    Purpose,
    Split,
)
from schemas.forum import ForumPosted, ForumVoted
from schemas.idea import IdeaProposed
from schemas.integrity import IntegrityCheck, IntegrityFlagged
from schemas.scoring import Against, Comparison, ScorePublished, ScoreWithheld
from schemas.session import Backend, SessionEnded, SessionStarted
from services.artifacts.store import BlobStore
from services.recorder.store import EventStore, Recorded

SID = "s-dash"
T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
CODE = '''"""Confidence-weighted soft labels."""


def run(ctx):
    return ctx.weak_probs  # the weak teacher's labels, as they are
'''
XSS_TITLE = '<img src=x onerror="window.pwned=1">aux <b>bold</b>'


@dataclass
class Recorded_:
    home: AarHome
    code_sha: str
    ideas: dict[str, str] = field(default_factory=dict)  # idea -> agent
    dev_dots: dict[str, int] = field(default_factory=dict)  # agent -> dev-scored ideas with a PGR


def _score(idea: str | None, agent: str | None, pgr: float | None, *, split: Split = Split.DEV,
           purpose: Purpose = Purpose.SCORE, dataset: str = "rotten_tomatoes", method: str | None = "aux_conf",
           artifact: str | None = None, comparisons: list[Comparison] | None = None) -> ScorePublished:
    withheld = split is not Split.DEV or purpose is not Purpose.SCORE and purpose is not Purpose.BASELINE
    cls = ScoreWithheld if withheld else ScorePublished
    return cls(experiment_id=f"x-{idea}-{split.value}-{purpose.value}", idea_id=idea, agent_id=agent, dataset=dataset,
               split=split, purpose=purpose, n_seeds=3, accuracy=0.8, accuracy_stderr=0.01, weak_accuracy=0.7,
               ceiling_accuracy=0.9, pgr=pgr, pgr_stderr=0.04, builtin_method=None if artifact else method,
               method_artifact=artifact, comparisons=comparisons or [])


def _cmp(against: Against, diff: float, tied: bool, idea: str | None = None) -> Comparison:
    return Comparison(against=against, idea_id=idea, accuracy_diff=diff / 5, accuracy_diff_se=0.01,
                      accuracy_ci=[diff / 5 - 0.02, diff / 5 + 0.02], pgr_diff=diff, pgr_diff_se=0.05,
                      pgr_ci=[diff - 0.1, diff + 0.1], tied=tied, n_bootstrap=200, bootstrap_seed=1)


def write(home: AarHome, session_id: str = SID) -> Recorded_:
    home.ensure()
    sha, _ = BlobStore(home.artifacts).put(CODE.encode())
    out = Recorded_(home, sha)
    evs: list[Event[Any]] = []

    def ev(payload: Payload, minutes: float, source: str) -> None:
        evs.append(Event.create(payload, session_id=session_id, source=source,
                                time=T0 + timedelta(minutes=minutes)))

    def idea(idea_id: str, agent: str, minutes: float, *, title: str = "", method: str | None = "aux_conf",
             artifact: str | None = None, parents: list[str] | None = None, posts: list[str] | None = None) -> None:
        out.ideas[idea_id] = agent
        ev(IdeaProposed(idea_id=idea_id, agent_id=agent, title=title or f"idea {idea_id}",
                        hypothesis=f"hypothesis of {idea_id}", builtin_method=None if artifact else method,
                        method_artifact=artifact, params={"alpha": 0.5}, parent_ideas=parents or [],
                        cites_posts=posts or []), minutes, agent)

    def run(idea_id: str, agent: str, minutes: float, *, fail: bool = False, artifact: str | None = None) -> None:
        x = f"x-{idea_id}-dev-score"
        ev(ExperimentRequested(experiment_id=x, idea_id=idea_id, agent_id=agent, dataset="rotten_tomatoes",
                               weak_model="minilm", strong_model="minilm", seeds=[0, 1, 2],
                               builtin_method=None if artifact else "aux_conf", method_artifact=artifact),
           minutes, "scorer")
        ev(ExperimentStarted(experiment_id=x, trainer_id="trainer-1"), minutes + 0.1, "trainer-1")
        if fail:
            ev(ExperimentFailed(experiment_id=x, trainer_id="trainer-1", idea_id=idea_id, error_class="MethodError",
                                message="run(ctx) raised ZeroDivisionError", runtime_s=3.0), minutes + 1, "trainer-1")
        else:
            ev(ExperimentFinished(experiment_id=x, trainer_id="trainer-1", predictions_artifact="a" * 64,
                                  runtime_s=42.0, peak_rss_mb=900.0, seeds=[0, 1, 2]), minutes + 1, "trainer-1")

    ev(SessionStarted(name="dash", backend=Backend.OFFLINE, dataset="rotten_tomatoes", weak_model="minilm",
                      strong_model="minilm"), 0, "orchestrator")
    ev(AgentStarted(agent_id="agent-1", direction="confidence", backend=Backend.OFFLINE), 0, "agent-1")
    ev(AgentStarted(agent_id="agent-2", direction="data selection", backend=Backend.OFFLINE), 0, "agent-2")
    ev(_score(None, None, 0.3, purpose=Purpose.BASELINE, method="naive_soft"), 2, "scorer")
    idea("i1", "agent-1", 5, title=XSS_TITLE)
    run("i1", "agent-1", 5)
    ev(_score("i1", "agent-1", 0.42, comparisons=[_cmp(Against.NAIVE_SOFT, 0.12, False)]), 7, "scorer")
    ev(ForumPosted(post_id="p1", agent_id="agent-1", title="aux_conf at 0.5 helps", body="dev PGR 0.42",
                   idea_ids=["i1"]), 8, "agent-1")
    ev(ForumVoted(post_id="p1", agent_id="agent-2", value=1), 9, "agent-2")
    ev(ForumPosted(post_id="p2", agent_id="agent-2", title="re: aux_conf", body="confirmed on my side", reply_to="p1"), 9.5,
       "agent-2")
    idea("i2", "agent-2", 10, method=None, artifact=sha, parents=["i1"], posts=["p1"])  # builds on agent-1's
    run("i2", "agent-2", 10, artifact=sha)
    ev(AgentLlmCalled(agent_id="agent-2", model="claude-sonnet-4-6", input_tokens=1200, output_tokens=300,
                      cost_usd=0.0081, latency_s=2.5, idea_id="i2"), 10.5, "agent-2")
    ev(_score("i2", "agent-2", 0.55, method=None, artifact=sha,
              comparisons=[_cmp(Against.NAIVE_SOFT, 0.25, False), _cmp(Against.PARENT, 0.13, True, "i1")]),
       12, "scorer")
    idea("i3", "agent-1", 15, parents=["i1"])
    run("i3", "agent-1", 15, fail=True)
    idea("i4", "agent-1", 20)
    run("i4", "agent-1", 20)
    ev(_score("i4", "agent-1", 0.35, comparisons=[_cmp(Against.NAIVE_SOFT, 0.05, True)]), 22, "scorer")
    idea("i5", "agent-2", 25)
    run("i5", "agent-2", 25)
    ev(_score("i5", "agent-2", 0.61), 27, "scorer")
    ev(_score("i2", "agent-2", 0.5, split=Split.TEST, method=None, artifact=sha), 30, "scorer")
    ev(_score("i2", "agent-2", 0.2, split=Split.HELDOUT, dataset="imdb", method=None, artifact=sha), 31, "scorer")
    ev(IntegrityFlagged(check=IntegrityCheck.TEACHER_ABLATION, detail="ignores the teacher", idea_id="i5", agent_id="agent-2"),
       32, "scorer")
    ev(AgentStopped(agent_id="agent-1", reason="session_over"), 40, "agent-1")
    ev(AgentStopped(agent_id="agent-2", reason="session_over"), 40, "agent-2")
    ev(SessionEnded(reason="max_experiments"), 41, "orchestrator")
    out.dev_dots = {"agent-1": 2, "agent-2": 2}
    store = EventStore(home.events_db)
    try:
        store.record([Recorded(e, i) for i, e in enumerate(evs, 1)])
    finally:
        store.close()
    return out
