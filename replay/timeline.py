"""A session's timeline: one line per event, the noisy kinds (LLM and tool calls,
progress) folded unless asked for."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from .log import Row, us_to_datetime
from .models import UNREAD

NOISY = frozenset({"agent.llm_called", "agent.tool_called", "experiment.progress", "artifact.stored"})
# Payloads neither the read models nor the folded timeline read: ``aar replay SESSION``
# does not load them (tool calls and progress: about a third of a session's events).
UNREAD_FOLDED = UNREAD & NOISY


def _short(value: Any, n: int = 60) -> str:
    text = str(value)
    return text if len(text) <= n else text[: n - 1] + "…"


def describe(row: Row, p: dict[str, Any]) -> str:
    t = row.type
    if t == "session.started":
        return f"{p['name']}: {p['backend']} on {p['dataset']} ({p['weak_model']} -> {p['strong_model']}), {len(p.get('agents', []))} agents"
    if t in ("session.ended", "session.draining"):
        return f"{p['reason']} {p.get('detail', '')}".strip()
    if t == "agent.started":
        return f"{p['agent_id']}: {_short(p['direction'])}"
    if t == "agent.stopped":
        return f"{p['agent_id']}: {p['reason']}"
    if t == "agent.llm_called":
        return f"{p['agent_id']} {p['model']} in={p['input_tokens']} out={p['output_tokens']} ${p['cost_usd']:.4f}"
    if t == "agent.tool_called":
        return f"{p['agent_id']} {p['tool']}{'' if p.get('ok', True) else ' FAILED'}"
    if t == "idea.proposed":
        method = p.get("builtin_method") or f"code:{(p.get('method_artifact') or '')[:10]}"
        parents = f" <- {', '.join(p['parent_ideas'])}" if p.get("parent_ideas") else ""
        return f"{p['agent_id']} {p['idea_id']} {method} {_short(json.dumps(p.get('params', {})), 50)}{parents}"
    if t == "experiment.requested":
        return f"{p['experiment_id']} {p.get('purpose', 'score')}/{p.get('split', 'dev')} {p['dataset']} idea {p.get('idea_id')}"
    if t in ("experiment.started", "experiment.progress", "experiment.finished"):
        extra = f" {p['fraction']:.0%}" if t == "experiment.progress" else (
            f" {p['runtime_s']:.1f}s" if t == "experiment.finished" else "")
        return f"{p['experiment_id']} on {p['trainer_id']}{extra}"
    if t == "experiment.failed":
        return f"{p['experiment_id']} {p['error_class']}: {_short(p['message'])}"
    if t in ("score.published", "score.withheld"):
        pgr = "null" if p.get("pgr") is None else f"{p['pgr']:.3f}"
        return (f"{p['experiment_id']} {p.get('purpose', 'score')}/{p['split']} acc {p['accuracy']:.4f} PGR {pgr}"
                f" idea {p.get('idea_id')}")
    if t == "baseline.computed":
        return f"{p['kind']} {p['dataset']}/{p['split']} {p['mean']:.4f}"
    if t == "integrity.flagged":
        return f"{p['check']} ({p.get('severity')}) {_short(p['detail'], 80)}"
    if t == "forum.posted":
        return f"{p['agent_id']} {p['post_id']} {_short(p['title'])!r}"
    if t == "forum.voted":
        return f"{p['agent_id']} {p['value']:+d} on {p['post_id']}"
    if t == "forum.moderated":
        return f"{p['action']} {p['post_id']}: {_short(p['reason'])}"
    if t == "artifact.stored":
        return f"{p['kind']} {p['sha256'][:12]} {p['size']} B"
    return _short(row.payload, 80)


def lines(rows: Iterable[Row], *, all_events: bool = False) -> Iterator[str]:
    """Timeline lines: ``+seconds  HH:MM:SS  type  what``; folded kinds are summarised
    as one ``(... N llm/tool/progress events)`` line between the others."""
    t0: int | None = None
    folded: dict[str, int] = {}

    def flush() -> Iterator[str]:
        if folded:
            yield "            (" + ", ".join(f"{n} {k}" for k, n in sorted(folded.items())) + ")"
            folded.clear()

    for row in rows:
        t0 = row.time_us if t0 is None else t0
        if row.type in NOISY and not all_events:
            folded[row.type] = folded.get(row.type, 0) + 1
            continue
        yield from flush()
        at = us_to_datetime(row.time_us)
        yield (f"{(row.time_us - t0) / 1e6:+9.1f}s {at:%H:%M:%S} {row.type:<21} "
               f"{describe(row, json.loads(row.payload))}")
    yield from flush()
