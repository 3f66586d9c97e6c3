"""`aar up`, `aar audit` and `aar sessions` as a user runs them."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from typer.testing import CliRunner

from aar.cli import app
from bus import Bus
from bus.settings import admin_settings_from_home
from core.paths import AarHome
from services.recorder.store import EventStore, Recorded

from .factories import every_event

runner = CliRunner()


def aar(*args: str, home: AarHome, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AAR_HOME": str(home.root)}
    return subprocess.run(
        [sys.executable, "-m", "aar.cli", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture
def filled_home(home: AarHome) -> AarHome:
    store = EventStore(home.events_db)
    store.record([Recorded(e, i) for i, e in enumerate(every_event("s-cli"), 1)])
    store.close()
    return home


@pytest.mark.parametrize(
    "sql, kind",
    [
        ("DELETE FROM events", "DELETE"),
        ("DROP TABLE events", "DROP"),
        ("COPY events TO 'out.csv'", "COPY"),
        ("ATTACH 'other.duckdb' AS other", "ATTACH"),
        ("SELECT 1; DROP TABLE events", None),
        ("UPDATE events SET source = 'x'", "UPDATE"),
    ],
)
def test_audit_refuses_anything_but_reads(filled_home: AarHome, sql: str, kind: str | None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AAR_HOME", str(filled_home.root))
    result = runner.invoke(app, ["audit", sql])
    assert result.exit_code == 2
    message = result.output
    if kind is None:
        assert "one statement at a time" in message
    else:
        assert "read-only" in message and kind in message
    # Nothing changed.
    result = runner.invoke(app, ["audit", "SELECT count(*) AS n FROM events", "--format", "json"])
    assert result.exit_code == 0
    assert json.loads(result.stdout.strip()) == {"n": len(every_event())}


def test_audit_cannot_read_files(filled_home: AarHome, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AAR_HOME", str(filled_home.root))
    result = runner.invoke(app, ["audit", "SELECT * FROM read_text('/etc/hostname')"])
    assert result.exit_code == 2
    assert "disabled" in result.output


def test_audit_formats(filled_home: AarHome, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AAR_HOME", str(filled_home.root))
    sql = "SELECT type, payload->'seeds' AS seeds FROM events WHERE type = 'experiment.requested'"
    as_json = runner.invoke(app, ["audit", sql, "-f", "json"])
    assert json.loads(as_json.stdout) == {"type": "experiment.requested", "seeds": [0, 1, 2, 3, 4]}
    as_csv = runner.invoke(app, ["audit", sql, "-f", "csv"])
    assert as_csv.stdout.splitlines() == ["type,seeds", 'experiment.requested,"[0, 1, 2, 3, 4]"']
    as_table = runner.invoke(app, ["audit", sql])
    assert "experiment.requested" in as_table.stdout and "1 row(s)" in as_table.stdout
    sessions = runner.invoke(app, ["sessions", "-f", "json"])
    row = json.loads(sessions.stdout)
    assert row["session_id"] == "s-cli" and row["name"] == "demo" and row["events"] == len(every_event())


def test_audit_binds_values_given_on_the_command_line(filled_home: AarHome, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AAR_HOME", str(filled_home.root))
    sql = "SELECT count(*) AS n FROM events WHERE session_id = ? AND type = ?"
    found = runner.invoke(app, ["audit", sql, "-p", "s-cli", "-p", "experiment.requested", "-f", "json"])
    assert found.exit_code == 0, found.output
    assert json.loads(found.stdout) == {"n": 1}
    evil = runner.invoke(app, ["audit", sql, "-p", "s-cli' OR '1'='1", "-p", "x", "-f", "json"])
    assert evil.exit_code == 0 and json.loads(evil.stdout) == {"n": 0}  # a value, never SQL
    typed = runner.invoke(app, ["audit", "SELECT count(*) AS n FROM events WHERE list_contains(?, type) LIMIT ?",
                                "--params", '[["experiment.requested", "nope"], 5]', "-f", "json"])
    assert typed.exit_code == 0 and json.loads(typed.stdout) == {"n": 1}
    for args, message in ((["-p", "a", "--params", "[1]"], "not both"), (["--params", "{"], "not JSON"),
                          (["--params", '[{"a": 1}]'], "parameter 1 is a dict"),
                          (["-p", "only-one"], "takes 2 parameter(s) and 1 value(s)")):
        bad = runner.invoke(app, ["audit", sql, *args])
        assert bad.exit_code == 2 and message in " ".join(bad.output.split()), (args, bad.output)


def test_values_from_the_log_are_shown_as_text_not_markup(filled_home: AarHome, monkeypatch: pytest.MonkeyPatch) -> None:
    """An agent writes ids and titles: ``[/]`` must not crash a table, ``[link=...]`` or
    ``[conceal]`` must not change what the operator sees."""
    monkeypatch.setenv("AAR_HOME", str(filled_home.root))
    values = ["[/]", "[link=https://evil.example]trust me[/link]", "[conceal]hidden[/conceal]"]
    sql = "SELECT ? AS a, ? AS b, ? AS c"
    shown = runner.invoke(app, ["audit", sql, "--params", json.dumps(values)])
    assert shown.exit_code == 0, shown.output
    flat = "".join(shown.stdout.split())
    for value in values:
        assert "".join(value.split()) in flat, value
    refused = runner.invoke(app, ["audit", "SELECT * FROM no_such_table_[/]"])
    assert refused.exit_code == 2 and "no_such_table_[/]" in refused.output  # the error text, as is


def test_audit_without_a_log_says_what_to_do(home: AarHome, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AAR_HOME", str(home.root))
    result = runner.invoke(app, ["audit", "SELECT 1"])
    assert result.exit_code == 2
    assert "aar up" in result.output


# A small MiniLM -> MiniLM session: no 420 MB MPNet download in tests.
SMALL = ("--strong-model", "minilm", "--sizes", "20,100,100,50", "--seeds", "2")


@pytest.mark.slow
def test_up_runs_a_session_and_records_it(home: AarHome) -> None:
    done = aar("up", "--max-wall", "2", "--session", "smoke", "--agents", "0", *SMALL, home=home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "event log" in done.stdout
    assert not home.run_file.exists()
    listed = aar("sessions", "-f", "json", home=home)
    row = json.loads(listed.stdout)
    assert row["name"] == "smoke" and row["end_reason"] == "wall_clock"
    types = aar("audit", "SELECT type FROM events ORDER BY time, id", "-f", "csv", home=home).stdout.splitlines()
    assert types[:2] == ["type", "session.started"] and types.count("session.ended") == 1
    # The scorer may publish baselines (even while the session winds down), naive_soft's run among
    # them (the paired comparisons' baseline); nothing else happens without agents.
    baseline_run = {"artifact.stored", "experiment.requested", "experiment.started", "experiment.progress",
                    "experiment.finished", "score.withheld"}
    assert set(types[1:]) <= {"session.started", "session.draining", "session.ended", "baseline.computed",
                              *baseline_run}
    purposes = aar("audit", "SELECT DISTINCT purpose FROM experiments", "-f", "csv", home=home).stdout.split()
    assert set(purposes[1:]) <= {"baseline"}


def dashboard_while_running(home: AarHome) -> None:
    """The stack's dashboard service: its pages' data come from the running recorder (as the
    dashboard role), and its live stream carries the session's events as they happen."""
    import httpx

    from services.dashboard.server import read_url

    deadline = time.monotonic() + 30
    while (url := read_url(home)) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert url is not None, "the dashboard never wrote its address"
    sessions = httpx.get(f"{url}/api/sessions", timeout=30).json()["sessions"]
    sid = sessions[0]["session_id"]
    assert httpx.get(f"{url}/s/{sid}/leaderboard", timeout=30).status_code == 200
    with httpx.stream("GET", f"{url}/api/stream", params={"session": sid}, timeout=30) as stream:
        lines = stream.iter_lines()
        assert next(lines) == "retry: 1000" and next(lines) == ": live"
        seen = None
        for line in lines:  # the scorer's baseline runs publish events while the session goes on
            if line.startswith("data: "):
                seen = json.loads(line[6:])
                break
        assert seen is not None and seen["session_id"] == sid


