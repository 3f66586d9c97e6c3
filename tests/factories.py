"""One realistic, valid payload per event type (used across the test suite)."""

from __future__ import annotations

from schemas import Event, EventType, Payload
from schemas.agent import AgentLlmCalled, AgentStarted, AgentStopped, AgentToolCalled
from schemas.artifact import ArtifactKind, ArtifactStored
from schemas.experiment import (
    ExperimentFailed,
    ExperimentFinished,
    ExperimentProgress,
    ExperimentRequested,
    ExperimentStarted,
    Split,
)
from schemas.forum import ForumModerated, ForumPosted, ForumVoted
from schemas.gateway import GatewayRefused, RefusalKind
from schemas.idea import IdeaDuplicate, IdeaProposed
from schemas.integrity import IntegrityCheck, IntegrityFlagged
from schemas.recorder import RecorderDeadLettered, RecorderHealth, RecorderRejected
from schemas.scoring import BaselineComputed, BaselineKind, ScorePublished, ScoreWithheld
from schemas.session import (
    AgentAssignment,
    Backend,
    EndReason,
    SessionDraining,
    SessionEnded,
    SessionResumed,
    SessionStarted,
)
from schemas.workspace import WorkspaceFinished, WorkspaceRefused, WorkspaceRequested, WorkspaceScheduled

SHA = "ab" * 32


