"""Replay, verify, re-publish, named audits and export (issue 5).

The slow tests share one real session (`aar up`, 3 offline agents, MiniLM -> MiniLM,
12 experiments, 2 seeds), recorded once into a module-scoped AAR_HOME. Tests that
change things (tampering, re-publishing) work on copies of it."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from aar.cli import app
from core.paths import AarHome
from replay.audits import QUERIES
from replay.compare import compare, connection_query
from replay.log import Row, Until, rows_from_connection
from replay.models import rebuild
from replay.verify import verify
from schemas import EventType
from services.recorder.store import EventStore, Recorded
from services.recorder.views import create_schema
from trainer import sandbox

from .factories import sample_event
from .test_cli import aar

runner = CliRunner()
needs_sandbox = pytest.mark.skipif(sandbox.sandbox_problem() is not None, reason=f"no sandbox: {sandbox.sandbox_problem()}")


def _open(home: AarHome) -> duckdb.DuckDBPyConnection:
    return duckdb.connect(str(home.events_db), read_only=True, config={"enable_external_access": False})


# -- without a session: synthetic logs -----------------------------------------


@pytest.fixture
def synthetic(home: AarHome) -> tuple[AarHome, str]:
    """Several events of every type (LLM calls with costs, votes, moderation, flags, ...)."""
    sid = "s-synthetic"
    once = (EventType.AGENT_STARTED, EventType.AGENT_STOPPED, EventType.SESSION_STARTED, EventType.SESSION_ENDED)
    events = [sample_event(t, sid, n) for n in range(4) for t in EventType if n == 0 or t not in once]
    events += [sample_event(t, "s-other", n) for n in range(10, 12) for t in EventType]  # ids unique per session
    store = EventStore(home.events_db)
    store.record([Recorded(e, i) for i, e in enumerate(events, 1)])
    store.close()
    return home, sid


def test_replay_of_every_event_type_equals_the_views(synthetic: tuple[AarHome, str]) -> None:
    home, sid = synthetic
    con = _open(home)
    try:
        models = rebuild(rows_from_connection(con, sid), sid)
        assert compare(models, connection_query(con), sid) == []
    finally:
        con.close()
    assert len(models.ideas) == 4 and len(models.scores) == 8 and len(models.flags) == 4
    assert models.cost_by_agent["agent-1"]["calls"] == 4
    assert models.cost_by_agent["agent-1"]["cost_usd"] == pytest.approx(4 * 0.0123)
    assert all(p["hidden"] for p in models.post_rows())


def test_named_audits_list_and_run(synthetic: tuple[AarHome, str], monkeypatch: pytest.MonkeyPatch) -> None:
    home, sid = synthetic
    monkeypatch.setenv("AAR_HOME", str(home.root))
    listed = runner.invoke(app, ["audit", "--list"])
    assert listed.exit_code == 0
    for name in QUERIES:
        assert name in listed.output
        for session in (["--session", sid], []):
            done = runner.invoke(app, ["audit", "--named", name, *session, "-f", "json"])
            assert done.exit_code == 0, (name, done.output)
    cost = runner.invoke(app, ["audit", "--named", "cost_per_agent", "--session", sid, "-f", "json"])
    rows = [json.loads(line) for line in cost.stdout.splitlines()]
    assert rows[0]["agent_id"] == "agent-1" and rows[0]["llm_calls"] == 4
    general = runner.invoke(app, ["audit", "--named", "generalization", "--session", sid, "-f", "json"])
    promoted = [json.loads(line) for line in general.stdout.splitlines()]
    assert sorted(r["idea_id"] for r in promoted) == [f"idea-{n}" for n in range(4)]  # each has a test score
    assert all(r["dev_pgr"] == r["test_pgr"] == 0.55 and r["test_se"] == 0.1 and r["dev_minus_test"] == 0
               and r["heldout"] == "" for r in promoted), promoted
    assert runner.invoke(app, ["audit", "--named", "nope"]).exit_code == 2
    # The session is a bound value: an injection attempt is just a session no row has.
    evil = runner.invoke(app, ["audit", "--named", "tool_usage", "--session", "x' OR 1=1 --", "-f", "json"])
    assert evil.exit_code == 0 and evil.stdout.strip() == "", evil.output
    assert runner.invoke(app, ["audit"]).exit_code == 2


def test_export_parquet_and_audit_stays_sealed(synthetic: tuple[AarHome, str], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    home, sid = synthetic
    monkeypatch.setenv("AAR_HOME", str(home.root))
    out = tmp_path / "export"
    done = runner.invoke(app, ["export", sid, "--parquet", str(out)])
    assert done.exit_code == 0, done.output
    parts = sorted(p.name for p in out.iterdir())
    assert parts == sorted(f"event_type={t.value}" for t in EventType)
    table = pq.read_table(out / "event_type=idea.proposed")
    assert table.num_rows == 4
    assert {"id", "type", "session_id", "time", "causation_id", "payload"} <= set(table.column_names)
    assert json.loads(table.column("payload")[0].as_py())["idea_id"].startswith("idea-")
    # The audit path still refuses file access, whatever the export did.
    for sql in (f"SELECT * FROM read_parquet('{out}/*/*.parquet')",
                f"COPY events TO '{tmp_path / 'leak.csv'}'",
                "SELECT * FROM read_text('/etc/hostname')"):
        refused = runner.invoke(app, ["audit", sql])
        assert refused.exit_code == 2, sql
    assert not (tmp_path / "leak.csv").exists()
    assert runner.invoke(app, ["export", "bad'id", "--parquet", str(out)]).exit_code == 1


# -- a real recorded session -----------------------------------------------------


@pytest.fixture(scope="module")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> tuple[AarHome, str]:
    if sandbox.sandbox_problem() is not None:
        pytest.skip(f"no sandbox: {sandbox.sandbox_problem()}")
    home = AarHome(tmp_path_factory.mktemp("replay") / "aar").ensure()
    done = aar("up", "--agents", "3", "--max-experiments", "12", "--max-wall", "400", "--session", "replay",
               "--strong-model", "minilm", "--sizes", "20,400,400,200", "--seeds", "2", "--heldout", "none",
               home=home, timeout=600)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    con = _open(home)
    try:
        sid = con.execute("SELECT session_id FROM sessions WHERE name = 'replay'").fetchall()[0][0]
    finally:
        con.close()
    return home, sid


def _copy_home(src: AarHome, dst: Path, artifacts: bool = False) -> AarHome:
    home = AarHome(dst).ensure()
    shutil.copy2(src.events_db, home.events_db)
    if artifacts:
        shutil.rmtree(home.artifacts)
        shutil.copytree(src.artifacts, home.artifacts)
        shutil.rmtree(home.cache)
        os.symlink(src.cache, home.cache)  # cached features: read only
    return home


@pytest.mark.slow
def test_replayed_read_models_equal_the_live_views(session_home: tuple[AarHome, str]) -> None:
    home, sid = session_home
    con = _open(home)
    try:
        rows = rows_from_connection(con, sid)
        models = rebuild(rows, sid)
        assert compare(models, connection_query(con), sid) == []
        # spot checks beyond the comparison: the session really has content
        n_scores = con.execute(f"SELECT count(*) FROM scores WHERE session_id = '{sid}'").fetchall()[0][0]
    finally:
        con.close()
    assert len(models.scores) == n_scores >= 12
    assert len(models.ideas) >= 12 and len(models.posts) >= 3 and len(models.agents) == 3
    assert models.leaderboard()[0]["dev_pgr"] == max(s["pgr"] for s in models.scores.values()
                                                     if s["split"] == "dev" and s["purpose"] == "score")
    # and the command line says the same
    done = aar("replay", sid, "--check", home=home)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "equal the recorder's SQL views" in done.stdout and "session.started" in done.stdout


@pytest.mark.slow
def test_replay_until_an_event_matches_the_state_at_that_point(session_home: tuple[AarHome, str]) -> None:
    home, sid = session_home
    con = duckdb.connect()  # in memory: the log as it was at that event, with the recorder's own views
    try:
        con.execute(f"ATTACH '{home.events_db}' AS src (READ_ONLY)")
        (stop_id, stop_us), = con.execute(f"""
            SELECT id, epoch_us(time) FROM src.events WHERE session_id = '{sid}' AND type = 'score.published'
            ORDER BY time, id LIMIT 1 OFFSET 4""").fetchall()
        create_schema(con)
        con.execute(f"INSERT INTO events SELECT * FROM src.events WHERE (epoch_us(time), id) <= ({stop_us}, '{stop_id}')")
        con.execute("DETACH src")
        rows = rows_from_connection(_open(home), sid, until=Until(event_id=stop_id))
        assert rows[-1].id == stop_id
        models = rebuild(rows, sid)
        assert compare(models, connection_query(con), sid) == []
        assert models.session["scores"] == 5 and models.session["end_reason"] is None
        full = rebuild(rows_from_connection(_open(home), sid), sid)
        assert len(full.scores) > len(models.scores)
    finally:
        con.close()
    done = aar("replay", sid, "--until", stop_id, "-f", "json", home=home)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["session"]["scores"] == 5


@pytest.mark.slow
def test_verify_reproduces_scores_and_flags_a_tampered_artifact(session_home: tuple[AarHome, str],
                                                               tmp_path: Path) -> None:
    src, sid = session_home
    home = _copy_home(src, tmp_path / "aar", artifacts=True)
    rows = rows_from_connection(_open(home), sid)
    scores = [r for r in rows if r.type in ("score.published", "score.withheld")]
    dev = next(json.loads(r.payload) for r in scores  # a dev score agents saw (released with noise)
               if r.type == "score.published" and json.loads(r.payload)["split"] == "dev")
    test = next(json.loads(r.payload) for r in scores if json.loads(r.payload)["split"] == "test")
    keep = {dev["experiment_id"], test["experiment_id"]}

    def wanted(r: Row) -> bool:
        return r.type == "session.started" or (
            r.type in ("experiment.requested", "experiment.finished", "score.published", "score.withheld")
            and json.loads(r.payload)["experiment_id"] in keep)

    subset = [r for r in rows if wanted(r)]
    results = {v.experiment_id: v for v in verify(subset, home=home)}
    for v in results.values():
        assert v.status == "reproduced", v
        assert v.accuracy_diff is not None
        if v.experiment_id == test["experiment_id"]:  # withheld: exact
            assert abs(v.accuracy_diff) <= 1e-6
            assert v.rescored_accuracy == pytest.approx(v.recorded_accuracy, abs=1e-12)
        else:  # the dev score agents saw: released with noise, checked against its bound
            assert "released with noise" in v.detail and v.rescored_accuracy == pytest.approx(v.rerun_accuracy)
    # Tamper with the dev run's predictions blob.
    finished = next(json.loads(r.payload) for r in subset if r.type == "experiment.finished"
                    and json.loads(r.payload)["experiment_id"] == dev["experiment_id"])
    blob = home.artifacts / finished["predictions_artifact"][:2] / finished["predictions_artifact"]
    blob.chmod(stat.S_IWUSR | stat.S_IRUSR)
    blob.write_bytes(blob.read_bytes()[:-8] + b"\0" * 8)
    results = {v.experiment_id: v for v in verify(subset, home=home, rerun=False)}
    assert results[dev["experiment_id"]].status == "tampered"
    assert results[dev["experiment_id"]].artifacts["predictions"] == "tampered"
    assert "predictions artifact tampered" in results[dev["experiment_id"]].detail
    assert results[test["experiment_id"]].status == "reproduced"
    blob.unlink()
    assert next(v for v in verify(subset, home=home, rerun=False)
                if v.experiment_id == dev["experiment_id"]).status == "missing"


@pytest.mark.slow
def test_republished_session_is_recorded_with_causation_links(session_home: tuple[AarHome, str],
                                                              tmp_path: Path) -> None:
    src, sid = session_home
    home = _copy_home(src, tmp_path / "aar")
    done = aar("replay", sid, "--speed", "max", home=home)
    assert done.returncode == 0, done.stdout + done.stderr
    found = re.search(r"as (s-[0-9A-Z]+)", done.stdout)
    assert found is not None, done.stdout
    new_sid = found.group(1)
    assert new_sid != sid
    con = _open(home)
    try:
        original = con.execute(f"SELECT count(*) FROM events WHERE session_id = '{sid}'").fetchall()[0][0]
        linked = con.execute(f"""
            SELECT count(*), count(DISTINCT n.id), count(DISTINCT n.causation_id)
            FROM events n JOIN events o ON o.id = n.causation_id
            WHERE n.session_id = '{new_sid}' AND o.session_id = '{sid}' AND o.type = n.type
              AND o.payload = n.payload AND o.correlation_id IS NOT DISTINCT FROM n.correlation_id
              AND n.id <> o.id AND n.source = 'replay/' || o.source""").fetchall()[0]
        copied = con.execute(f"SELECT count(*) FROM events WHERE session_id = '{new_sid}'").fetchall()[0][0]
        replayed = rebuild(rows_from_connection(con, new_sid), new_sid)
    finally:
        con.close()
    assert copied == original and linked == (original, original, original)
    first = rebuild(rows_from_connection(_open(home), sid), sid)
    assert [(r["idea_id"], r["dev_pgr"]) for r in replayed.leaderboard()] == \
        [(r["idea_id"], r["dev_pgr"]) for r in first.leaderboard()]


@pytest.mark.slow
def test_replay_with_the_dashboard_animates_the_copy(session_home: tuple[AarHome, str], tmp_path: Path) -> None:
    """``aar replay SID --speed X --dashboard`` with no stack: a dashboard on the throw-away
    server, whose live stream carries the copy's events as they are re-published."""
    import subprocess
    import sys
    import threading
    import time

    import httpx

    src, sid = session_home
    home = _copy_home(src, tmp_path / "aar")
    con = _open(home)
    try:
        span = con.execute(f"SELECT epoch(max(time)) - epoch(min(time)) FROM events WHERE session_id = '{sid}'"
                           ).fetchall()[0][0]
    finally:
        con.close()
    speed = max(float(span) / 6.0, 1.0)  # about 6 s of re-publishing
    env = {**os.environ, "AAR_HOME": str(home.root), "AAR_DASHBOARD_PORT": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "aar.cli", "replay", sid, "--speed", f"{speed:.3f}", "--dashboard"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out: list[str] = []
    started = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            out.append(line)
            if line.startswith("dashboard: "):
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert started.wait(60), "".join(out)
        url = next(line for line in out if line.startswith("dashboard: ")).split(" ", 1)[1].strip()
        assert url.startswith("http://127.0.0.1:"), url
        seen: list[dict[str, object]] = []
        t0 = time.monotonic()
        with httpx.stream("GET", f"{url}/api/stream", timeout=30) as stream:
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    seen.append(json.loads(line[6:]))
                if len(seen) >= 5 or time.monotonic() - t0 > 30:
                    break
        assert len(seen) >= 5 and all(str(e["source"]).startswith("replay/") for e in seen)
        assert proc.wait(120) == 0, "".join(out)
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    new_sid = re.search(r"as (s-[0-9A-Z]+)", "".join(out))
    assert new_sid is not None and {e["session_id"] for e in seen} == {new_sid.group(1)}