@pytest.mark.slow
def test_up_restarts_a_crashed_service_and_stops_cleanly(home: AarHome) -> None:
    env = {**os.environ, "AAR_HOME": str(home.root), "ANTHROPIC_API_KEY": "sk-test-secret"}
    up = subprocess.Popen(
        [sys.executable, "-m", "aar.cli", "up", *SMALL], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.monotonic() + 60
        while admin_settings_from_home(home) is None and time.monotonic() < deadline:
            time.sleep(0.1)
        settings = admin_settings_from_home(home)
        assert settings is not None, "aar up never wrote its run file"

        async def recorder_pid() -> int | None:
            bus = await Bus.connect(settings, name="test")
            try:
                return int((await bus.request("recorder", "health", {}, timeout=1.0))["pid"])
            except Exception:  # noqa: BLE001 - not up yet, or restarting: ask again
                return None
            finally:
                await bus.close()

        async def session_started() -> bool:
            bus = await Bus.connect(settings, name="test")
            try:
                result = await bus.request(
                    "recorder", "audit", {"sql": "SELECT count(*) FROM events WHERE type = 'session.started'"}, timeout=1.0
                )
                return bool(result["rows"][0][0])
            except Exception:  # noqa: BLE001 - not up yet, or restarting: ask again
                return False
            finally:
                await bus.close()

        while not asyncio.run(session_started()) and time.monotonic() < deadline:
            time.sleep(0.1)
        dashboard_while_running(home)
        first = asyncio.run(recorder_pid())
        assert first is not None
        os.kill(first, signal.SIGKILL)
        second = None
        while (second is None or second == first) and time.monotonic() < deadline:
            time.sleep(0.2)
            second = asyncio.run(recorder_pid())
        assert second is not None and second != first, "the recorder was not restarted"
        # Each service runs as its own NATS user and never sees the user's API key.
        service_env = dict(
            line.split("=", 1) for line in Path(f"/proc/{second}/environ").read_text().split("\0") if "=" in line
        )
        assert service_env["AAR_NATS_USER"] == "recorder"
        assert "ANTHROPIC_API_KEY" not in service_env
        children = psutil.Process(up.pid).children(recursive=True)
        up.send_signal(signal.SIGTERM)
        out, _ = up.communicate(timeout=60)
    finally:
        if up.poll() is None:
            up.kill()
    assert up.returncode == 0, out
    assert "dashboard: http://127.0.0.1:" in out
    assert "service_crashed" in out and "recorder" in out
    assert not home.run_file.exists()
    assert not [p for p in children if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    reasons = aar("audit", "SELECT payload->>'reason' AS r FROM events WHERE type = 'session.ended'", "-f", "csv", home=home)
    assert reasons.stdout.splitlines() == ["r", "interrupted"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--strong-model", "gpt5"), "unknown backbone 'gpt5'"),
        (("--dataset", "mnist"), "unknown dataset 'mnist'"),
        (("--heldout", "nope"), "unknown dataset 'nope'"),
        (("--sizes", "10,20,30"), "--sizes takes four positive integers"),
        (("--sizes", "10,0,30,40"), "--sizes takes four positive integers"),
        (("--llm-price", "1"), "--llm-price takes two non-negative numbers"),
        (("--llm-price", "1,-2"), "--llm-price takes two non-negative numbers"),
        (("--llm-base-url", "localhost:8000"), "--llm-base-url must be an http:// or https:// URL"),
    ],
)
def test_up_refuses_bad_options_before_starting_anything(home: AarHome, monkeypatch: pytest.MonkeyPatch, args: tuple[str, ...], message: str) -> None:
    monkeypatch.setenv("AAR_HOME", str(home.root))
    result = runner.invoke(app, ["up", *args])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())
    assert not home.run_file.exists() and not (home.nats / "jetstream").exists()


