"""``aar up --resume``: a session whose supervisor is SIGKILLed mid-run is finished by
a second ``aar up``, from the log: no idea scored twice, the experiment budget counted
across both runs, the agents going on from their own history.

MiniLM -> MiniLM with tiny splits and 2 seeds (as tests/test_session.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.paths import AarHome
from trainer import sandbox

from .test_cli import aar

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(sandbox.sandbox_problem() is not None, reason=f"no sandbox: {sandbox.sandbox_problem()}"),
]

MAX_EXPERIMENTS = 12
AGENTS = 2


def _sql(home: AarHome, query: str, *params: str) -> list[dict]:
    args = [a for p in params for a in ("--param", p)]
    done = aar("audit", query, *args, "-f", "json", home=home, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return [json.loads(line) for line in done.stdout.splitlines() if line.strip()]


def _children(pid: int) -> list[int]:
    """Every process whose parent is ``pid`` (the supervisor's services and nats-server)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.timeout(900)
def test_a_killed_session_is_finished_by_resume(home: AarHome) -> None:
    env = {**os.environ, "AAR_HOME": str(home.root)}
    first = subprocess.Popen(
        [sys.executable, "-m", "aar.cli", "up", "--agents", str(AGENTS), "--max-experiments", str(MAX_EXPERIMENTS),
         "--max-wall", "900", "--session", "resumable", "--strong-model", "minilm", "--sizes", "20,400,400,200",
         "--seeds", "2", "--heldout", "none"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        # Run until a few ideas are scored and another experiment is queued or running, then kill it outright.
        deadline = time.monotonic() + 420
        while True:
            assert first.poll() is None, f"aar up exited early: {first.stdout.read() if first.stdout else ''}"
            assert time.monotonic() < deadline, "no scores within 420 s"
            polled = aar("audit", "SELECT (SELECT count(*) FROM scores WHERE purpose = 'score' AND split = 'dev'), "
                         "(SELECT count(*) FROM experiments WHERE status IN ('requested', 'started'))", "-f", "csv",
                         home=home)
            if polled.returncode == 0:  # (the recorder answers once it has started)
                scored, pending = map(int, polled.stdout.splitlines()[1].split(","))
                if (scored >= 3 and pending >= 1) or scored >= 5:
                    break
            time.sleep(1.0)
        children = _children(first.pid)
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        t0 = time.monotonic()
        while any(map(_alive, children)):  # they follow it (SIGTERM from the kernel), as after a crash
            assert time.monotonic() - t0 < 60, f"services outlived their supervisor: {[c for c in children if _alive(c)]}"
            time.sleep(0.2)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()

    before = _sql(home, "SELECT DISTINCT experiment_id FROM scores WHERE purpose = 'score' AND split = 'dev'")
    in_flight = _sql(home, "SELECT experiment_id FROM experiments WHERE status IN ('requested', 'started')")
    ideas_before = _sql(home, "SELECT agent_id, count(*) AS n FROM ideas GROUP BY 1")
    assert 3 <= len(before) < MAX_EXPERIMENTS

    refused = aar("up", "--resume", "resumable", "--agents", "5", home=home)
    assert refused.returncode == 2 and "--agents" in refused.stderr, refused.stderr
    unknown = aar("up", "--resume", "no-such-session", home=home)
    assert unknown.returncode == 1 and "no session 'no-such-session'" in unknown.stderr, unknown.stderr

    done = aar("up", "--resume", "resumable", home=home, timeout=900)
    out = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 0, out[-5000:]
    assert "resuming session" in out and "resumed (1)" in out  # the progress line says it

    (session,) = _sql(home, "SELECT session_id, resumed, end_reason FROM sessions")
    assert session["resumed"] == 1 and session["end_reason"] == "max_experiments"
    (resumed,) = _sql(home, "SELECT payload FROM events WHERE type = 'session.resumed'")
    payload = json.loads(resumed["payload"]) if isinstance(resumed["payload"], str) else resumed["payload"]
    assert payload["experiments"] == len(before) and payload["elapsed_s"] > 0
    assert set(payload["in_flight"]) >= {r["experiment_id"] for r in in_flight}

    # No experiment scored twice, no idea scored twice; what was in flight was finished once.
    scores = _sql(home, "SELECT experiment_id, idea_id, purpose, split, dataset FROM scores")
    assert len(scores) == len({s["experiment_id"] for s in scores}), "an experiment was scored twice"
    assert len(scores) == len({(s["idea_id"], s["purpose"], s["split"], s["dataset"]) for s in scores})
    finished = _sql(home, "SELECT payload->>'experiment_id' AS e, count(DISTINCT id) AS n FROM events "
                          "WHERE type = 'experiment.finished' GROUP BY 1 HAVING count(DISTINCT id) > 1")
    assert finished == [], "an experiment finished twice"
    requeued = [r["experiment_id"] for r in in_flight]
    settled = _sql(home, "SELECT experiment_id, status FROM experiments")
    status = {r["experiment_id"]: r["status"] for r in settled}
    assert all(status[e] in ("finished", "failed") for e in requeued), {e: status[e] for e in requeued}

    # The budget counts both runs: the session ended at MAX_EXPERIMENTS dev scores in all (the
    # ideas already in flight at the drain may still be scored), not MAX_EXPERIMENTS more.
    dev = _sql(home, "SELECT count(*) AS n FROM scores WHERE purpose = 'score' AND split = 'dev'")[0]["n"]
    assert MAX_EXPERIMENTS <= dev <= MAX_EXPERIMENTS + AGENTS + 1
    (ended,) = _sql(home, "SELECT payload->>'experiments' AS n FROM events WHERE type = 'session.ended' "
                          "AND payload->>'reason' = 'max_experiments'")
    assert int(ended["n"]) >= MAX_EXPERIMENTS

    # Each agent started again from its own history: its ideas count on, its notes say so.
    starts = _sql(home, "SELECT payload->>'agent_id' AS agent, bool_or((payload->>'resumed')::BOOLEAN) AS resumed, "
                        "count(*) AS n FROM events WHERE type = 'agent.started' GROUP BY 1 ORDER BY 1")
    assert [(s["agent"], s["resumed"]) for s in starts] == [(f"agent-{i + 1}", True) for i in range(AGENTS)]
    notes = _sql(home, "SELECT payload->>'agent_id' AS agent, payload->'arguments'->>'text' AS text FROM events "
                       "WHERE type = 'agent.tool_called' AND payload->>'tool' = 'note' AND payload->'arguments'->>'text' "
                       "LIKE 'resumed after%'")
    for row in ideas_before:
        assert any(n["agent"] == row["agent_id"] and n["text"].startswith(f"resumed after {row['n']} idea")
                   for n in notes), (row, notes)
    stopped = _sql(home, "SELECT payload->>'agent_id' AS agent, (payload->>'ideas')::INT AS ideas FROM events "
                         "WHERE type = 'agent.stopped' ORDER BY time DESC")
    total = {r["agent_id"]: r["n"] for r in _sql(home, "SELECT agent_id, count(*) AS n FROM ideas GROUP BY 1")}
    latest: dict[str, int] = {}
    for row in stopped:
        latest.setdefault(row["agent"], row["ideas"])
    assert latest == total, "an agent's idea count started again from zero"

    check = aar("replay", session["session_id"], "--check", home=home, timeout=120)  # the views agree with the events
    assert check.returncode == 0 and "equal the recorder's SQL views" in check.stdout, check.stdout + check.stderr
    listed = aar("sessions", "-f", "json", home=home)
    assert listed.returncode == 0 and json.loads(listed.stdout.splitlines()[0])["resumed"] == 1
    again = aar("up", "--resume", "resumable", home=home)
    assert again.returncode == 1 and "nothing to resume" in again.stderr, again.stderr
