"""The primer: its measured half agrees with the measurement it cites, and both backends get it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from services.agents import primer
from services.agents.assignment import Assignment
from services.agents.offline import OfflinePolicy
from services.agents.toolbox import TOOL_NAMES

RESULTS = Path(__file__).parent.parent / "bench" / "results" / "builtin-rotten_tomatoes-minilm-mpnet-300-2000-3000-1500.json"


def test_the_built_in_table_is_the_measured_one() -> None:
    measured = {m["method"]: m for m in json.loads(RESULTS.read_text())["methods"]}
    assert set(measured) == set(primer.METHODS)
    for name, note in primer.METHODS.items():
        m = measured[name]
        assert abs(note.dev_pgr - m["pgr"]["value"]) < 1e-3 and abs(note.dev_pgr_se - m["pgr"]["se"]) < 1e-3, name
        assert abs(note.shuffled_acc - m["shuffled_acc_mean"]) < 1e-3, name
        if m["vs_naive_pgr"] is not None:
            assert note.vs_naive is not None and abs(note.vs_naive - m["vs_naive_pgr"]) < 1e-3, name
        assert f"{name} ({note.family}): dev PGR {note.dev_pgr:.3f}" in primer.TEXT


def test_claude_gets_it_as_a_tool_and_the_offline_policy_reads_its_data() -> None:
    assert "read_primer" in TOOL_NAMES
    data = primer.structured()
    assert data["methods"]["aux_conf"]["dev_pgr"] > data["methods"]["naive_soft"]["dev_pgr"]
    # Exploration leans towards what the primer measured best: the direction ranks early_stop
    # first (2:1 by rank alone), the primer measured aux_conf 0.83 and early_stop 0.57, so aux_conf
    # is explored at 0.83 / (2 * 0.57) = 0.73 of early_stop's rate, not 0.5.
    policy = OfflinePolicy(Assignment(session_id="s", agent_id="agent-1", direction="x", seed=3))
    policy.prior = ("early_stop", "aux_conf")
    counts = Counter(policy._explore(first=False).method for _ in range(400))
    assert 0.62 < counts["aux_conf"] / counts["early_stop"] < 0.86