def test_up_with_the_claude_backend_needs_an_api_key(home: AarHome, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AAR_HOME", str(home.root))
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    result = runner.invoke(app, ["up", "--backend", "claude"])
    assert result.exit_code == 2
    assert "ANTHROPIC_API_KEY" in result.output
    assert not home.run_file.exists()


def test_resume_refuses_what_it_cannot_go_on_with(home: AarHome) -> None:
    """--resume takes the session's own configuration, a session that exists, and one whose
    budget is not spent (the full run is tests/test_resume.py)."""
    from datetime import UTC, datetime, timedelta

    from schemas import Event
    from schemas.session import Backend, EndReason, SessionEnded, SessionStarted
    from services.orchestrator.config import SessionConfig

    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    config = SessionConfig(session_id="s-cli", name="demo").model_dump(mode="json")
    started = SessionStarted(name="demo", backend=Backend.OFFLINE, dataset="rotten_tomatoes", weak_model="minilm",
                             strong_model="mpnet", config=config)
    events: list[Event[Any]] = [Event.create(started, session_id="s-cli", source="orchestrator", time=t0),
              Event.create(SessionEnded(reason=EndReason.MAX_EXPERIMENTS), session_id="s-cli", source="orchestrator",
                           time=t0 + timedelta(seconds=60))]
    store = EventStore(home.events_db)
    store.record([Recorded(e, i) for i, e in enumerate(events, 1)])
    store.close()
    filled_home = home
    ended = aar("up", "--resume", "s-cli", home=filled_home)
    assert ended.returncode == 1 and "ended (max_experiments)" in ended.stderr and "nothing to resume" in ended.stderr
    by_name = aar("up", "--resume", "demo", home=filled_home)  # its name works as well as its id
    assert by_name.returncode == 1 and "session s-cli ended" in by_name.stderr
    unknown = aar("up", "--resume", "s-nope", home=filled_home)
    assert unknown.returncode == 1 and "no session 's-nope'" in unknown.stderr and "s-cli (demo)" in unknown.stderr
    mixed = aar("up", "--resume", "s-cli", "--agents", "4", "--seeds", "3", home=filled_home)
    assert mixed.returncode == 2 and "drop --agents, --seeds" in mixed.stderr
    empty = aar("up", "--resume", "s-cli", home=AarHome(filled_home.root.parent / "empty"))
    assert empty.returncode == 1 and "nothing to resume" in empty.stderr
