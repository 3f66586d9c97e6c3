"""The session summary's honest winner (aar/summary.py): by test PGR, ties, optimism."""

from __future__ import annotations

import pytest

from aar.summary import Promoted, honest, honest_lines


def _p(idea: str, dev: float | None, test: float | None, se: float | None = 0.05) -> Promoted:
    return Promoted(idea, "agent-1", "naive_soft", dev, test, se)


def test_the_winner_is_the_best_test_score_not_the_best_dev_score() -> None:
    result = honest([_p("a", 0.90, 0.50), _p("b", 0.70, 0.72), _p("c", 0.60, 0.40)])
    assert result.winner is not None and result.winner.idea_id == "b"
    assert [p.idea_id for p in result.tied] == []  # 0.72 vs 0.50: 0.22 > 1.96 * 0.0707
    assert result.optimism == pytest.approx(((0.9 - 0.5) + (0.7 - 0.72) + (0.6 - 0.4)) / 3)
    diffs = [0.4, -0.02, 0.2]
    mean = sum(diffs) / 3
    assert result.optimism_se == pytest.approx((sum((d - mean) ** 2 for d in diffs) / 2 / 3) ** 0.5)
    lines = honest_lines(result)
    assert lines[0].startswith("winner by test PGR: b (agent-1, naive_soft) 0.720 ± 0.050 (dev 0.700)")
    assert "ahead of the 2 other promoted idea(s)" in lines[1] and "selection optimism" in lines[2]


def test_close_test_scores_are_tied_and_say_so() -> None:
    result = honest([_p("a", 0.8, 0.60, 0.08), _p("b", 0.7, 0.55, 0.08), _p("c", 0.6, 0.20, 0.02)])
    assert result.winner is not None and result.winner.idea_id == "a"
    assert [p.idea_id for p in result.tied] == ["b"]  # 0.05 < 1.96 * 0.113; c is 0.40 behind
    assert "tied with" in honest_lines(result)[1] and "b (0.550)" in honest_lines(result)[1]


def test_no_test_score_no_winner_and_one_idea_has_no_optimism_se() -> None:
    assert honest_lines(honest([_p("a", 0.8, None)]))[0].startswith("no promoted idea has a test score")
    one = honest([_p("a", 0.8, 0.7)])
    assert one.optimism == pytest.approx(0.1) and one.optimism_se is None and one.rivals == 0
    assert honest_lines(one)[1] == "  the only promoted idea with a test score"
    assert honest_lines(one)[2].endswith("+0.100 (one idea: no SE)")
