"""A session's progress and each agent's history, rebuilt from the log.

What ``aar up --resume`` continues from (the orchestrator reads it at start):
:func:`progress` gives the dev scores so far, the experiments left in flight, each
agent's spend and the wall clock of the earlier runs; :func:`agent_history` gives one
agent its own ideas and scores, notes, spend and a summary of its past turns (it is
part of the agent's assignment whenever the log knows the agent: after a resume, or
when its process was restarted after a crash).

Every query goes through an :data:`Ask` (the recorder's audit query on a running
stack, a read-only file in tests): module SQL, every value a bound ``?``.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bus import Bus
from core.audit import AuditRequest, Param
from schemas.session import EndReason
from services.agents.assignment import AgentHistory, PastIdea
from services.agents.pricing import charged_usd

# (sql, params) -> rows. Raise when an answer was cut short: a partial history is wrong.
Ask = Callable[[str, Sequence[Param]], Awaitable[list[list[Any]]]]

SUMMARY_CHARS = 12_000  # the summary of past turns an agent gets back (the newest kept)
NOTES_KEPT = 200
ARG_CHARS = 80  # one argument's value, in the summary


def recorder_ask(bus: Bus, timeout: float = 30.0) -> Ask:
    """An :data:`Ask` through the recorder's audit query."""
    from services.recorder.queries import AUDIT

    async def ask(sql: str, params: Sequence[Param]) -> list[list[Any]]:
        result = await bus.ask(AUDIT, AuditRequest(sql=sql, params=list(params)), timeout=timeout)
        if result.truncated:
            raise RuntimeError(f"the log's answer was cut short ({result.truncated_reason}): cannot rebuild from it")
        return [list(r) for r in result.rows]

    return ask


@dataclass
class Progress:
    """How far a session got before this run of it."""

    resumes: int = 0  # session.resumed events so far
    previous_end: EndReason | None = None  # how the last run ended (None: killed, or never ended)
    elapsed_s: float = 0.0  # wall clock of the earlier runs (each from its start to its last event)
    scored: set[str] = field(default_factory=set)  # dev score experiments
    in_flight: set[str] = field(default_factory=set)  # requested, neither scored nor finally failed
    settled: set[str] = field(default_factory=set)  # scored, or finally failed
    spent: dict[str, float] = field(default_factory=dict)  # agent id -> USD charged

    @property
    def cost_usd(self) -> float:
        return sum(self.spent.values())


async def progress(ask: Ask, session_id: str, before_us: int) -> Progress:
    """The session's progress from its events before ``before_us`` (microseconds since
    the epoch: when this run began; what this run's services publish is not history)."""
    out = Progress()
    marks = await ask(
        "SELECT epoch_us(time), type, payload->>'reason' FROM events WHERE session_id = ? AND type IN "
        "('session.started', 'session.resumed', 'session.ended') AND epoch_us(time) < ? ORDER BY time, id",
        [session_id, before_us])
    starts = [int(t) for t, kind, _ in marks if kind != "session.ended"]
    out.resumes = sum(1 for _, kind, _ in marks if kind == "session.resumed")
    if marks and marks[-1][1] == "session.ended":
        out.previous_end = EndReason(marks[-1][2])
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else before_us
        last = await ask("SELECT max(epoch_us(time)) FROM events WHERE session_id = ? AND epoch_us(time) >= ? "
                         "AND epoch_us(time) < ?", [session_id, start, end])
        if last and last[0][0] is not None:
            out.elapsed_s += (int(last[0][0]) - start) / 1e6
    base = "session_id = ? AND epoch_us(time) < ?"
    out.scored = {str(r[0]) for r in await ask(
        f"SELECT DISTINCT payload->>'experiment_id' FROM events WHERE {base} AND type = 'score.published' "
        "AND payload->>'split' = 'dev' AND coalesce(payload->>'purpose', 'score') = 'score'",
        [session_id, before_us])}
    requested = {str(r[0]) for r in await ask(
        f"SELECT DISTINCT payload->>'experiment_id' FROM events WHERE {base} AND type = 'experiment.requested'",
        [session_id, before_us])}
    settled = {str(r[0]) for r in await ask(
        f"SELECT DISTINCT payload->>'experiment_id' FROM events WHERE {base} AND (type IN ('score.published', "
        "'score.withheld') OR (type = 'experiment.failed' AND coalesce(payload->>'retryable', 'false') = 'false'))",
        [session_id, before_us])}
    out.in_flight = requested - settled
    out.settled = settled
    for agent, cost in (await _spend(ask, session_id, before_us)).items():
        out.spent[agent] = cost
    return out


async def _spend(ask: Ask, session_id: str, before_us: int, agent_id: str | None = None) -> dict[str, float]:
    """Each agent's LLM spend, call by call as the orchestrator charges it (the price
    table's figure for the tokens, never more than the agent claimed)."""
    sql = ("SELECT payload->>'agent_id', payload->>'model', (payload->>'cost_usd')::DOUBLE, "
           "(payload->>'input_tokens')::BIGINT, (payload->>'output_tokens')::BIGINT, "
           "coalesce((payload->>'cache_read_tokens')::BIGINT, 0), coalesce((payload->>'cache_write_tokens')::BIGINT, 0) "
           "FROM events WHERE session_id = ? AND epoch_us(time) < ? AND type = 'agent.llm_called'")
    params: list[Param] = [session_id, before_us]
    if agent_id is not None:
        sql += " AND payload->>'agent_id' = ?"
        params.append(agent_id)
    spent: dict[str, float] = {}
    for agent, model, claimed, tin, tout, cread, cwrite in await ask(sql, params):
        spent[str(agent)] = spent.get(str(agent), 0.0) + charged_usd(
            str(model), float(claimed), int(tin), int(tout), int(cread), int(cwrite))
    return spent


