"""``aar lineage ID``: the chain behind a score, an experiment or an idea.

Plain SQL over the recorder's views (any ``core.audit.AuditQueries``: the file or
the running recorder), every id a bound parameter: the agent and its direction, the idea's
hypothesis, its ancestors (parent ideas, recursively) and the forum posts it
cites, the method artifact, every experiment and score, and integrity flags.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from core.audit import AuditQueries, Param, is_text
from core.console import data as cell


class LineageError(LookupError):
    def __str__(self) -> str:
        return str(self.args[0])


def _rows(audit: AuditQueries, sql: str, params: list[Param]) -> list[dict[str, Any]]:
    return audit.query(sql, params).dicts()


def resolve(audit: AuditQueries, any_id: str) -> tuple[str, str, str]:
    """(session_id, idea_id, what the id was) for an idea, experiment or score event id."""
    missing = LineageError(f"no idea, experiment or score with id {any_id!r} (baseline runs have no lineage)")
    if not is_text(any_id):
        raise missing  # (a lone surrogate: no id in the log holds one, and it cannot be bound)
    found = _rows(audit, """
        SELECT session_id, idea_id, 'idea' AS kind FROM ideas WHERE idea_id = $1
        UNION ALL SELECT session_id, idea_id, 'experiment' FROM experiments WHERE experiment_id = $1
        UNION ALL SELECT session_id, idea_id, 'score' FROM scores WHERE event_id = $1 OR experiment_id = $1
        LIMIT 1""", [any_id])
    if not found or found[0]["idea_id"] is None:
        raise missing
    return found[0]["session_id"], found[0]["idea_id"], found[0]["kind"]


def lineage(audit: AuditQueries, any_id: str, max_depth: int = 20) -> dict[str, Any]:
    """Everything behind ``any_id``; every id (the asker's, and those read from the log,
    which agents wrote) is a bound parameter."""
    session_id, idea_id, kind = resolve(audit, any_id)

    def idea(iid: str) -> dict[str, Any] | None:
        rows = _rows(audit, """
            SELECT i.idea_id, i.agent_id, a.direction, i.title, i.hypothesis, i.why, i.builtin_method,
                   i.method_artifact, i.params::VARCHAR AS params, i.parent_ideas, i.cites_posts,
                   strftime(i.time, '%Y-%m-%d %H:%M:%S') AS proposed_at,
                   (SELECT round(max(pgr), 4) FROM scores sc WHERE sc.idea_id = i.idea_id AND sc.session_id = $1
                      AND sc.purpose = 'score' AND sc.split = 'dev') AS dev_pgr
            FROM ideas i LEFT JOIN agents a ON a.agent_id = i.agent_id AND a.session_id = i.session_id
            WHERE i.session_id = $1 AND i.idea_id = $2""", [session_id, iid])
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
    cited = [str(p) for p in root["cites_posts"] or []]
    posts = _rows(audit, """
        SELECT post_id, agent_id, title, reply_to, idea_ids, vote_score FROM forum_posts
        WHERE session_id = $1 AND list_contains($2::VARCHAR[], post_id)""", [session_id, cited]) if cited else []
    experiments = _rows(audit, """
        SELECT experiment_id, purpose, split, dataset, status, trainer_id, round(runtime_s, 2) AS runtime_s,
               attempts, predictions_artifact, error_class
        FROM experiments WHERE session_id = $1 AND idea_id = $2 ORDER BY requested_at""", [session_id, idea_id])
    scores = _rows(audit, """
        SELECT event_id, experiment_id, purpose, split, dataset, n_seeds, round(accuracy, 4) AS accuracy,
               round(weak_accuracy, 4) AS weak, round(ceiling_accuracy, 4) AS ceiling,
               round(pgr, 4) AS pgr, round(pgr_stderr, 4) AS pgr_se
        FROM scores WHERE session_id = $1 AND idea_id = $2 ORDER BY time""", [session_id, idea_id])
    flags = _rows(audit, """
        SELECT "check", severity, detail FROM integrity_flags
        WHERE session_id = $1 AND idea_id = $2 ORDER BY time""", [session_id, idea_id])
    # Other ideas' code its method imported by hash (trainer.methods.stored), as the trainer
    # recorded it in experiment.finished.
    imports = _rows(audit, """
        WITH imported AS (
            SELECT DISTINCT unnest(from_json(f.payload->'imports', '["VARCHAR"]')) AS sha256
            FROM events f JOIN experiments x ON x.experiment_id = f.payload->>'experiment_id'
            WHERE f.type = 'experiment.finished' AND f.session_id = $1 AND x.session_id = $1 AND x.idea_id = $2)
        SELECT m.sha256, i.idea_id, i.agent_id, i.title FROM imported m
        LEFT JOIN ideas i ON i.method_artifact = m.sha256 AND i.session_id = $1
        ORDER BY m.sha256, i.time""", [session_id, idea_id])
    artifact = None
    if root["method_artifact"]:
        found = _rows(audit, """
            SELECT payload->>'sha256' AS sha256, CAST(payload->>'size' AS BIGINT) AS size, payload->>'owner' AS owner,
                   payload->>'name' AS name
            FROM events WHERE type = 'artifact.stored' AND payload->>'sha256' = $1 LIMIT 1""", [root["method_artifact"]])
        artifact = found[0] if found else {"sha256": root["method_artifact"], "missing": True}
    return {"session_id": session_id, "resolved_from": kind, "idea": root, "ancestors": ancestors,
            "cited_posts": posts, "imports": imports, "artifact": artifact, "experiments": experiments, "scores": scores, "flags": flags}


def _table(title: str, rows: list[dict[str, Any]], columns: list[str]) -> Table:
    table = Table(*columns, title=title, title_justify="left")
    for r in rows:
        table.add_row(*[cell(r.get(c)) for c in columns])
    return table


def render(data: dict[str, Any], console: Console) -> None:
    i = data["idea"]
    console.print(Text.assemble(("idea " + str(i["idea_id"]), "bold"),
                                f" (session {data['session_id']}, found by its {data['resolved_from']} id)"))
    console.print(f"  agent      {i['agent_id']} — direction: {i['direction'] or '?'}", markup=False)
    console.print(f"  title      {i['title']}", markup=False)
    console.print(f"  hypothesis {i['hypothesis']}", markup=False)
    if i["why"]:
        console.print(f"  why        {i['why']}", markup=False)
    method = i["builtin_method"] or f"code artifact {i['method_artifact']}"
    console.print(f"  method     {method} with {i['params']}", markup=False)
    console.print(f"  proposed   {i['proposed_at']}", markup=False)
    if data["artifact"]:
        a = data["artifact"]
        console.print(f"  artifact   sha256 {a['sha256']}" + (" (no artifact.stored event!)" if a.get("missing") else
                                                               f", {a['size']} bytes from {a['owner']}"), markup=False)
    if data["ancestors"]:
        console.print(_table("builds on", data["ancestors"], ["depth", "idea_id", "agent_id", "title", "dev_pgr"]))
    if data["cited_posts"]:
        console.print(_table("cites", data["cited_posts"], ["post_id", "agent_id", "title", "vote_score"]))
    if data.get("imports"):
        console.print(_table("imports the code of", data["imports"], ["sha256", "idea_id", "agent_id", "title"]))
    console.print(_table("experiments", data["experiments"],
                         ["experiment_id", "purpose", "split", "dataset", "status", "trainer_id", "runtime_s",
                          "attempts", "error_class"]))
    console.print(_table("scores", data["scores"],
                         ["purpose", "split", "dataset", "n_seeds", "accuracy", "weak", "ceiling", "pgr", "pgr_se"]))
    if data["flags"]:
        console.print(_table("integrity flags", data["flags"], ["check", "severity", "detail"]))
    else:
        console.print("no integrity flags")
