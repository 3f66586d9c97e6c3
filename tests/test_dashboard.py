"""The dashboard without a browser: every page's data from a real log file, paging,
read-only routes, the token and the loopback rule, the bind, and live events from a
real nats-server through the hub. (tests/test_dashboard_browser.py drives Chromium.)"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from bus import Bus, NatsServer, Role
from core.paths import AarHome
from schemas import Event
from schemas.agent import AgentToolCalled
from services.dashboard.access import Access, load_or_create_token
from services.dashboard.app import create_app
from services.dashboard.data import Reader
from services.dashboard.live import QUEUE, Hub, feed
from services.dashboard.server import Bind, access_for, bind_socket
from services.dashboard.service import blob_reader
from services.recorder.audit import FileAudit

from .conftest import settings
from .dashboard_log import CODE, SID, XSS_TITLE, Recorded_, write


@pytest.fixture
def recorded(home: AarHome) -> Recorded_:
    return write(home)


@pytest.fixture
def reader(recorded: Recorded_) -> Iterator[Reader]:
    audit = FileAudit.open(recorded.home.events_db)
    try:
        yield Reader(audit, blob_reader(recorded.home.artifacts))
    finally:
        audit.close()


def client(reader: Reader, access: Access | None = None, **kw: Any) -> TestClient:
    return TestClient(create_app(reader, Hub(), access or Access("127.0.0.1", None), **kw),
                      base_url="http://127.0.0.1:8765")


def test_every_page_and_its_data(reader: Reader, recorded: Recorded_) -> None:
    c = client(reader, reference=(0.23, "human baseline"))
    for path in ["/", f"/s/{SID}", *(f"/s/{SID}/{p}" for p in ("figure", "leaderboard", "lineage", "forum",
                                                                 "experiments", "costs", "integrity", "events"))]:
        r = c.get(path)
        assert r.status_code == 200, path
        assert "dashboard.js" in r.text and r.headers["content-security-policy"].startswith("default-src 'self'")
    assert c.get(f"/s/{SID}/nope").status_code == 404
    assert c.get("/assets/plotly.min.js").status_code == 200  # served from the package, no CDN

    sessions = c.get("/api/sessions").json()
    assert [s["session_id"] for s in sessions["sessions"]] == [SID] and sessions["sessions"][0]["agents"] == 2
    overview = c.get(f"/api/s/{SID}/overview").json()
    assert [a["direction"] for a in overview["agents"]] == ["confidence", "data selection"]
    assert overview["totals"]["experiments"] == 5 and overview["totals"]["failed"] == 1
    assert overview["session"]["end_reason"] == "max_experiments" and overview["elapsed_s"] == 41 * 60

    fig = c.get(f"/api/s/{SID}/figure").json()
    assert {a: sum(d["agent_id"] == a for d in fig["dots"]) for a in fig["agents"]} == recorded.dev_dots
    assert fig["naive_pgr"] == 0.3 and fig["reference"] == {"pgr": 0.23, "label": "human baseline"}
    assert [(p["idea_id"], p["test_pgr"], p["heldout_pgr"]) for p in fig["promoted"]] == [("i2", 0.5, 0.2)]

    board = c.get(f"/api/s/{SID}/leaderboard").json()
    assert [r["idea_id"] for r in board["rows"]] == ["i5", "i2", "i1", "i4"] and board["total"] == 4
    i2 = board["rows"][1]
    assert i2["vs"]["parent"]["tied"] is True and i2["vs"]["naive_soft"]["pgr_diff"] == 0.25
    assert (i2["test_pgr"], i2["heldout_pgr"], i2["heldout"]) == (0.5, 0.2, "imdb")
    assert board["rows"][0]["flags"] == "teacher_ablation"
    page2 = c.get(f"/api/s/{SID}/leaderboard?limit=2&offset=2").json()
    assert [r["idea_id"] for r in page2["rows"]] == ["i1", "i4"] and page2["rows"][0]["rank"] == 3

    lineage = c.get(f"/api/s/{SID}/lineage").json()
    assert sorted(n["id"] for n in lineage["nodes"]) == ["i1", "i2", "i3", "i4", "i5", "p1"]
    edges = {(e["from"], e["to"], e["kind"], e["cross"]) for e in lineage["edges"]}
    assert edges == {("i1", "i2", "parent", True), ("p1", "i2", "cites", True), ("i1", "i3", "parent", False)}
    assert next(n for n in lineage["nodes"] if n["id"] == "i1")["title"] == XSS_TITLE  # data, as written
    assert (lineage["ideas_shown"], lineage["ideas_total"]) == (5, 5)
    latest = c.get(f"/api/s/{SID}/lineage?limit=3").json()  # a long session: its latest ideas only
    assert sorted(n["id"] for n in latest["nodes"]) == ["i3", "i4", "i5"] and latest["edges"] == []
    assert (latest["ideas_shown"], latest["ideas_total"]) == (3, 5)

    code = c.get(f"/api/s/{SID}/idea/i2").json()
    assert code["code"] == CODE and 'class="highlight"' in code["code_html"]
    assert "&quot;&quot;&quot;Confidence-weighted" in code["code_html"] or "Confidence" in code["code_html"]
    assert [s["split"] for s in code["scores"]] == ["dev", "test", "heldout"] and code["runs"][0]["status"] == "finished"
    builtin = c.get(f"/api/s/{SID}/idea/i1").json()
    assert builtin["code_source"] == "built-in method aux_conf" and "def " in builtin["code"]
    assert [p["post_id"] for p in builtin["posts"]] == ["p1"]
    assert c.get(f"/api/s/{SID}/idea/nope").status_code == 404
    assert c.get("/api/s/nope/leaderboard").status_code == 404

    forum = c.get(f"/api/s/{SID}/forum").json()
    assert [(t["post_id"], t["vote_score"], [r["post_id"] for r in t["replies"]]) for t in forum["threads"]] == [
        ("p1", 1, ["p2"])]
    runs = c.get(f"/api/s/{SID}/experiments").json()
    assert runs["counts"] == {"finished": 4, "failed": 1} and runs["trainers"][0]["failed"] == 1
    failed = c.get(f"/api/s/{SID}/experiments?status=failed").json()["rows"]
    assert [r["error_class"] for r in failed] == ["MethodError"]
    costs = c.get(f"/api/s/{SID}/costs").json()
    assert [a["cost_usd"] for a in costs["agents"]] == [0.0, 0.0081] and costs["ideas"][0]["idea_id"] == "i2"
    flags = c.get(f"/api/s/{SID}/integrity").json()
    assert [f["check"] for f in flags["rows"]] == ["teacher_ablation"]


def test_events_page_filters_and_pages_without_gaps(reader: Reader) -> None:
    c = client(reader)
    seen: list[str] = []
    before = None
    while True:
        page = c.get(f"/api/s/{SID}/events", params={"limit": 7, **({"before_us": before} if before else {})}).json()
        seen += [e["id"] for e in page["events"]]
        before = page["next_before_us"]
        if before is None:
            break
    total = reader.audit.query("SELECT count(*) FROM events WHERE session_id = ?", [SID]).rows[0][0]
    # events of the same microsecond straddle a page boundary at most once each: none lost
    assert set(seen) == {r[0] for r in reader.audit.query("SELECT id FROM events WHERE session_id = ?", [SID]).rows}
    assert len(set(seen)) == total
    scores = c.get(f"/api/s/{SID}/events", params={"type": "score."}).json()["events"]
    assert scores and all(e["type"].startswith("score.") for e in scores)
    mine = c.get(f"/api/s/{SID}/events", params={"agent": "agent-2"}).json()["events"]
    assert mine and all(e["source"] == "agent-2" or '"agent-2"' in e["payload"] for e in mine)


def test_it_changes_nothing(reader: Reader, recorded: Recorded_) -> None:
    c = client(reader)
    before = reader.audit.query("SELECT count(*) FROM events").rows[0][0]
    for method in ("post", "put", "delete", "patch"):
        for path in ("/", f"/s/{SID}", f"/api/s/{SID}/leaderboard", f"/api/s/{SID}/idea/i2", "/api/sessions"):
            assert getattr(c, method)(path).status_code == 405, (method, path)
    assert reader.audit.query("SELECT count(*) FROM events").rows[0][0] == before
    # method code comes by the hash an idea names, verified; nothing else is read
    with pytest.raises(ValueError):
        blob_reader(recorded.home.artifacts)("../../etc/passwd")


def test_loopback_bind_answers_loopback_host_names_only(reader: Reader) -> None:
    c = client(reader)
    assert c.get("/api/sessions").status_code == 200
    # a page elsewhere reaching 127.0.0.1 under its own name (DNS rebinding) gets nothing
    assert c.get("/api/sessions", headers={"host": "attacker.example:8765"}).status_code == 403


def test_a_non_loopback_bind_needs_the_token(reader: Reader, home: AarHome, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="needs a token"):
        Access("0.0.0.0", None)
    said: list[str] = []
    access = access_for(home, Bind("0.0.0.0", 0, True), say=said.append)
    token_file = home.root / "dashboard" / "token"
    assert stat.S_IMODE(os.stat(token_file).st_mode) == 0o600
    assert len(said) == 1 and access.token is not None and access.token in said[0]
    again = access_for(home, Bind("0.0.0.0", 0, True), say=said.append)
    assert again.token == access.token and len(said) == 1  # printed once, when made
    c = TestClient(create_app(reader, Hub(), access), base_url="http://10.1.2.3:8765")
    assert c.get("/api/sessions").status_code == 401
    assert c.get(f"/s/{SID}/leaderboard").status_code == 401
    assert c.get("/api/sessions", headers={"authorization": "Bearer " + "x" * 43}).status_code == 401
    assert c.get("/api/sessions", headers={"authorization": f"Bearer {access.token}"}).status_code == 200
    r = c.get(f"/s/{SID}/leaderboard?token={access.token}", follow_redirects=False)
    assert r.status_code == 303 and "token" not in r.headers["location"]
    assert c.get(f"/s/{SID}/leaderboard").status_code == 200  # the cookie now
    assert load_or_create_token(token_file)[1] is False


def test_the_default_port_moves_when_taken_an_asked_one_does_not() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    try:
        import services.dashboard.server as server

        moved = bind_socket(Bind("127.0.0.1", port, False))
        assert moved.getsockname()[1] != port
        moved.close()
        with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}"):
            bind_socket(Bind("127.0.0.1", port, True))
        assert server.Bind.from_env(port=port).port_given
    finally:
        taken.close()


async def test_live_events_reach_watchers_of_their_session(nats_server: NatsServer, admin: Bus) -> None:
    bus = await Bus.connect(settings(nats_server, Role.DASHBOARD), name="dashboard-live")
    hub = Hub()
    try:
        await feed(hub, bus)
        with hub.watch(SID) as mine, hub.watch("other") as other, hub.watch(None) as every:
            event = Event.create(AgentToolCalled(agent_id="agent-1", tool="note"), session_id=SID, source="agent-1")
            await admin.publish(event)
            got = await asyncio.wait_for(mine.queue.get(), 5)
            assert (got["id"], got["type"], got["agent_id"]) == (event.id, "agent.tool_called", "agent-1")
            assert (await asyncio.wait_for(every.queue.get(), 5))["id"] == event.id
            assert other.queue.empty()
    finally:
        await bus.close()


def test_a_slow_page_loses_the_oldest_events_and_is_told() -> None:
    hub = Hub()
    with hub.watch(None) as w:
        for i in range(QUEUE + 5):
            hub.publish({"id": str(i), "session_id": "s", "type": "x"})
        assert w.lagged == 5 and w.queue.qsize() == QUEUE and w.queue.get_nowait()["id"] == "5"
