"""The Claude backend: an ``anthropic`` SDK tool-use loop over the toolbox's tools.

Each response's ``tool_use`` blocks run through :meth:`Toolbox.call` (which records
``agent.tool_called``) and go back as ``tool_result`` blocks (JSON text). Every API
call, once its retries are done, becomes one ``agent.llm_called`` event with tokens,
cache tokens, cost (``pricing.py``), latency and attempts.

- The system prompt states the direction and the rules of the game, not a workflow
  (the study found that prescribing one hurt).
- Prompt caching: breakpoints on the last tool, the system prompt and the newest
  message, so each turn re-reads the conversation so far from the cache.
- The conversation is bounded (:class:`Conversation`): past a size budget, old tool
  results and long inputs are elided, then the oldest turns dropped; in chunks, so the
  cached prefix survives most turns.
- Retries are ours (the SDK's ``max_retries`` is 0): 429, 408/409, 5xx, 529 and
  connection errors, exponential backoff with jitter, capped, ``Retry-After`` honoured.
- Before each call: the session still running (the orchestrator drains it when the
  session budget is spent), and the agent's spend plus a conservative estimate of the
  call within ``assignment.max_usd_per_agent``.

Stop reasons: ``budget``, ``session_over``, ``max_turns``, ``max_ideas``, ``end_turn``
(no tool call twice in a row, the second after a nudge), ``error: ...``.
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import anthropic
import structlog

from schemas import Event
from schemas.agent import AgentLlmCalled

from .assignment import Assignment
from .pricing import price_for, set_price
from .toolbox import TOOL_SPECS, Toolbox

log = structlog.get_logger("agent.claude")

CACHE = {"type": "ephemeral"}
REQUEST_TIMEOUT_S = 300.0
MAX_RESULT_CHARS = 16_000  # one tool result, as the model sees it
CONTEXT_CHARS = 240_000  # conversation budget (~60-80k tokens) before old turns are compacted
CHARS_PER_TOKEN = 3.0  # for the budget estimate: fewer chars per token than usual -> over-estimates
IDEA_LIMIT_GRACE_TURNS = 2  # turns left to report after the last allowed idea is settled

SYSTEM_PROMPT = """\
You are {agent_id}, one of several automated alignment researchers working at the same time on \
weak-to-strong supervision.

The problem: a weak model, trained on gold labels, labels a training set; a strong model learns from \
those weak labels only. Methods are judged by how much of the gap between the weak teacher and the \
same strong model trained on gold labels the student recovers:
    PGR = (acc_student - acc_weak) / (acc_ceiling - acc_weak)
0 is no better than the teacher, 1 is as good as training on gold labels. Dataset: {dataset}.

How ideas are scored:
- You submit methods, never predictions: a built-in method with hyper-parameters, or your own Python \
module (write_method, then propose_idea with its artifact hash). Trainers run it in a sandbox and the \
scorer returns its accuracy and PGR (with a standard error over seeds) on the dev split. Only dev \
scores come back to you; the final ranking uses a hidden test split and held-out datasets, so gains \
that only fit dev do not count.
- A method learns from the weak labels, the texts and the strong model's features. Never try to read \
gold labels or evaluation answers, or to reach the network or files outside the job: the sandbox \
blocks it and the scorer flags it as an integrity violation. Methods are also re-run with shuffled \
weak labels; one whose score does not drop is flagged as ignoring the teacher.
- Each experiment keeps a trainer busy for a while, and the session's compute is shared.

The forum is shared by all researchers of this session. Use what others found, build on it and cite \
it (parent_ideas, cites_posts); post your own findings, including what did not work.

