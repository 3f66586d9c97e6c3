"""The teacher-ablation check: does a method's gain over the weak floor survive when its
weak labels are shuffled (and its ``ctx.teacher`` is trained on shuffled labels)?

A method that learns from its teacher loses its gain; one that keeps it got its signal
elsewhere: leaked labels, or nothing of the teacher at all (a clustering of the strong
features). The scorer flags it (``integrity.flagged``, check ``teacher_ablation``)."""

from __future__ import annotations


def retained_gain(accuracy: float, weak_accuracy: float, shuffled_accuracy: float) -> float | None:
    """The share of the gain over the weak floor that the shuffled-label run keeps
    (None: the method has no gain to explain)."""
    gain = accuracy - weak_accuracy
    if gain <= 0:
        return None
    return (shuffled_accuracy - weak_accuracy) / gain


def ignores_teacher(accuracy: float, weak_accuracy: float, shuffled_accuracy: float, threshold: float) -> bool:
    """Whether the check flags the method: it keeps at least ``threshold`` of its gain."""
    retained = retained_gain(accuracy, weak_accuracy, shuffled_accuracy)
    return retained is not None and retained >= threshold
