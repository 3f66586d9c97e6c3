"""What an agent can do, as named tools. Both backends act only through these.

Every call becomes an ``agent.tool_called`` event (arguments, ok/error, latency and a
short summary of the result). Tools never expose labels or per-example results:
scores come back as aggregates (dev split only), failures as the method's own
error message.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog
from nats.aio.msg import Msg
from pydantic import ValidationError

from bus import Bus, decode_msg
from bus.client import PublishRefused, QueryError
from bus.query import Query
from schemas import Event, new_id
from schemas.agent import AgentToolCalled
from schemas.experiment import ExperimentFailed, Purpose, Split
from schemas.forum import ForumPosted, ForumVoted
from schemas.idea import IdeaDuplicate, IdeaProposed
from schemas.integrity import IntegrityFlagged
from schemas.scoring import ScorePublished
from schemas.workspace import WorkspaceFinished, WorkspaceRefused, WorkspaceRequested
from services.artifacts.client import ArtifactClient
from services.forum import queries as forum_q
from services.scorer.queries import LEADERBOARD

from .assignment import AgentHistory

MAX_CODE_BYTES = 200_000


class ToolError(Exception):
    """A tool refused its input; the message is shown to the agent."""


@dataclass(slots=True)
class Outcome:
    """What became of one idea: a dev score, a failure, or a refusal (rate limit)."""

    idea_id: str
    score: dict[str, Any] | None = None
    failed: dict[str, Any] | None = None
    flags: list[dict[str, Any]] = field(default_factory=list)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    duplicate_of: str | None = None  # the earlier, identical idea whose answer this one gets

    def as_dict(self) -> dict[str, Any]:
        status = "scored" if self.score else "failed" if self.failed else "refused" if self.flags else "pending"
        out = {"idea_id": self.idea_id, "status": status, "score": self.score, "failure": self.failed,
               "integrity_flags": self.flags}
        if self.duplicate_of is not None:
            out.update(status="duplicate" if status != "pending" else "pending", duplicate_of=self.duplicate_of,
                       note=f"the same method and parameters as {self.duplicate_of}: not run again, its answer is "
                            "that idea's")
        return out


# JSON schemas of the tools, for the Claude backend (and documentation).
TOOL_SPECS: list[dict[str, Any]] = [
    {"name": "read_forum", "description": "Newest forum posts of this session (findings of all agents).",
     "input_schema": {"type": "object", "properties": {"limit": {"type": "integer", "minimum": 1, "maximum": 50}}}},
    {"name": "search_forum", "description": "Search forum posts by words.",
     "input_schema": {"type": "object", "properties": {"query": {"type": "string"},
                                                       "limit": {"type": "integer", "minimum": 1, "maximum": 50}},
                      "required": ["query"]}},
    {"name": "top_findings", "description": "The forum's top findings (by votes and replies).",
     "input_schema": {"type": "object", "properties": {"limit": {"type": "integer", "minimum": 1, "maximum": 20}}}},
    {"name": "read_post", "description": "One post with its replies.",
     "input_schema": {"type": "object", "properties": {"post_id": {"type": "string"}}, "required": ["post_id"]}},
    {"name": "post_finding", "description": "Share a finding on the forum. Reference the ideas it is about.",
     "input_schema": {"type": "object", "properties": {
         "title": {"type": "string"}, "body": {"type": "string"},
         "idea_ids": {"type": "array", "items": {"type": "string"}},
         "tags": {"type": "array", "items": {"type": "string"}},
         "reply_to": {"type": "string"}}, "required": ["title", "body"]}},
    {"name": "vote", "description": "Up-vote (1) or down-vote (-1) a post.",
     "input_schema": {"type": "object", "properties": {"post_id": {"type": "string"},
                                                       "value": {"type": "integer", "enum": [-1, 1]}},
                      "required": ["post_id", "value"]}},
    {"name": "leaderboard", "description": "Best dev-split scores so far in this session (PGR with standard error).",
     "input_schema": {"type": "object", "properties": {"limit": {"type": "integer", "minimum": 1, "maximum": 50}}}},
    {"name": "list_methods", "description": "The built-in weak-to-strong methods and their hyper-parameters.",
     "input_schema": {"type": "object", "properties": {}}},
    {"name": "read_method", "description": "Source code of a built-in method.",
     "input_schema": {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}},
    {"name": "write_method", "description": (
        "Store Python code for a method: a module defining run(ctx) -> P(class 1) per eval row. ctx has "
        "train_features, weak_soft_labels, eval_features, train_texts, eval_texts, seed, params, train_head(); "
        "`from trainer.methods import METHODS` gives the built-ins; `from trainer.methods.stored import load; "
        "load('<sha256>')` imports another idea's stored code by its artifact hash (write the hash out in full). "
        "Returns its artifact hash."),
     "input_schema": {"type": "object", "properties": {"code": {"type": "string"}, "name": {"type": "string"}},
                      "required": ["code"]}},
    {"name": "propose_idea", "description": (
        "Submit an idea for scoring: a built-in method by name or your stored code (artifact hash), with "
        "hyper-parameters, the hypothesis and why, the ideas it builds on and the posts it cites."),
     "input_schema": {"type": "object", "properties": {
         "title": {"type": "string"}, "hypothesis": {"type": "string"}, "why": {"type": "string"},
         "builtin_method": {"type": "string"}, "method_artifact": {"type": "string"},
         "params": {"type": "object"},
         "parent_ideas": {"type": "array", "items": {"type": "string"}},
         "cites_posts": {"type": "array", "items": {"type": "string"}}},
                      "required": ["title", "hypothesis"]}},
    {"name": "wait_for_score", "description": "Wait for an idea's dev score (or its failure).",
     "input_schema": {"type": "object", "properties": {"idea_id": {"type": "string"},
                                                       "timeout_s": {"type": "number", "minimum": 1, "maximum": 1800}},
                      "required": ["idea_id"]}},
    {"name": "read_idea", "description": (
        "Any idea of this session (yours or another agent's): its method's source code (built-in or stored "
        "code), parameters, hypothesis, dev score as released with its paired comparisons (against naive_soft, "
        "its parents, the leader), its ancestors, the ideas built on it and the forum posts about it."),
     "input_schema": {"type": "object", "properties": {"idea_id": {"type": "string"}}, "required": ["idea_id"]}},
    {"name": "diff_ideas", "description": "A unified diff of two ideas' method code (and of their parameters).",
     "input_schema": {"type": "object", "properties": {"a": {"type": "string"}, "b": {"type": "string"}},
                      "required": ["a", "b"]}},
    {"name": "run_code", "description": (
        "Run a quick experiment in your private workspace (a sandbox where the data is; no gold label of any "
        "split is there). The code runs as a script with `ctx` in its globals: ctx.train_features / "
        "ctx.train_texts / ctx.weak_soft_labels (B's train part), ctx.heldback_features / ctx.heldback_texts / "
        "ctx.heldback_weak_labels (B's held-back part, weak labels only), ctx.dev_features / ctx.dev_texts "
        "(no labels), ctx.teacher(texts) (the weak teacher on any texts, a budget per run), "
        "ctx.method_context(params, on='heldback'|'dev') (a method's ctx: train part -> held-back rows or dev) "
        "and ctx.agreement(p) (agreement with the held-back weak labels). The trainer.methods library and "
        "stored methods (load('<sha256>')) import as in a method. Set a global `result` (or define "
        "main(ctx)) to return a JSON value. Returns stdout/stderr tails, the result, runtime, CPU-seconds "
        "and the exit status; each agent has a CPU-second budget."),
     "input_schema": {"type": "object", "properties": {
         "code": {"type": "string"},
         "timeout_s": {"type": "number", "minimum": 1, "maximum": 600}}, "required": ["code"]}},
    {"name": "read_primer", "description": (
        "Background knowledge: weak-to-strong supervision, PGR, the literature's methods and their pitfalls, the "
        "method interface and its limits, the built-in methods as measured, and this session's baselines."),
     "input_schema": {"type": "object", "properties": {}}},
    {"name": "read_notes", "description": "Your own notes so far (they outlast the conversation's compaction).",
     "input_schema": {"type": "object", "properties": {"last": {"type": "integer", "minimum": 1, "maximum": 200}}}},
    {"name": "note", "description": "Keep a private note for yourself (kept in the log).",
     "input_schema": {"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]}},
]
TOOL_NAMES = frozenset(t["name"] for t in TOOL_SPECS)


def _workspace_outcome(p: WorkspaceFinished | WorkspaceRefused) -> dict[str, Any]:
    """What an agent reads of its workspace run."""
    if isinstance(p, WorkspaceRefused):
        return {"status": "refused", "reason": p.reason, "spent_cpu_s": p.spent_cpu_s,
                "budget_cpu_s": p.budget_cpu_s}
    out: dict[str, Any] = {
        "status": "ok" if p.ok else "failed", "exit_status": p.exit_status, "error": p.error or None,
        "runtime_s": p.runtime_s, "cpu_s": p.cpu_s, "rows": p.rows, "teacher_queries": p.teacher_queries,
        "stdout": p.stdout, "stderr": p.stderr,
        "result": json.loads(p.result_json) if p.result_json else None,
    }
    if p.stdout_dropped or p.stderr_dropped:
        out["truncated"] = (f"output cut: the first {p.stdout_dropped:,} characters of stdout and "
                            f"{p.stderr_dropped:,} of stderr are not shown")
    if p.violations:
        out["sandbox_violations"] = p.violations
    return out


def _summary(result: Any) -> str:
    text = json.dumps(result, default=str)
    return text if len(text) <= 300 else text[:297] + "..."


class Toolbox:
    def __init__(self, bus: Bus, session_id: str, agent_id: str, *, source: str | None = None) -> None:
        self.bus = bus
        self.session_id = session_id
        self.agent_id = agent_id
        self.source = source or agent_id
        self.artifacts = ArtifactClient(bus, session_id=session_id, timeout=30.0)
        self.outcomes: dict[str, Outcome] = {}
        self.runs: dict[str, asyncio.Future[dict[str, Any]]] = {}  # workspace run id -> its outcome
        self.aliases: dict[str, list[str]] = {}  # an earlier idea -> my duplicates of it (they get its answer)
        self.notes: list[str] = []
        self.ideas = 0
        self.cost_usd = 0.0  # LLM spend (the Claude backend keeps it up to date)
        self.session_over = asyncio.Event()
        self._subs: list[Any] = []
        self._handlers: dict[str, Callable[..., Awaitable[Any]]] = {
            name: getattr(self, f"tool_{name}") for name in TOOL_NAMES
        }
        self.log = structlog.get_logger("agent").bind(agent_id=agent_id)

    def restore(self, history: AgentHistory) -> None:
        """Go on from what this agent did before (a resumed session, a restart): its ideas
        count against its limit, its spend against its budget, its notes are read back, and
        its ideas can be waited for (a pending one is scored when its re-queued run ends)."""
        self.ideas = len(history.ideas)
        self.cost_usd = history.cost_usd
        self.notes = list(history.notes)
        for past in history.ideas:
            outcome = self.outcomes[past.idea_id] = Outcome(past.idea_id)
            if past.status == "scored":
                outcome.score = {"accuracy": past.accuracy, "pgr": past.pgr, "pgr_stderr": past.pgr_stderr,
                                 "from_before_resume": True}
                outcome.done.set()
            elif past.status == "failed":
                outcome.failed = {"message": past.error or "failed", "from_before_resume": True}
                outcome.done.set()

    async def start(self) -> None:
        prefix = f"aar.{self.session_id}"
        for subject in ("score.published", "experiment.failed", "integrity.flagged", "session.draining",
                        "session.ended", "workspace.finished", "workspace.refused", "idea.duplicate"):
            self._subs.append(await self.bus.nc.subscribe(f"{prefix}.{subject}", cb=self._on_event))

    async def close(self) -> None:
        for sub in self._subs:
            await sub.unsubscribe()

    async def _on_event(self, msg: Msg) -> None:
        event = decode_msg(msg)
        if not isinstance(event, Event):
            return
        p = event.payload
        if event.type.startswith("session."):
            self.session_over.set()
            for waiting in self.outcomes.values():
                waiting.done.set()
            return
        if isinstance(p, WorkspaceFinished | WorkspaceRefused):
            run = self.runs.get(p.run_id)
            if run is not None and not run.done() and p.agent_id == self.agent_id:
                run.set_result(_workspace_outcome(p))
            return
        if isinstance(p, IdeaDuplicate):
            await self._duplicate(p)
            return
        idea = getattr(p, "idea_id", None)
        for alias in self.aliases.get(idea, []) if idea else []:  # an earlier idea answered: so are my copies
            if isinstance(p, ScorePublished | ExperimentFailed):
                self._apply(self.outcomes[alias], p)
        outcome = self.outcomes.get(idea) if idea else None
        if outcome is None:
            return
        self._apply(outcome, p)

    async def _duplicate(self, p: IdeaDuplicate) -> None:
        """My idea is a copy of an earlier one: its answer is that idea's (now, or when it comes)."""
        outcome = self.outcomes.get(p.idea_id)
        if outcome is None or p.agent_id != self.agent_id or outcome.duplicate_of is not None:
            return
        outcome.duplicate_of = p.duplicate_of
        self.aliases.setdefault(p.duplicate_of, []).append(p.idea_id)
        earlier = self.outcomes.get(p.duplicate_of)
        if earlier is not None and earlier.done.is_set():  # one of mine, answered already
            outcome.score, outcome.failed = earlier.score, earlier.failed
            outcome.done.set()
            return
        from services.scorer.queries import IDEA

        try:
            view = await self._ask(IDEA, idea_id=p.duplicate_of)
        except (QueryError, ToolError) as exc:
            self.log.warning("duplicate_lookup_failed", idea_id=p.duplicate_of, error=str(exc)[:300])
            return
        if view.get("dev_score") and not outcome.done.is_set():
            outcome.score = {**view["dev_score"], "from_idea": p.duplicate_of}
            outcome.done.set()

    def _apply(self, outcome: Outcome, p: Any) -> None:
        if isinstance(p, ScorePublished) and p.purpose is Purpose.SCORE and p.split is Split.DEV:
            outcome.score = {"accuracy": round(p.accuracy, 4), "accuracy_stderr": round(p.accuracy_stderr, 4),
                             "weak_accuracy": round(p.weak_accuracy, 4), "ceiling_accuracy": round(p.ceiling_accuracy, 4),
                             "pgr": None if p.pgr is None else round(p.pgr, 4),
                             "pgr_stderr": None if p.pgr_stderr is None else round(p.pgr_stderr, 4),
                             "n_seeds": p.n_seeds, "experiment_id": p.experiment_id,
                             # paired, as released: against naive_soft, each parent and the leader
                             "comparisons": [c.model_dump(mode="json") for c in p.comparisons]}
            outcome.done.set()
        elif isinstance(p, ExperimentFailed) and not p.retryable:
            outcome.failed = {"error_class": p.error_class, "message": p.message[:2000],
                              "sandbox_violations": p.sandbox_violations}
            outcome.done.set()
        elif isinstance(p, IntegrityFlagged):
            outcome.flags.append({"check": p.check.value, "severity": p.severity.value, "detail": p.detail})
            if p.check.value == "rate_limit":
                outcome.done.set()

    # -- the dispatcher --------------------------------------------------------------

    async def call(self, tool: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
        """Run a tool; never raises for the agent's mistakes (they come back as ``{"error": ...}``)."""
        args = dict(arguments or {})
        started = time.monotonic()
        error: str | None = None
        handler = self._handlers.get(tool)
        try:
            if handler is None:
                raise ToolError(f"unknown tool {tool!r}; tools: {sorted(TOOL_NAMES)}")
            accepted = set(inspect.signature(handler).parameters)
            unknown = set(args) - accepted
            if unknown:
                raise ToolError(f"{tool} takes {sorted(accepted)}, not {sorted(unknown)}")
            result: dict[str, Any] = await handler(**args)
        except (ToolError, QueryError, PublishRefused, TypeError, ValueError) as exc:
            error = str(exc) or type(exc).__name__
            result = {"error": error}
        recorded = {k: (v if len(json.dumps(v, default=str)) < 2000 else f"<{len(str(v))} chars>")
                    for k, v in args.items()}
        try:
            await self.bus.publish(Event.create(
                AgentToolCalled(agent_id=self.agent_id, tool=tool[:100],
                                arguments=json.loads(json.dumps(recorded, default=str)), ok=error is None,
                                error=None if error is None else error[:4000],
                                latency_s=round(time.monotonic() - started, 4), result_summary=_summary(result)),
                session_id=self.session_id, source=self.source,
            ))
        except PublishRefused as exc:  # over the publish budget: the gateway records the refusal
            self.log.warning("tool_call_not_recorded", tool=tool, code=exc.code, error=str(exc)[:300])
            result = {**result, "warning": f"this call was not recorded: {exc}"}
        return result

    # -- forum -------------------------------------------------------------------

    async def _ask(self, query: Query[Any, Any], /, **fields: Any) -> dict[str, Any]:
        """A query (forum, scorer) in this agent's session; a bad argument is a ToolError
        naming the query, before anything is sent."""
        try:
            request = query.request(session_id=self.session_id, **fields)
        except ValidationError as exc:
            raise ToolError(f"bad {query.name!r} arguments: {exc.errors()[0]['msg']}") from None
        return dict((await self.bus.ask(query, request, timeout=10.0)).model_dump(mode="json"))

    async def tool_read_forum(self, limit: int = 10) -> dict[str, Any]:
        return await self._ask(forum_q.LIST, limit=int(limit))

    async def tool_search_forum(self, query: str, limit: int = 10) -> dict[str, Any]:
        return await self._ask(forum_q.SEARCH, query=str(query), limit=int(limit))

    async def tool_top_findings(self, limit: int = 5) -> dict[str, Any]:
        return await self._ask(forum_q.TOP, limit=int(limit))

    async def tool_read_post(self, post_id: str) -> dict[str, Any]:
        return await self._ask(forum_q.THREAD, post_id=str(post_id))

    async def tool_post_finding(
        self, title: str, body: str, idea_ids: list[str] | None = None, tags: list[str] | None = None,
        reply_to: str | None = None, experiment_ids: list[str] | None = None,
    ) -> dict[str, Any]:
        if not str(title).strip():
            raise ToolError("a post needs a title")
        post_id = "p-" + new_id()
        await self.bus.publish(Event.create(
            ForumPosted(post_id=post_id, agent_id=self.agent_id, title=str(title)[:300], body=str(body)[:20_000],
                        reply_to=reply_to, idea_ids=list(idea_ids or []), experiment_ids=list(experiment_ids or []),
                        tags=[str(t)[:50] for t in (tags or [])][:10]),
            session_id=self.session_id, source=self.source,
        ))
        return {"post_id": post_id}

    async def tool_vote(self, post_id: str, value: int) -> dict[str, Any]:
        if value not in (-1, 1):
            raise ToolError("a vote is 1 or -1")
        await self.bus.publish(Event.create(
            ForumVoted(post_id=str(post_id), agent_id=self.agent_id, value=value),
            session_id=self.session_id, source=self.source,
        ))
        return {"ok": True}

    # -- scores and methods ---------------------------------------------------------

    async def tool_leaderboard(self, limit: int = 10) -> dict[str, Any]:
        return await self._ask(LEADERBOARD, limit=int(limit))

    async def tool_list_methods(self) -> dict[str, Any]:
        from trainer.methods import METHODS
        from trainer.methods.base import HeadConfig

        head = {k: getattr(HeadConfig(), k) for k in HeadConfig.__dataclass_fields__}
        return {"methods": [{"name": m.name, "summary": m.summary, "params": m.defaults} for m in METHODS.values()],
                "head_params": head}

    async def tool_read_method(self, name: str) -> dict[str, Any]:
        from trainer.methods import get_method

        try:
            method = get_method(str(name))
        except LookupError as exc:
            raise ToolError(str(exc)) from None
        return {"name": method.name, "params": method.defaults, "source": inspect.getsource(method.fn)}

    async def tool_write_method(self, code: str, name: str = "method.py") -> dict[str, Any]:
        data = str(code).encode()
        if len(data) > MAX_CODE_BYTES:
            raise ToolError(f"code of {len(data):,} bytes is over the {MAX_CODE_BYTES:,}-byte limit")
        try:
            compile(str(code), name, "exec")
        except SyntaxError as exc:
            raise ToolError(f"the code does not compile: {exc}") from None
        if "def run" not in str(code):
            raise ToolError("the module must define run(ctx)")
        sha = await self.artifacts.put(data, "code", name=str(name)[:200], media_type="text/x-python")
        return {"method_artifact": sha}

    async def tool_propose_idea(
        self, title: str, hypothesis: str, why: str = "", builtin_method: str | None = None,
        method_artifact: str | None = None, params: dict[str, Any] | None = None,
        parent_ideas: list[str] | None = None, cites_posts: list[str] | None = None,
    ) -> dict[str, Any]:
        if self.session_over.is_set():
            raise ToolError("the session is over: no more ideas are scored")
        if (builtin_method is None) == (method_artifact is None):
            raise ToolError("give exactly one of builtin_method or method_artifact")
        if builtin_method is not None:
            from trainer.methods import METHODS

            if builtin_method not in METHODS:
                raise ToolError(f"unknown built-in method {builtin_method!r}; known: {sorted(METHODS)}")
        idea_id = "i-" + new_id()
        payload = IdeaProposed(
            idea_id=idea_id, agent_id=self.agent_id, title=str(title)[:300] or "untitled",
            hypothesis=str(hypothesis) or "(none)", why=str(why), parent_ideas=list(parent_ideas or []),
            cites_posts=list(cites_posts or []), builtin_method=builtin_method, method_artifact=method_artifact,
            params=dict(params or {}),
        )
        self.outcomes[idea_id] = Outcome(idea_id)
        await self.bus.publish(Event.create(payload, session_id=self.session_id, source=self.source,
                                            correlation_id=idea_id))
        self.ideas += 1
        return {"idea_id": idea_id}

    async def tool_wait_for_score(self, idea_id: str, timeout_s: float = 900.0) -> dict[str, Any]:
        outcome = self.outcomes.get(str(idea_id))
        if outcome is None:
            raise ToolError(f"no idea {idea_id!r} of yours is pending")
        try:
            await asyncio.wait_for(outcome.done.wait(), timeout=float(timeout_s))
        except TimeoutError:
            return {**outcome.as_dict(), "status": "timeout"}
        result = outcome.as_dict()
        if result["status"] == "pending" and self.session_over.is_set():
            result["status"] = "session_over"
        return result

    async def _source(self, view: dict[str, Any]) -> str:
        """An idea's method code: the built-in's source, or its stored code artifact."""
        if view.get("builtin_method"):
            from trainer.methods import get_method

            return inspect.getsource(get_method(str(view["builtin_method"])).fn)
        data = await self.artifacts.get(str(view["method_artifact"]))
        return data[:MAX_CODE_BYTES].decode("utf-8", "replace")

    async def tool_read_idea(self, idea_id: str) -> dict[str, Any]:
        from services.scorer.queries import IDEA

        view = await self._ask(IDEA, idea_id=str(idea_id))
        view["source"] = await self._source(view)
        view["posts_about_it"] = (await self._ask(forum_q.LIST, limit=20, idea_id=str(idea_id)))["posts"]
        return view

    async def tool_diff_ideas(self, a: str, b: str) -> dict[str, Any]:
        import difflib

        from services.scorer.queries import IDEA

        views = [await self._ask(IDEA, idea_id=str(i)) for i in (a, b)]
        sources = [await self._source(v) for v in views]
        names = [f"{v['idea_id']} ({v.get('builtin_method') or 'code ' + str(v['method_artifact'])[:12]})"
                 for v in views]
        diff = "".join(difflib.unified_diff(sources[0].splitlines(keepends=True), sources[1].splitlines(keepends=True),
                                            fromfile=names[0], tofile=names[1]))
        params = {k: [views[0]["params"].get(k), views[1]["params"].get(k)]
                  for k in sorted(set(views[0]["params"]) | set(views[1]["params"]))
                  if views[0]["params"].get(k) != views[1]["params"].get(k)}
        return {"a": views[0]["idea_id"], "b": views[1]["idea_id"], "same_code": sources[0] == sources[1],
                "diff": diff[:MAX_CODE_BYTES], "params_changed": params}

    async def tool_run_code(self, code: str, timeout_s: float = 60.0) -> dict[str, Any]:
        if self.session_over.is_set():
            raise ToolError("the session is over: the workspace is closed")
        data = str(code).encode()
        if len(data) > MAX_CODE_BYTES:
            raise ToolError(f"code of {len(data):,} bytes is over the {MAX_CODE_BYTES:,}-byte limit")
        try:
            compile(str(code), "workspace.py", "exec")
        except SyntaxError as exc:
            raise ToolError(f"the code does not compile: {exc}") from None
        wall = min(max(float(timeout_s), 1.0), 600.0)
        sha = await self.artifacts.put(data, "code", name="workspace.py", media_type="text/x-python")
        run_id = "w-" + new_id()
        waiting: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.runs[run_id] = waiting
        try:
            await self.bus.publish(Event.create(
                WorkspaceRequested(run_id=run_id, agent_id=self.agent_id, code_artifact=sha, wall_s=wall),
                session_id=self.session_id, source=self.source, correlation_id=run_id,
            ))
            # The run's own clock starts on a trainer; the wait allows for the queue.
            over: asyncio.Future[Any] = asyncio.ensure_future(self.session_over.wait())
            done, _ = await asyncio.wait([waiting, over], timeout=wall + 300.0,
                                         return_when=asyncio.FIRST_COMPLETED)
            over.cancel()
            if waiting in done:
                return {"run_id": run_id, "code_artifact": sha, **waiting.result()}
            status = "session_over" if self.session_over.is_set() else "timeout"
            return {"run_id": run_id, "code_artifact": sha, "status": status}
        finally:
            self.runs.pop(run_id, None)

    async def tool_read_primer(self) -> dict[str, Any]:
        from . import primer

        session: dict[str, Any] = {}
        try:
            board = await self._ask(LEADERBOARD, limit=1)
            session = {"weak_accuracy": board.get("weak_accuracy"), "ceiling_accuracy": board.get("ceiling_accuracy"),
                       "ideas_scored": board.get("scored")}
        except QueryError as exc:  # baselines not computed yet
            session = {"not_yet": str(exc)[:300]}
        return {"text": primer.TEXT, **primer.structured(), "this_session": session}

    async def tool_read_notes(self, last: int = 50) -> dict[str, Any]:
        n = max(1, min(int(last), 200))
        return {"notes": self.notes[-n:], "total": len(self.notes)}

    async def tool_note(self, text: str) -> dict[str, Any]:
        self.notes.append(str(text)[:5000])
        return {"notes": len(self.notes)}
