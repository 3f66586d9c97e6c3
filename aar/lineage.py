"""``aar lineage ID``: the chain behind a score, an experiment or an idea.

Plain SQL over the recorder's views: the agent and its direction, the idea's
hypothesis, its ancestors (parent ideas, recursively) and the forum posts it
cites, the method artifact, every experiment and score, and integrity flags.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rich.console import Console
from rich.table import Table

from services.recorder.audit import sql_literal

Query = Callable[[str], dict[str, Any]]


class LineageError(LookupError):
    def __str__(self) -> str:
        return str(self.args[0])


def _rows(query: Query, sql: str) -> list[dict[str, Any]]:
    result = query(sql)
    return [dict(zip(result["columns"], row)) for row in result["rows"]]


def resolve(query: Query, any_id: str) -> tuple[str, str, str]:
    """(session_id, idea_id, what the id was) for an idea, experiment or score event id."""
    i = sql_literal(any_id)
    found = _rows(query, f"""
        SELECT session_id, idea_id, 'idea' AS kind FROM ideas WHERE idea_id = {i}
        UNION ALL SELECT session_id, idea_id, 'experiment' FROM experiments WHERE experiment_id = {i}
        UNION ALL SELECT session_id, idea_id, 'score' FROM scores WHERE event_id = {i} OR experiment_id = {i}
        LIMIT 1""")
    if not found or found[0]["idea_id"] is None:
        raise LineageError(f"no idea, experiment or score with id {any_id!r} (baseline runs have no lineage)")
    return found[0]["session_id"], found[0]["idea_id"], found[0]["kind"]


def lineage(query: Query, any_id: str, max_depth: int = 20) -> dict[str, Any]:
    session_id, idea_id, kind = resolve(query, any_id)
    s = sql_literal(session_id)

    def idea(iid: str) -> dict[str, Any] | None:
        rows = _rows(query, f"""
            SELECT i.idea_id, i.agent_id, a.direction, i.title, i.hypothesis, i.why, i.builtin_method,
                   i.method_artifact, i.params::VARCHAR AS params, i.parent_ideas, i.cites_posts,
                   strftime(i.time, '%Y-%m-%d %H:%M:%S') AS proposed_at,
                   (SELECT round(max(pgr), 4) FROM scores sc WHERE sc.idea_id = i.idea_id AND sc.session_id = {s}
                      AND sc.purpose = 'score' AND sc.split = 'dev') AS dev_pgr
            FROM ideas i LEFT JOIN agents a ON a.agent_id = i.agent_id AND a.session_id = i.session_id
            WHERE i.session_id = {s} AND i.idea_id = {sql_literal(iid)}""")
        return rows[0] if rows else None

    root = idea(idea_id)
    assert root is not None
    ancestors: list[dict[str, Any]] = []
    frontier, seen, depth = list(root["parent_ideas"] or []), {idea_id}, 1
    while frontier and depth <= max_depth:
        nxt: list[str] = []
        for pid in frontier:
            if pid in seen:
                continue
            seen.add(pid)
            parent = idea(pid)
            if parent is None:
                ancestors.append({"idea_id": pid, "depth": depth, "missing": True})
                continue
            ancestors.append({**parent, "depth": depth})
            nxt += list(parent["parent_ideas"] or [])
        frontier, depth = nxt, depth + 1
    cited = list(root["cites_posts"] or [])
    posts = _rows(query, f"""
        SELECT post_id, agent_id, title, reply_to, idea_ids, vote_score FROM forum_posts
        WHERE session_id = {s} AND list_contains([{', '.join(sql_literal(p) for p in cited) or "''"}], post_id)""") if cited else []
    experiments = _rows(query, f"""
        SELECT experiment_id, purpose, split, dataset, status, trainer_id, round(runtime_s, 2) AS runtime_s,
               attempts, predictions_artifact, error_class
        FROM experiments WHERE session_id = {s} AND idea_id = {sql_literal(idea_id)} ORDER BY requested_at""")
    scores = _rows(query, f"""
        SELECT event_id, experiment_id, purpose, split, dataset, n_seeds, round(accuracy, 4) AS accuracy,
               round(weak_accuracy, 4) AS weak, round(ceiling_accuracy, 4) AS ceiling,
               round(pgr, 4) AS pgr, round(pgr_stderr, 4) AS pgr_se
        FROM scores WHERE session_id = {s} AND idea_id = {sql_literal(idea_id)} ORDER BY time""")
    flags = _rows(query, f"""
        SELECT "check", severity, detail FROM integrity_flags
        WHERE session_id = {s} AND idea_id = {sql_literal(idea_id)} ORDER BY time""")
    artifact = None
    if root["method_artifact"]:
        found = _rows(query, f"""
            SELECT payload->>'sha256' AS sha256, CAST(payload->>'size' AS BIGINT) AS size, payload->>'owner' AS owner,
                   payload->>'name' AS name
            FROM events WHERE type = 'artifact.stored' AND payload->>'sha256' = {sql_literal(root['method_artifact'])} LIMIT 1""")
        artifact = found[0] if found else {"sha256": root["method_artifact"], "missing": True}
    return {"session_id": session_id, "resolved_from": kind, "idea": root, "ancestors": ancestors,
            "cited_posts": posts, "artifact": artifact, "experiments": experiments, "scores": scores, "flags": flags}


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    table = Table(*columns, title=title, title_justify="left")
    for r in rows:
        table.add_row(*["" if r.get(c) is None else str(r.get(c)) for c in columns])
    return table


def render(data: dict[str, Any], console: Console) -> None:
    i = data["idea"]
    console.print(f"[bold]idea {i['idea_id']}[/bold] (session {data['session_id']}, found by its {data['resolved_from']} id)")
    console.print(f"  agent      {i['agent_id']} — direction: {i['direction'] or '?'}")
    console.print(f"  title      {i['title']}")
    console.print(f"  hypothesis {i['hypothesis']}")
    if i["why"]:
        console.print(f"  why        {i['why']}")
    method = i["builtin_method"] or f"code artifact {i['method_artifact']}"
    console.print(f"  method     {method} with {i['params']}")
    console.print(f"  proposed   {i['proposed_at']}")
    if data["artifact"]:
        a = data["artifact"]
        console.print(f"  artifact   sha256 {a['sha256']}" + (" (no artifact.stored event!)" if a.get("missing") else
                                                               f", {a['size']} bytes from {a['owner']}"))
    if data["ancestors"]:
        console.print(_table("builds on", data["ancestors"], ["depth", "idea_id", "agent_id", "title", "dev_pgr"]))
    if data["cited_posts"]:
        console.print(_table("cites", data["cited_posts"], ["post_id", "agent_id", "title", "vote_score"]))
    console.print(_table("experiments", data["experiments"],
                         ["experiment_id", "purpose", "split", "dataset", "status", "trainer_id", "runtime_s",
                          "attempts", "error_class"]))
    console.print(_table("scores", data["scores"],
                         ["purpose", "split", "dataset", "n_seeds", "accuracy", "weak", "ceiling", "pgr", "pgr_se"]))
    if data["flags"]:
        console.print(_table("integrity flags", data["flags"], ["check", "severity", "detail"]))
    else:
        console.print("no integrity flags")