async def agent_history(ask: Ask, session_id: str, agent_id: str, before_us: int) -> AgentHistory | None:
    """What ``agent_id`` did in the session before ``before_us``; None when nothing."""
    ideas = await ask(
        "SELECT idea_id, title, builtin_method, method_artifact, params, parent_ideas FROM ideas "
        "WHERE session_id = ? AND agent_id = ? AND epoch_us(time) < ? ORDER BY time, event_id",
        [session_id, agent_id, before_us])
    calls = await ask(
        "SELECT epoch_us(time), payload->>'tool', payload->>'ok', payload->'arguments', payload->>'result_summary', "
        "payload->>'error' FROM events WHERE session_id = ? AND type = 'agent.tool_called' "
        "AND payload->>'agent_id' = ? AND epoch_us(time) < ? ORDER BY time, id",
        [session_id, agent_id, before_us])
    if not ideas and not calls:
        return None
    scores = {str(r[0]): r[1:] for r in await ask(
        # score.published only: what agents may see (released, dev); never a withheld score
        "SELECT payload->>'idea_id', (payload->>'pgr')::DOUBLE, (payload->>'pgr_stderr')::DOUBLE, "
        "(payload->>'accuracy')::DOUBLE FROM events WHERE session_id = ? AND type = 'score.published' "
        "AND payload->>'agent_id' = ? AND payload->>'split' = 'dev' AND coalesce(payload->>'purpose', 'score') = 'score' "
        "AND epoch_us(time) < ?", [session_id, agent_id, before_us])}
    failures = {str(r[0]): str(r[1] or "") + (": " + str(r[2]) if r[2] else "") for r in await ask(
        # a final failure only (a retryable one is run again: the idea is still pending)
        "SELECT r.payload->>'idea_id', f.payload->>'error_class', f.payload->>'message' FROM events f "
        "JOIN events r ON r.session_id = f.session_id AND r.type = 'experiment.requested' "
        "AND r.payload->>'experiment_id' = f.payload->>'experiment_id' "
        "WHERE f.session_id = ? AND f.type = 'experiment.failed' AND coalesce(f.payload->>'retryable', 'false') = 'false' "
        "AND r.payload->>'agent_id' = ? AND r.payload->>'purpose' = 'score' AND r.payload->>'split' = 'dev' "
        "AND epoch_us(f.time) < ?", [session_id, agent_id, before_us])}
    resumes = await ask("SELECT count(*) FROM events WHERE session_id = ? AND type = 'session.resumed' "
                        "AND epoch_us(time) < ?", [session_id, before_us])
    past: list[PastIdea] = []
    for idea_id, title, builtin, artifact, params, parents in ideas:
        idea_id = str(idea_id)
        score = scores.get(idea_id)
        status = "scored" if score is not None else "failed" if idea_id in failures else "pending"
        past.append(PastIdea(
            idea_id=idea_id, title=str(title or ""), method=str(builtin) if builtin else f"code:{artifact}",
            params=_json(params) or {}, parent_ideas=list(_json(parents) or []), status=status,
            pgr=None if score is None or score[0] is None else float(score[0]),
            pgr_stderr=None if score is None or score[1] is None else float(score[1]),
            accuracy=None if score is None or score[2] is None else float(score[2]),
            error=failures.get(idea_id, "")[:500] or None,
        ))
    notes = [str((_json(args) or {}).get("text", "")) for _, tool, ok, args, _, _ in calls
             if tool == "note" and ok == "true"]
    spent = await _spend(ask, session_id, before_us, agent_id)
    return AgentHistory(
        resumes=int(resumes[0][0]) if resumes else 0, ideas=past, notes=notes[-NOTES_KEPT:],
        cost_usd=round(spent.get(agent_id, 0.0), 9), tool_calls=len(calls), summary=summarize_turns(calls),
    )


def _json(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _arg(value: Any) -> str:
    text = json.dumps(value, default=str, ensure_ascii=False)
    return text if len(text) <= ARG_CHARS else text[:ARG_CHARS - 3] + "..."


def summarize_turns(calls: Sequence[Sequence[Any]], limit: int = SUMMARY_CHARS) -> str:
    """One line per past tool call, oldest first: time since the first call, the tool,
    its arguments (each cut short) and what came back (the logged summary, or the
    error). Past ``limit`` characters the oldest lines go, and the first line says how
    many."""
    if not calls:
        return ""
    t0 = int(calls[0][0])
    lines = []
    for at, tool, ok, args, result, error in calls:
        seconds = max(0, (int(at) - t0) // 1_000_000)
        shown = ", ".join(f"{k}={_arg(v)}" for k, v in (_json(args) or {}).items()) if isinstance(
            _json(args), dict) else ""
        outcome = f"error: {str(error)[:200]}" if ok != "true" else str(result or "")[:300]
        lines.append(f"[+{seconds // 3600:d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}] {tool}({shown}) -> {outcome}")
    kept: list[str] = []
    size = 0
    for line in reversed(lines):
        if size + len(line) + 1 > limit:
            break
        kept.append(line)
        size += len(line) + 1
    dropped = len(lines) - len(kept)
    head = [f"({dropped} older tool calls not shown)"] if dropped else []
    return "\n".join([*head, *reversed(kept)])
