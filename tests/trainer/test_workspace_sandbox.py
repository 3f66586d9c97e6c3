"""The workspace sandbox on its own (real bubblewrap): what it returns, and what its
code cannot do to the trainer: forge a result that crashes it, spend teacher queries for
free, or break the query server."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from trainer import sandbox
from trainer.workspace import WorkspaceSandbox, workspace_inputs

pytestmark = pytest.mark.skipif(sandbox.sandbox_problem() is not None,
                                reason=f"no sandbox: {sandbox.sandbox_problem()}")


def _inputs(rows: int = 200) -> object:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, 16)).astype(np.float32)
    weak = 1.0 / (1.0 + np.exp(-x[:, 0]))
    texts = [f"t{i}" for i in range(rows)]
    return workspace_inputs(x, texts, weak, x[:50], texts[:50])


def test_a_run_returns_its_result_output_and_sizes() -> None:
    box = WorkspaceSandbox(_inputs())  # type: ignore[arg-type]
    result = box.run("print('hi', ctx.sizes)\nresult = {'n': len(ctx.train_texts), 'x': ctx.heldback_weak_labels[:2]}")
    assert result.ok, result.error
    assert json.loads(result.value_json or "")["n"] == 150 and "hi {'train': 150" in result.stdout


def test_a_forged_result_header_is_a_failed_run_not_a_crash() -> None:
    """The code can write the result pipe itself: an absurd header (an infinite size, deep
    nesting) used to raise OverflowError / RecursionError in the trainer (the run was then
    charged nothing)."""
    forge = ("import os, sys, json\nfd = sys._getframe(1).f_locals['result_fd']\n"
             "os.write(fd, {payload!r})\nimport time\nt = time.process_time()\n"
             "while time.process_time() - t < 1.0:\n    pass\n")
    for payload in (b'{"value_bytes": 1e999}\n1', b"[" * 100_000 + b"\n1"):
        box = WorkspaceSandbox(_inputs())  # type: ignore[arg-type]
        result = box.run(forge.format(payload=payload))
        assert not result.ok and "garbled" in (result.error or ""), (result.error, result.stderr[-500:])
        assert result.cpu_s >= 0.9  # what it burned is measured (and charged)


def test_teacher_queries_are_budgeted_even_when_empty_and_bad_queries_are_refused() -> None:
    asked: list[int] = []
    from trainer.teacher import TeacherBudgetError

    def teacher(seed: int, texts: list[str]) -> list[float]:
        cost = max(1, len(texts))
        if sum(asked) + cost > 5:
            raise TeacherBudgetError("the teacher budget is 5 texts per run")
        asked.append(cost)
        return [0.25] * len(texts)

    box = WorkspaceSandbox(_inputs(), teacher=teacher)  # type: ignore[arg-type]
    code = ("got = [ctx.teacher([]).tolist() for _ in range(3)]\n"
            "try:\n    ctx.teacher(['a', 'b', 'c'])\nexcept RuntimeError as exc:\n    got.append(str(exc))\n"
            "got.append(ctx.teacher(['a', 'b']).tolist())\nresult = got\n")
    result = box.run(code)
    assert result.ok, result.stderr[-1000:]
    got = json.loads(result.value_json or "")
    assert got[:3] == [[], [], []] and "budget is 5" in got[3] and got[4] == [0.25, 0.25]
    assert sum(asked) == 5
    # A deeply nested query line is refused, and the server thread survives to say so.
    box = WorkspaceSandbox(_inputs(), teacher=teacher)  # type: ignore[arg-type]
    bomb = ("import os, sys\nt = ctx.teacher_fn\nos.write(t.out_fd, b'[' * 200000 + b'\\n')\n"
            "buf = os.read(t.in_fd, 4096)\nresult = buf.decode()\n")
    started = time.monotonic()
    result = box.run(bomb)
    assert result.ok and "bad query" in json.loads(result.value_json or '""'), result.stderr[-1000:]
    assert time.monotonic() - started < 30
