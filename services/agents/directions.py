"""Starting research directions, deliberately vague, in the spirit of the study.

The orchestrator gives each agent a different one. ``methods`` is the offline
policy's prior over built-in methods for that direction (the Claude backend gets
only the text).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Direction:
    key: str
    text: str
    methods: tuple[str, ...]


DIRECTIONS: tuple[Direction, ...] = (
    Direction("confidence", "Look at the teacher's confidence: when should the student trust it, and when "
              "should it trust itself?", ("aux_conf", "aux_conf_fixed", "conf_filter")),
    Direction("reweighting", "Reweight or clean the weak-labelled data before the student learns from it.",
              ("conf_filter", "naive_hard", "product")),
    Direction("regularization", "Keep the student from imitating the teacher's mistakes: regularize, stop "
              "early, limit capacity.", ("early_stop", "naive_soft", "naive_hard")),
    Direction("self_training", "Let the strong student relabel and teach itself; ensembles of students.",
              ("s2s_relabel", "aux_conf_fixed", "naive_soft")),
    Direction("elicitation", "Unsupervised elicitation: what does the strong model already know without "
              "labels, and how can the weak labels point at it?", ("product", "s2s_relabel", "aux_conf")),
    Direction("curriculum", "Curriculum: easy and confident examples first, hard ones later (or never).",
              ("conf_filter", "early_stop", "aux_conf_fixed")),
    Direction("interpretability", "Use interpretability tools on the strong features: which directions carry "
              "the concept the teacher is pointing at?", ("product", "naive_soft", "s2s_relabel")),
)


def assign(n_agents: int, offset: int = 0) -> list[Direction]:
    """A different direction per agent (cycling when there are more agents than directions)."""
    return [DIRECTIONS[(offset + i) % len(DIRECTIONS)] for i in range(n_agents)]


def by_key(key: str) -> Direction:
    for d in DIRECTIONS:
        if d.key == key or d.text == key:
            return d
    raise KeyError(f"unknown direction {key!r}; known: {[d.key for d in DIRECTIONS]}")
