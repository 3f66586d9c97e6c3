"""What an agent's workspace code sees (:class:`WorkspaceContext`), inside the sandbox.

Workspace code is a Python script run with ``ctx`` in its globals. Its result is the
value of a global ``result`` when it sets one, else what ``main(ctx)`` returns when it
defines ``main``; it must be JSON (numpy numbers and arrays are converted). Everything
it prints comes back too (the tails). No gold label of any split is in it:

- ``train_features`` / ``train_texts`` / ``weak_soft_labels``: B's train part, with the
  weak teacher's P(class 1);
- ``heldback_features`` / ``heldback_texts`` / ``heldback_weak_labels``: B's held-back
  part, weak-labelled only (what a cheap test can measure agreement on);
- ``dev_features`` / ``dev_texts``: the dev split without labels;
- ``teacher(texts)``: the weak teacher on any texts (a budget per run);
- ``method_context(params, on="heldback"|"dev")``: a :class:`MethodContext` that trains
  on the train part and predicts the held-back part (or dev), to run a method the way a
  trainer would: ``run_method("aux_conf", ctx.method_context())`` or your own ``run``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer.methods.base import MethodContext


@dataclass(slots=True)
class WorkspaceContext:
    train_features: np.ndarray
    weak_soft_labels: np.ndarray
    train_texts: list[str]
    heldback_features: np.ndarray
    heldback_weak_labels: np.ndarray
    heldback_texts: list[str]
    dev_features: np.ndarray
    dev_texts: list[str]
    seed: int = 0
    teacher_fn: Any = field(default=None, repr=False)

    def teacher(self, texts: Sequence[str]) -> np.ndarray:
        """The weak teacher's P(class 1) for each of ``texts``."""
        if self.teacher_fn is None:
            raise RuntimeError("no weak teacher is available to this run")
        if isinstance(texts, str):
            texts = [texts]
        return np.asarray(self.teacher_fn(self.seed, list(texts)), dtype=np.float64).reshape(-1)

    def method_context(self, params: dict[str, Any] | None = None, on: str = "heldback") -> MethodContext:
        """Train on the train part; predict the held-back part (``on="heldback"``) or dev."""
        if on not in ("heldback", "dev"):
            raise ValueError("on must be 'heldback' or 'dev'")
        held = on == "heldback"
        return MethodContext(
            train_features=self.train_features, weak_soft_labels=self.weak_soft_labels,
            eval_features=self.heldback_features if held else self.dev_features,
            train_texts=self.train_texts, eval_texts=self.heldback_texts if held else self.dev_texts,
            seed=self.seed, params=dict(params or {}), teacher_fn=self.teacher_fn,
        )

    def agreement(self, predictions: Any) -> float:
        """Share of held-back rows where ``predictions`` (P(class 1)) and the weak labels agree
        at 0.5: a cheap, label-free check (it rewards copying the teacher, so read it with care)."""
        p = np.asarray(predictions, dtype=np.float64).reshape(-1)
        if p.shape != self.heldback_weak_labels.shape:
            raise ValueError(f"expected {self.heldback_weak_labels.shape[0]} held-back predictions, got {p.shape}")
        return float(((p > 0.5) == (self.heldback_weak_labels > 0.5)).mean())

    @property
    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train_texts), "heldback": len(self.heldback_texts), "dev": len(self.dev_texts)}


class PipeTeacher:
    """``ctx.teacher`` inside the sandbox: one JSON line out (``{"seed", "texts"}``), one
    back (``{"p": [...]}`` or ``{"error": ...}``), over two pipes the trainer serves."""

    def __init__(self, out_fd: int, in_fd: int) -> None:
        self.out_fd, self.in_fd = out_fd, in_fd
        self._buf = b""

    @classmethod
    def from_env(cls) -> PipeTeacher | None:
        fds = os.environ.pop("AAR_TEACHER_FDS", "")
        out_text, _, in_text = fds.partition(",")
        if not (out_text.isdigit() and in_text.isdigit()):
            return None
        for fd in (int(out_text), int(in_text)):
            os.set_inheritable(fd, False)
        return cls(int(out_text), int(in_text))

    def __call__(self, seed: int, texts: list[str]) -> np.ndarray:
        if not all(isinstance(t, str) for t in texts):
            raise TypeError("ctx.teacher takes a list of strings")
        data = (json.dumps({"seed": int(seed), "texts": texts}) + "\n").encode()
        view = memoryview(data)
        while view:
            view = view[os.write(self.out_fd, view):]
        while b"\n" not in self._buf:
            chunk = os.read(self.in_fd, 1 << 16)
            if not chunk:
                raise RuntimeError("the trainer stopped answering teacher queries")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        answer = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"ctx.teacher: {answer['error']}")
        return np.asarray(answer["p"], dtype=np.float64)
