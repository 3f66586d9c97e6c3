"""The offline research policy: reproducible for a seed, builds on the session's best."""

from __future__ import annotations

import random

from services.agents.assignment import Assignment
from services.agents.directions import DIRECTIONS, assign
from services.agents.offline import SPACE, OfflinePolicy, finding, mutate

BOARD = [
    {"idea_id": "i-1", "agent_id": "agent-2", "method": "aux_conf", "params": {"lr": 0.02}, "pgr": 0.61, "flags": []},
    {"idea_id": "i-2", "agent_id": "agent-3", "method": "product", "params": {}, "pgr": 0.40, "flags": []},
    {"idea_id": "i-3", "agent_id": "agent-3", "method": "naive_soft", "params": {}, "pgr": 0.95,
     "flags": ["teacher_ablation"]},
]
POSTS = [{"post_id": "p-9", "idea_ids": ["i-1"]}, {"post_id": "p-2", "idea_ids": ["i-2"]}]


def _run(seed: int, rounds: int = 12) -> list[tuple]:
    policy = OfflinePolicy(Assignment(session_id="s", agent_id="agent-1", direction="x", direction_key="confidence",
                                      seed=seed))
    out = []
    for r in range(rounds):
        p = policy.choose(BOARD if r else [], POSTS if r else [])
        out.append((p.method, tuple(sorted(p.params.items())), p.parent_ideas, p.cites_posts))
    return out


def test_the_same_seed_gives_the_same_research_and_another_seed_does_not() -> None:
    assert _run(7) == _run(7)
    assert _run(7) != _run(8)


def test_first_idea_is_the_directions_favourite_with_defaults() -> None:
    for d in DIRECTIONS:
        policy = OfflinePolicy(Assignment(session_id="s", agent_id="a", direction=d.text, direction_key=d.key))
        first = policy.choose(BOARD, POSTS)
        assert (first.method, first.params, first.parent_ideas) == (d.methods[0], {}, ())


def test_it_builds_on_the_best_unflagged_idea_of_another_agent_and_cites_its_post() -> None:
    ideas = _run(3, rounds=30)
    built = [i for i in ideas if i[2]]
    assert built, "never built on anyone in 30 rounds"
    assert all(parents == ("i-1",) for _, _, parents, _ in built)  # i-3 is better but flagged
    assert all(cites == ("p-9",) for *_, cites in built)
    assert all(method == "aux_conf" for method, *_ in built)


def test_mutations_stay_inside_the_search_space() -> None:
    rng = random.Random(0)
    for method in ("aux_conf", "conf_filter", "early_stop", "product", "s2s_relabel", "naive_hard"):
        for _ in range(50):
            for name, value in mutate(rng, method, {}, 3).items():
                kind, *bounds = SPACE[name]
                assert bounds[0] <= value <= bounds[1], (method, name, value)


def test_directions_differ_per_agent() -> None:
    keys = [d.key for d in assign(5)]
    assert len(set(keys)) == 5


def test_a_finding_reports_the_score_and_the_change_over_its_parent() -> None:
    policy = OfflinePolicy(Assignment(session_id="s", agent_id="agent-1", direction="x", direction_key="confidence"))
    policy.choose([], [])
    proposal = policy.choose(BOARD, POSTS)
    while not proposal.parent_ideas:
        proposal = policy.choose(BOARD, POSTS)
    score = {"accuracy": 0.81, "weak_accuracy": 0.73, "ceiling_accuracy": 0.83, "pgr": 0.7, "pgr_stderr": 0.15,
             "n_seeds": 5}
    title, body = finding(proposal, "i-new", {"status": "scored", "score": score}, parent_pgr=0.61)
    assert "0.700 ± 0.150" in title and "+0.090 PGR" in body and "i-1" in body