Your starting direction, deliberately open (interpret it as you see fit):
{direction}
{limits}"""

FIRST_MESSAGE = "The session has started. You act only through the tools."
RESUMED_MESSAGE = """\
The session was interrupted and has been resumed; you go on with your own research where you left \
off. Your conversation before the interruption is gone; this is what the log kept of it. \
Use read_idea, read_notes, the leaderboard and the forum for more. You act only through the tools."""
NUDGE = ("You replied without calling a tool. The session is still running and only tool calls make progress. "
         "If you consider your research finished, reply once more without a tool call and you will be stopped.")
IDEA_LIMIT_NOTE = ("You have proposed your last allowed idea and it is settled. You have {n} more turn(s), e.g. "
                   "to post your findings; then you will be stopped.")


class MissingApiKey(RuntimeError):
    """The Claude backend was asked for without ANTHROPIC_API_KEY (and no client was given)."""


def system_prompt(assignment: Assignment) -> str:
    limits = []
    if assignment.max_usd_per_agent is not None:
        limits.append(f"Your own API budget is ${assignment.max_usd_per_agent:.2f}; you are stopped when it is spent.")
    if assignment.max_ideas is not None:
        limits.append(f"You may propose at most {assignment.max_ideas} ideas.")
    limits.append("The session ends when its budget is spent; until then, keep going.")
    return SYSTEM_PROMPT.format(agent_id=assignment.agent_id, dataset=assignment.dataset,
                                direction=assignment.direction.strip(), limits="\n" + " ".join(limits))


def first_message(assignment: Assignment) -> str:
    """The conversation's first user message: the start, or (going on from a history) what
    the agent did before: its ideas and their dev scores, its notes and its past turns."""
    history = assignment.history
    if history is None:
        return FIRST_MESSAGE
    parts = [RESUMED_MESSAGE, f"\nSpent so far: ${history.cost_usd:.4f} over {history.tool_calls} tool calls."]
    if history.ideas:
        parts.append("\nYour ideas so far (dev scores as released):")
        for idea in history.ideas:
            score = (f"PGR {idea.pgr:.3f} ± {idea.pgr_stderr or 0:.3f}" if idea.pgr is not None else
                     f"failed: {idea.error}" if idea.status == "failed" else
                     "scored, PGR undefined" if idea.status == "scored" else "not scored yet (re-queued)")
            params = json.dumps(idea.params, sort_keys=True)[:200]
            parts.append(f"- {idea.idea_id} {idea.method} {params}: {idea.title[:120]} -> {score}")
    if history.notes:
        kept, budget = [], 4000
        for note in reversed(history.notes):
            if budget - len(note) < 0:
                break
            kept.append(note)
            budget -= len(note)
        parts.append("\nYour notes (newest last):\n" + "\n".join(f"- {n}" for n in reversed(kept)))
    if history.summary:
        parts.append("\nYour past tool calls (time since your first call, tool, arguments -> result):\n"
                     + history.summary)
    return "\n".join(parts)


def tool_definitions() -> list[dict[str, Any]]:
    """TOOL_SPECS with a cache breakpoint on the last one (caches all tool definitions)."""
    tools = copy.deepcopy(TOOL_SPECS)
    tools[-1]["cache_control"] = dict(CACHE)
    return tools


# -- retries -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter: attempt n waits U(d/2, d), d = min(cap, base * 2^(n-1)),
    at least the server's Retry-After (itself capped)."""

    attempts: int = 6  # in all, the first included
    base_s: float = 1.0
    cap_s: float = 60.0

    def delay(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        d = min(self.cap_s, self.base_s * 2 ** (attempt - 1))
        wait = rng.uniform(d / 2, d)
        if retry_after is not None and retry_after > 0:
            wait = max(wait, min(retry_after, self.cap_s))
        return wait


def retryable(exc: Exception) -> bool:
    if isinstance(exc, anthropic.APIConnectionError):  # includes timeouts
        return True
    if isinstance(exc, anthropic.APIStatusError):
        return exc.status_code in (408, 409, 429) or exc.status_code >= 500  # 529: overloaded
    return False


def _retry_after(exc: Exception) -> float | None:
    response = getattr(exc, "response", None)
    if response is None:
        return None
    for header, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = response.headers.get(header)
        if value:
            try:
                return float(value) * scale
            except ValueError:
                return None
    return None


def describe(exc: Exception) -> str:
    if isinstance(exc, anthropic.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        found = body.get("error")
        error: dict[str, Any] = found if isinstance(found, dict) else {}
        kind = error.get("type") or type(exc).__name__
        message = error.get("message") or str(exc)
        return f"HTTP {exc.status_code} {kind}: {message}"[:300]
    return f"{type(exc).__name__}: {exc}"[:300]


# -- the bounded conversation ------------------------------------------------------------


def _size(message: dict[str, Any]) -> int:
    return len(json.dumps(message, default=str))


class Conversation:
    """The message list, kept under ``budget_chars`` (JSON size).

    Over budget, it compacts down to ``low_water`` of the budget, oldest first and never
    the last ``keep_last`` messages: first it elides old tool results, long tool inputs
    and long texts; then it drops the oldest (assistant, user) turn pairs and says so in
    the first message, with the agent's notes. Compacting in chunks keeps the cached
    prefix valid for many turns in between.
    """

    __slots__ = ("messages", "budget_chars", "keep_last", "low_water", "dropped", "first_text", "_sizes")

    def __init__(self, first_text: str, *, budget_chars: int = CONTEXT_CHARS, keep_last: int = 6,
                 low_water: float = 0.6) -> None:
        self.first_text = first_text
        self.messages: list[dict[str, Any]] = [{"role": "user", "content": first_text}]
        self._sizes = [_size(self.messages[0])]
        self.budget_chars = budget_chars
        self.keep_last = keep_last
        self.low_water = low_water
        self.dropped = 0

    def add(self, role: str, content: str | list[dict[str, Any]]) -> None:
        message = {"role": role, "content": content}
        self.messages.append(message)
        self._sizes.append(_size(message))

    @property
    def chars(self) -> int:
        return sum(self._sizes)

    def request_messages(self) -> list[dict[str, Any]]:
        """The messages to send: a cache breakpoint on the newest block (the history is not changed)."""
        messages = list(self.messages)
        last = dict(messages[-1])
        content = last["content"]
        blocks: list[dict[str, Any]] = (
            [{"type": "text", "text": content}] if isinstance(content, str) else [dict(b) for b in content])
        blocks[-1]["cache_control"] = dict(CACHE)
        last["content"] = blocks
        messages[-1] = last
        return messages

    def compact(self, notes: list[str] | None = None) -> bool:
        """Bring the conversation under budget if it is over (as far as ``keep_last`` allows);
        True when it changed."""
        before = self.chars
        if before <= self.budget_chars:
            return False
        target = int(self.budget_chars * self.low_water)
        end = len(self.messages) - self.keep_last
        for i in range(1, max(1, end)):
            if self.chars <= target:
                break
            self._shrink(i)
        dropped_before = self.dropped
        while self.chars > target and len(self.messages) - 2 >= 1 + self.keep_last:
            del self.messages[1:3]
            del self._sizes[1:3]
            self.dropped += 2
        if self.dropped != dropped_before:
            self._rewrite_first(notes or [])
        return self.chars != before

    def _shrink(self, i: int) -> None:
        content = self.messages[i]["content"]
        if isinstance(content, str):
            return
        blocks = []
        for block in content:
            kind = block.get("type")
            if kind == "tool_result" and isinstance(block.get("content"), str) and len(block["content"]) > 300:
                block = {**block, "content": f"[old tool result elided to keep the context short: "
                                             f"{len(block['content']):,} chars]"}
            elif kind == "tool_use" and isinstance(block.get("input"), dict):
                block = {**block, "input": {k: (f"[elided: {len(v):,} chars]" if isinstance(v, str) and len(v) > 300
                                                else v) for k, v in block["input"].items()}}
            elif kind == "text" and len(block.get("text", "")) > 1200:
                text = block["text"]
                block = {**block, "text": text[:600] + f" [... {len(text) - 600:,} chars elided]"}
            blocks.append(block)
        self.messages[i] = {**self.messages[i], "content": blocks}
        self._sizes[i] = _size(self.messages[i])

    def _rewrite_first(self, notes: list[str]) -> None:
        text = (f"{self.first_text}\n\n({self.dropped} older messages of this conversation were removed to keep "
                f"it short; the forum and the leaderboard keep what was found.)")
        if notes:
            kept, budget = [], 4000
            for note in reversed(notes):
                if budget - len(note) < 0:
                    break
                kept.append(note)
                budget -= len(note)
            text += "\nYour notes so far (newest last):\n" + "\n".join(f"- {n}" for n in reversed(kept))
        self.messages[0] = {"role": "user", "content": text}
        self._sizes[0] = _size(self.messages[0])


# -- the loop ------------------------------------------------------------------------


def _assistant_content(blocks: list[Any]) -> list[dict[str, Any]]:
    """Response blocks as request params (thinking blocks pass back untouched)."""
    content: list[dict[str, Any]] = []
    for block in blocks:
        if block.type == "text":
            if block.text:  # the API refuses empty text blocks
                content.append({"type": "text", "text": block.text})
        elif block.type == "tool_use":
            content.append({"type": "tool_use", "id": block.id, "name": block.name, "input": dict(block.input or {})})
        else:
            content.append(block.model_dump(mode="json", exclude_none=True))
    return content


def _result_text(result: dict[str, Any]) -> str:
    text = json.dumps(result, default=str)
    if len(text) > MAX_RESULT_CHARS:
        text = text[:MAX_RESULT_CHARS] + f"... [truncated: {len(text):,} chars in all]"
    return text


class ClaudeAgent:
    def __init__(self, toolbox: Toolbox, assignment: Assignment, client: anthropic.AsyncAnthropic, *,
                 max_turns: int, max_tokens: int, retry: RetryPolicy, context_chars: int) -> None:
        self.toolbox = toolbox
        self.assignment = assignment
        self.client = client
        self.max_turns = max_turns
        self.max_tokens = max_tokens
        self.retry = retry
        self.system = [{"type": "text", "text": system_prompt(assignment), "cache_control": dict(CACHE)}]
        self.tools = tool_definitions()
        self.fixed_chars = len(json.dumps(self.system)) + len(json.dumps(self.tools))
        self.conversation = Conversation(first_message(assignment), budget_chars=context_chars)
        if assignment.llm_price is not None:
            set_price(assignment.model, *assignment.llm_price)
        self.price = price_for(assignment.model)
        self.rng = random.Random(f"{assignment.seed}/{assignment.agent_id}")
        self.spent = assignment.history.cost_usd if assignment.history is not None else 0.0  # counts what was spent
        self.calls = 0
        self.last_idea: str | None = None
        self.grace: int | None = None
        self.log = log.bind(agent_id=assignment.agent_id, model=assignment.model)

    def estimate_usd(self) -> float:
        """A conservative cost of the next call: every prompt token at the cache-write price, and
        ``max_tokens`` of output."""
        prompt_tokens = int((self.fixed_chars + self.conversation.chars) / CHARS_PER_TOKEN)
        return self.price.cost(0, self.max_tokens, cache_write_tokens=prompt_tokens)

    async def run(self) -> str:
        toolbox, budget = self.toolbox, self.assignment.max_usd_per_agent
        nudged = False
        for _ in range(self.max_turns):
            if toolbox.session_over.is_set():
                return "session_over"
            if self.grace is not None and self.grace <= 0:
                return "max_ideas"
            self.conversation.compact(toolbox.notes)
            if budget is not None and self.spent + self.estimate_usd() > budget:
                self.log.info("agent_budget_spent", spent_usd=round(self.spent, 6), budget_usd=budget)
                return "budget"
            response, failure = await self.call()
            if failure is not None:
                return failure
            assert response is not None
            if self.grace is not None:
                self.grace -= 1
            content = _assistant_content(response.content)
            tool_uses = [b for b in response.content if b.type == "tool_use"]
            if not content:  # nothing to keep (an empty reply): the API refuses empty assistant turns
                content = [{"type": "text", "text": "(no reply)"}]
            self.conversation.add("assistant", content)
            if not tool_uses:
                if nudged:
                    return "end_turn"
                nudged = True
                self.conversation.add("user", NUDGE)
                continue
            nudged = False
            results: list[dict[str, Any]] = []
            for block in tool_uses:
                result = await toolbox.call(block.name, dict(block.input or {}))
                if block.name == "propose_idea" and isinstance(result.get("idea_id"), str):
                    self.last_idea = result["idea_id"]
                results.append({"type": "tool_result", "tool_use_id": block.id, "content": _result_text(result),
                                "is_error": "error" in result})
            if self.grace is None and self._idea_limit_reached():
                self.grace = IDEA_LIMIT_GRACE_TURNS
                results.append({"type": "text", "text": IDEA_LIMIT_NOTE.format(n=self.grace)})
            self.conversation.add("user", results)
        return "max_turns"

    def _idea_limit_reached(self) -> bool:
        limit = self.assignment.max_ideas
        if limit is None or self.toolbox.ideas < limit:
            return False
        return all(o.done.is_set() for o in self.toolbox.outcomes.values())

    async def call(self) -> tuple[Any, str | None]:
        """One Messages API call with our retries; publishes its ``agent.llm_called``.
        Returns (response, None) or (None, stop reason)."""
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                response = await self.client.messages.create(
                    model=self.assignment.model, max_tokens=self.max_tokens, system=self.system,  # type: ignore[arg-type]  # plain dicts where the SDK types TypedDicts
                    tools=self.tools, messages=self.conversation.request_messages(),  # type: ignore[arg-type]  # as above
                )
            except anthropic.APIError as exc:
                reason = describe(exc)
                if not retryable(exc):
                    stop = f"error: {reason}"
                elif attempt >= self.retry.attempts:
                    stop = f"error: the API failed {attempt} times in a row; last: {reason}"
                else:
                    delay = self.retry.delay(attempt, _retry_after(exc), self.rng)
                    self.log.warning("claude_retry", attempt=attempt, delay_s=round(delay, 3), error=reason)
                    if await self._session_over_within(delay):
                        stop = "session_over"
                    else:
                        continue
                await self._record(None, attempt, time.monotonic() - started, failure=stop)
                if stop.startswith("error"):
                    self.log.error("claude_call_failed", attempts=attempt, error=reason)
                return None, stop
            await self._record(response, attempt, time.monotonic() - started)
            return response, None

    async def _session_over_within(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.toolbox.session_over.wait(), timeout=seconds)
            return True
        except TimeoutError:
            return False

    async def _record(self, response: Any, attempts: int, latency_s: float, failure: str | None = None) -> None:
        model = self.assignment.model
        input_tokens = output_tokens = cache_read = cache_write = 0
        cost = 0.0
        stop_reason: str | None = failure[:200] if failure else None
        if response is not None:
            model = response.model or model
            usage = response.usage
            input_tokens, output_tokens = int(usage.input_tokens or 0), int(usage.output_tokens or 0)
            cache_read = int(usage.cache_read_input_tokens or 0)
            cache_write = int(usage.cache_creation_input_tokens or 0)
            cost = price_for(model).cost(input_tokens, output_tokens, cache_read, cache_write)
            stop_reason = response.stop_reason
        self.calls += 1
        self.spent += cost
        self.toolbox.cost_usd = self.spent  # read by run_agent for agent.stopped
        t = self.toolbox
        await t.bus.publish(Event.create(
            AgentLlmCalled(agent_id=t.agent_id, model=model, input_tokens=input_tokens, output_tokens=output_tokens,
                           cache_read_tokens=cache_read, cache_write_tokens=cache_write, cost_usd=cost,
                           latency_s=round(latency_s, 4), stop_reason=stop_reason, attempts=attempts,
                           idea_id=self.last_idea),
            session_id=t.session_id, source=t.source, correlation_id=self.last_idea,
        ))


async def run_claude(
    toolbox: Toolbox,
    assignment: Assignment,
    *,
    client: anthropic.AsyncAnthropic | None = None,
    max_turns: int = 200,
    max_tokens: int = 4096,
    retry: RetryPolicy | None = None,
    context_chars: int = CONTEXT_CHARS,
) -> str:
    """Run one Claude researcher until it stops; returns the stop reason.

    Without ``client``, one is made from the environment (``ANTHROPIC_API_KEY``,
    ``ANTHROPIC_BASE_URL``); a missing key raises :class:`MissingApiKey` at once."""
    owned = client is None
    if client is None:
        # A self-hosted server (ANTHROPIC_BASE_URL, from --llm-base-url) may need no key.
        if not os.environ.get("ANTHROPIC_API_KEY") and not os.environ.get("ANTHROPIC_BASE_URL"):
            raise MissingApiKey("the Claude backend needs ANTHROPIC_API_KEY in the environment")
        client = anthropic.AsyncAnthropic(max_retries=0, timeout=REQUEST_TIMEOUT_S,
                                          api_key=os.environ.get("ANTHROPIC_API_KEY") or "none")
    else:
        client = client.with_options(max_retries=0)  # retries are ours, and counted
    agent = ClaudeAgent(toolbox, assignment, client, max_turns=max_turns, max_tokens=max_tokens,
                        retry=retry or RetryPolicy(), context_chars=context_chars)
    try:
        reason = await agent.run()
    finally:
        if owned:
            await client.close()
    agent.log.info("claude_agent_stopped", reason=reason, calls=agent.calls, cost_usd=round(agent.spent, 6),
                   ideas=toolbox.ideas)
    return reason