def sample_payload(event_type: EventType, n: int = 0) -> Payload:
    i = str(n)
    samples: dict[EventType, Payload] = {
        EventType.SESSION_STARTED: SessionStarted(
            name="demo", backend=Backend.OFFLINE, dataset="rotten_tomatoes", weak_model="minilm",
            strong_model="mpnet", agents=[AgentAssignment(agent_id="agent-1", direction="reweighting")],
        ),
        EventType.SESSION_DRAINING: SessionDraining(reason=EndReason.MAX_EXPERIMENTS, outstanding=2),
        EventType.SESSION_ENDED: SessionEnded(reason=EndReason.MAX_EXPERIMENTS, experiments=3),
        EventType.SESSION_RESUMED: SessionResumed(resume=1, elapsed_s=120.5, experiments=3, in_flight=["exp-r" + i]),
        EventType.AGENT_STARTED: AgentStarted(agent_id="agent-1", direction="ensembling", backend=Backend.OFFLINE),
        EventType.AGENT_LLM_CALLED: AgentLlmCalled(
            agent_id="agent-1", model="claude-opus-4-6", input_tokens=1200, output_tokens=300,
            cache_read_tokens=1000, cache_write_tokens=0, cost_usd=0.0123, latency_s=2.5, idea_id="idea-" + i,
        ),
        EventType.AGENT_TOOL_CALLED: AgentToolCalled(
            agent_id="agent-1", tool="search_forum", arguments={"query": "confidence"}, latency_s=0.01
        ),
        EventType.AGENT_STOPPED: AgentStopped(agent_id="agent-1", reason="budget", ideas=2, cost_usd=0.5),
        EventType.IDEA_PROPOSED: IdeaProposed(
            idea_id="idea-" + i, agent_id="agent-1", title="confidence filtering at 30%",
            hypothesis="dropping the least confident weak labels removes most label noise",
            builtin_method="conf_filter", params={"keep": 0.7}, parent_ideas=["idea-0"], cites_posts=["post-1"],
        ),
        EventType.ARTIFACT_STORED: ArtifactStored(sha256=SHA, size=1234, kind=ArtifactKind.CODE, name="method.py"),
        EventType.EXPERIMENT_REQUESTED: ExperimentRequested(
            experiment_id="exp-" + i, idea_id="idea-" + i, agent_id="agent-1", dataset="rotten_tomatoes",
            weak_model="minilm", strong_model="mpnet", seeds=[0, 1, 2, 3, 4], builtin_method="conf_filter",
        ),
        EventType.EXPERIMENT_STARTED: ExperimentStarted(experiment_id="exp-" + i, trainer_id="trainer-1"),
        EventType.EXPERIMENT_PROGRESS: ExperimentProgress(experiment_id="exp-" + i, trainer_id="trainer-1", fraction=0.5),
        EventType.EXPERIMENT_FINISHED: ExperimentFinished(
            experiment_id="exp-" + i, trainer_id="trainer-1", predictions_artifact=SHA, runtime_s=3.2, peak_rss_mb=410.0
        ),
        EventType.EXPERIMENT_FAILED: ExperimentFailed(
            experiment_id="exp-f" + i, trainer_id="trainer-1", error_class="ValueError", message="bad shape"
        ),
        EventType.BASELINE_COMPUTED: BaselineComputed(
            kind=BaselineKind.WEAK, dataset="rotten_tomatoes", split=Split.DEV, weak_model="minilm",
            strong_model="mpnet", seeds=[0, 1], accuracies=[0.74, 0.75], mean=0.745, stderr=0.005,
        ),
        EventType.SCORE_PUBLISHED: ScorePublished(
            experiment_id="exp-" + i, idea_id="idea-" + i, agent_id="agent-1", dataset="rotten_tomatoes",
            split=Split.DEV, n_seeds=5, accuracy=0.8, accuracy_stderr=0.01, weak_accuracy=0.75,
            ceiling_accuracy=0.84, pgr=0.55, pgr_stderr=0.1,
        ),
        EventType.SCORE_WITHHELD: ScoreWithheld(
            experiment_id="exp-t" + i, idea_id="idea-" + i, agent_id="agent-1", dataset="rotten_tomatoes",
            split=Split.TEST, n_seeds=5, accuracy=0.8, accuracy_stderr=0.01, weak_accuracy=0.75,
            ceiling_accuracy=0.84, pgr=0.55, pgr_stderr=0.1,
        ),
        EventType.INTEGRITY_FLAGGED: IntegrityFlagged(
            check=IntegrityCheck.TEACHER_ABLATION, detail="score did not drop with shuffled labels", idea_id="idea-" + i
        ),
        EventType.FORUM_POSTED: ForumPosted(
            post_id="post-" + i, agent_id="agent-1", title="conf filtering helps", body="PGR 0.55 on dev",
            idea_ids=["idea-" + i], experiment_ids=["exp-" + i],
        ),
        EventType.IDEA_DUPLICATE: IdeaDuplicate(idea_id="idea-d" + i, agent_id="agent-2", duplicate_of="idea-" + i,
                                                method_key=SHA),
        EventType.FORUM_VOTED: ForumVoted(post_id="post-" + i, agent_id="agent-2", value=1),
        EventType.FORUM_MODERATED: ForumModerated(post_id="post-" + i, action="hide", reason="duplicate"),
        EventType.WORKSPACE_REQUESTED: WorkspaceRequested(run_id="w-" + i, agent_id="agent-1", code_artifact=SHA),
        EventType.WORKSPACE_SCHEDULED: WorkspaceScheduled(
            run_id="w-" + i, agent_id="agent-1", code_artifact=SHA, wall_s=60.0, cpu_s=60.0,
            dataset="rotten_tomatoes", weak_model="minilm", strong_model="mpnet", weak_labels_artifact=SHA,
            teacher_artifact=SHA, teacher_queries=2000, budget_cpu_s=900.0,
        ),
        EventType.WORKSPACE_REFUSED: WorkspaceRefused(run_id="w-" + i, agent_id="agent-1",
                                                      reason="the workspace budget is spent", budget_cpu_s=900.0),
        EventType.WORKSPACE_FINISHED: WorkspaceFinished(
            run_id="w-" + i, agent_id="agent-1", trainer_id="trainer-1", code_artifact=SHA, ok=True, exit_status=0,
            runtime_s=0.4, cpu_s=0.3, stdout="agreement 0.91\n", result_json='{"agreement": 0.91}',
            rows={"train": 1500, "heldback": 500, "dev": 3000},
        ),
        EventType.RECORDER_REJECTED: RecorderRejected(reason="not JSON", stream_seq=7, raw_size=3),
        EventType.RECORDER_DEAD_LETTERED: RecorderDeadLettered(consumer="trainers", stream_seq=9, deliveries=5),
        EventType.RECORDER_HEALTH: RecorderHealth(events=10, rejected=0, batches=2),
        EventType.GATEWAY_REFUSED: GatewayRefused(
            identity="agent-1", role="agent", kind=RefusalKind.OVER_BUDGET, count=3, bytes=30_000,
            first_subject="aarin.s-test.forum.posted.agent-1", first_size=10_000, first_sha256=SHA,
        ),
    }
    return samples[event_type]


def sample_event(event_type: EventType, session_id: str = "s-test", n: int = 0, source: str = "test") -> Event:
    return Event.create(sample_payload(event_type, n), session_id=session_id, source=source)


def every_event(session_id: str = "s-test") -> list[Event]:
    return [sample_event(t, session_id) for t in EventType]
