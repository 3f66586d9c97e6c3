"""What a dev score may reveal: released figures carry secret noise tied to their SE.

Agents submit code, and code can craft its predictions: a method that flips its
prediction on a chosen dev row moves the accuracy by ``±1/n`` depending on that row's
gold label, so exact scores hand out labels (one per score, or more with a design
over many rows and seeds). The scorer therefore keeps every figure at full precision
for itself (promotion, the leader, the integrity checks) and releases to agents, for
each main dev score, figures that are all functions of **one noisy look** at the
method's accuracy:

    released accuracy  a_r = a + e,  e ~ N(0, sigma^2),  sigma = rows / n_eval

drawn from a generator keyed by a secret of this scorer process (an HMAC of the
experiment id), so the noise can be neither predicted nor subtracted from the log.
``rows`` (``ScoringConfig.release_rows``, default 20) is the noise in units of one row.

Everything else an agent sees is derived from released values:

- PGR from ``a_r`` and the session's (public) weak and ceiling means;
- paired differences against naive_soft, a parent, the leader: ``a_r`` minus the other
  score's released accuracy (naive_soft's own released accuracy is drawn once per
  session and never shown by itself); standard errors add the noise of both sides to
  the paired bootstrap's (itself released to two significant digits, after a 5%
  secret jitter: it depends on the labels only through the squared mean difference);
  intervals and ``tied`` follow from those;
- the seed spread of the accuracy, with its own noise of ``sigma``.

**Bits per score.** For any single row, a score is one Gaussian look whose mean moves
by one row (``1/n``) with that row's label, against noise of ``rows`` rows: at most
``0.5 * log2(1 + 1/rows^2)`` bits, 0.0018 bits at 20 rows. An attacker that must also
estimate its own baseline needs about ``(2 * rows / z)^2`` scores for one label at
confidence ``Phi(z)``: at 20 rows, 50 scores give ``Phi(sqrt(50) / 40) = 57%`` on a
probed row, however the probes are spread over rows and seeds (tests/test_score_release.py
runs that attack). The price is precision: the released SE is the statistical one with
``sigma`` added in quadrature (about 1 binomial SE of the accuracy at the default sizes).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
from dataclasses import dataclass, field

import numpy as np

from schemas.scoring import Comparison, ScorePublished

Z95 = 1.959963984540054
SE_JITTER = 0.05  # relative noise on a released paired SE before its rounding


def _round_sig(x: float, digits: int = 2) -> float:
    if x <= 0 or not math.isfinite(x):
        return 0.0
    return float(f"{x:.{digits}g}")


@dataclass
class Release:
    """The release policy of one scorer process (its secret lives only in memory)."""

    rows: float = 20.0
    secret: bytes = field(default_factory=lambda: os.urandom(32), repr=False)

    def rng(self, key: str) -> np.random.Generator:
        digest = hmac.new(self.secret, key.encode(), hashlib.sha256).digest()
        return np.random.default_rng(int.from_bytes(digest[:16], "little"))

    def sigma(self, n_eval: int) -> float:
        return self.rows / max(1, n_eval) if self.rows > 0 else 0.0

    def noisy(self, accuracy: float, n_eval: int, key: str) -> float:
        """One noisy look at an accuracy (the same key gives the same look)."""
        return float(np.clip(accuracy + self.sigma(n_eval) * self.rng(f"acc/{key}").standard_normal(), 0.0, 1.0))

    def score(self, score: ScorePublished, *, n_eval: int, seed_se: float, key: str,
              comparisons: list[tuple[Comparison, float, float]]) -> tuple[ScorePublished, float]:
        """The released copy of a full-precision dev score, and its released accuracy.

        ``seed_se``: the seed spread of the accuracy (SE of the mean over seeds);
        ``comparisons``: ``(full comparison, the other's released accuracy, the other's
        noise sigma)`` each."""
        sigma = self.sigma(n_eval)
        a_r = self.noisy(score.accuracy, n_eval, key)
        seeds_r = abs(seed_se + sigma * self.rng(f"seeds/{key}").standard_normal())
        binomial = math.sqrt(max(a_r * (1 - a_r), 1.0 / n_eval) / n_eval)
        acc_se = math.sqrt(seeds_r**2 + binomial**2 + sigma**2)
        gap = score.ceiling_accuracy - score.weak_accuracy
        pgr = pgr_se = None
        if score.pgr is not None and gap > 0:
            pgr = (a_r - score.weak_accuracy) / gap
            full_se = score.pgr_stderr or 0.0
            pgr_se = math.sqrt(full_se**2 + (sigma / gap) ** 2)
        released = [self.comparison(c, a_r, other, sigma, other_sigma, gap, f"{key}/{i}")
                    for i, (c, other, other_sigma) in enumerate(comparisons)]
        out = score.model_copy(update={
            "accuracy": round(a_r, 4), "accuracy_stderr": round(acc_se, 4),
            "pgr": None if pgr is None else round(pgr, 4), "pgr_stderr": None if pgr_se is None else round(pgr_se, 4),
            "comparisons": released,
        })
        return out, a_r

    def comparison(self, full: Comparison, mine: float, other: float, sigma: float, other_sigma: float,
                   gap: float, key: str) -> Comparison:
        """A paired difference as released: the difference of two released accuracies,
        with the paired SE (jittered, 2 significant digits) and both noises."""
        paired = self.paired_se(full.accuracy_diff_se, key)
        d = mine - other
        se = math.sqrt(paired**2 + sigma**2 + other_sigma**2)
        ci = [d - Z95 * se, d + Z95 * se]
        pgr = pgr_se = pgr_ci = None
        if full.pgr_diff is not None and gap > 0:
            pgr, pgr_se = d / gap, se / gap
            pgr_ci = [round(ci[0] / gap, 4), round(ci[1] / gap, 4)]
        return full.model_copy(update={
            "accuracy_diff": round(d, 4), "accuracy_diff_se": round(se, 4), "accuracy_ci": [round(x, 4) for x in ci],
            "pgr_diff": None if pgr is None else round(pgr, 4), "pgr_diff_se": None if pgr_se is None else round(pgr_se, 4),
            "pgr_ci": pgr_ci, "tied": bool(ci[0] <= 0.0 <= ci[1]),
        })

    def tied(self, mine: float, other: float, paired_se: float, sigma: float, key: str) -> bool:
        """Whether two released accuracies are tied (as :meth:`comparison` decides)."""
        se = math.sqrt(self.paired_se(paired_se, key) ** 2 + 2 * sigma**2)
        return abs(mine - other) <= Z95 * se

    def paired_se(self, full_se: float, key: str) -> float:
        """A paired bootstrap SE as released: a secret 5% jitter, then 2 significant digits."""
        jitter = 1.0 + SE_JITTER * float(self.rng(f"se/{key}").standard_normal())
        return _round_sig(full_se * max(0.5, jitter))
