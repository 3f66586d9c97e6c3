"""A whole research session through `aar up`, as a user runs it: offline agents,
forum, scorer, trainer, recorder; then the summary and `aar lineage`.

MiniLM -> MiniLM with a tiny A split (so the weak teacher is clearly below the
ceiling and PGR is defined); a bounded number of experiments."""

from __future__ import annotations

import json

import pytest

from core.paths import AarHome
from trainer import sandbox

from .test_cli import aar

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sandbox.sandbox_problem() is not None, reason=f"no sandbox: {sandbox.sandbox_problem()}"),
]


def _sql(home: AarHome, query: str) -> list[dict]:
    done = aar("audit", query, "-f", "json", home=home)
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def test_a_session_of_three_offline_agents(home: AarHome) -> None:
    done = aar(
        "up", "--agents", "3", "--max-experiments", "12", "--max-wall", "400", "--session", "e2e",
        "--strong-model", "minilm", "--sizes", "20,400,400,200", "--seeds", "2", "--heldout", "none", home=home,
        timeout=600,
    )
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 0, out[-5000:]
    assert "best dev PGR" in out  # the live progress line
    assert "best ideas" in out  # the final summary

    tests = _sql(home, "SELECT idea_id FROM scores WHERE purpose = 'score' AND split = 'test' AND pgr IS NOT NULL "
                       "ORDER BY pgr DESC, idea_id LIMIT 1")
    if tests:  # the honest winner: by test PGR
        assert f"winner by test PGR: {tests[0]['idea_id']} " in out
    else:
        assert "no promoted idea has a test score yet" in out

    ended = _sql(home, "SELECT payload->>'reason' AS reason FROM events WHERE type = 'session.ended'")
    assert ended == [{"reason": "max_experiments"}]
    agents = _sql(home, "SELECT agent_id, direction, ideas FROM agents ORDER BY agent_id")
    assert [a["agent_id"] for a in agents] == ["agent-1", "agent-2", "agent-3"]
    assert len({a["direction"] for a in agents}) == 3
    posters = _sql(home, "SELECT DISTINCT agent_id FROM forum_posts ORDER BY 1")
    assert len(posters) == 3, "every agent posted a finding"
    built = _sql(home, """
        SELECT child.idea_id, child.agent_id AS child_agent, parent.agent_id AS parent_agent, child.cites_posts
        FROM ideas child, unnest(child.parent_ideas) AS p(parent_id)
        JOIN ideas parent ON parent.idea_id = p.parent_id""")
    assert any(b["child_agent"] != b["parent_agent"] for b in built), "no agent built on another's idea"
    dev = _sql(home, "SELECT count(*) AS n FROM scores WHERE purpose = 'score' AND split = 'dev'")
    assert dev[0]["n"] >= 12
    # The offline researcher writes code: after each agent's first (built-in) idea, most are
    # modules it composed, run in the sandbox; its cheap tests ran in the workspace first.
    kinds = _sql(home, """
        SELECT count(*) FILTER (WHERE i.method_artifact IS NOT NULL) AS code, count(*) AS scored
        FROM ideas i JOIN scores s ON s.idea_id = i.idea_id AND s.purpose = 'score' AND s.split = 'dev'""")[0]
    assert kinds["code"] * 2 >= kinds["scored"], kinds
    sandboxed = _sql(home, "SELECT count(*) AS n FROM experiments WHERE method_artifact IS NOT NULL "
                           "AND status = 'finished'")
    assert sandboxed[0]["n"] >= kinds["code"]
    tested = _sql(home, "SELECT count(*) AS n FROM tool_calls WHERE tool = 'run_code'")[0]["n"]
    untested = _sql(home, "SELECT count(*) AS n FROM tool_calls WHERE tool = 'note' AND ("
                          "arguments->>'text' LIKE 'cheap tests skipped for %' OR "
                          "arguments->>'text' LIKE 'cheap tests could not run for %')")[0]["n"]
    passed = _sql(home, "SELECT count(*) AS n FROM tool_calls WHERE tool = 'note' "
                        "AND arguments->>'text' LIKE 'cheap tests passed: %'")[0]["n"]
    assert passed >= 1 and tested >= passed, (tested, passed)  # the tests ran and judged
    # Every code idea passed its tests, or went untested with a note saying why (the workspace refused).
    assert passed + untested >= kinds["code"], "a code idea was proposed without its cheap tests, silently"
    dropped = _sql(home, "SELECT count(*) AS n FROM tool_calls WHERE tool = 'note' "
                         "AND arguments->>'text' LIKE 'dropped before scoring:%'")[0]["n"]
    code_ideas = _sql(home, "SELECT count(*) AS n FROM ideas WHERE method_artifact IS NOT NULL")[0]["n"]
    assert f"ideas as code: {code_ideas}," in out and f"{dropped} candidate(s) dropped by cheap tests" in out
    assert "best code idea against best built-in" in out
    promoted = _sql(home, "SELECT DISTINCT purpose, split FROM scores ORDER BY 1, 2")
    assert {"purpose": "ablation", "split": "dev"} in promoted and {"purpose": "score", "split": "test"} in promoted

    # The lineage of an idea built on another agent's: parent, cited post, runs and scores.
    child = next(b for b in built if b["child_agent"] != b["parent_agent"])
    shown = aar("lineage", child["idea_id"], "-f", "json", home=home)
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert data["idea"]["agent_id"] == child["child_agent"] and data["idea"]["direction"]
    assert data["ancestors"][0]["agent_id"] == child["parent_agent"]
    assert data["scores"] and data["experiments"][0]["status"] == "finished"
    if child["cites_posts"]:
        assert {p["post_id"] for p in data["cited_posts"]} == set(child["cites_posts"])
    missing = aar("lineage", "no-such-id", home=home)
    assert missing.returncode == 1 and "no idea, experiment or score" in missing.stderr
