"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by
Playwright with the system browser as its executable): every page loads without a
console error, the figure has one series per agent with the recorded points, an event
published to NATS appears on the open page within 1 s, a lineage node opens its code,
agents' text stays text, and a non-loopback bind refuses a browser without the token.
Screenshots of every page go to ``test-artifacts/dashboard/`` (or ``$AAR_TEST_ARTIFACTS``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bus import Bus, BusSettings, NatsServer, Role
from core.paths import AarHome
from schemas import Event
from schemas.agent import AgentToolCalled

from .dashboard_log import CODE, SID, XSS_TITLE, Recorded_, write
from .dashboard_serve import chromium, served

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("AAR_TEST_ARTIFACTS") or ROOT / "test-artifacts") / "dashboard"
# a text each page must show (agents' words as they wrote them, HTML included)
EXPECT = {"sessions": "dash", "overview": "data selection", "leaderboard": XSS_TITLE, "forum": "confirmed on my side",
          "experiments": "MethodError", "costs": "$0.0081", "integrity": "ignores the teacher",
          "events": "session.ended"}
PAGES = ["overview", "figure", "leaderboard", "lineage", "forum", "experiments", "costs", "integrity", "events"]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    exe = chromium()
    if exe is None and os.environ.get("CI"):
        pytest.fail("no chromium in CI: make test installs Debian's chromium (apt-get install chromium)")
    if exe is None:
        pytest.skip("no chromium (make test installs Debian's chromium when it runs as root)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Recorded_, NatsServer, str]]:
    root = tmp_path_factory.mktemp("dash")
    home = AarHome(root / "aar").ensure()
    recorded = write(home)
    server = NatsServer(root / "nats", log_file=home.logs / "nats-server.log")
    server.start()
    try:
        with served(home, nats=server, reference=(0.23, "human baseline")) as url:
            yield recorded, server, url
    finally:
        server.stop()


class Console:
    """A page's console errors and uncaught exceptions."""

    def __init__(self, page: Any) -> None:
        self.errors: list[str] = []
        page.on("console", lambda m: self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None)
        page.on("pageerror", lambda e: self.errors.append(f"uncaught: {e}"))


def open_page(browser: Any, url: str) -> tuple[Any, Console]:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    seen = Console(page)
    response = page.goto(url)
    assert response is not None and response.status == 200, url
    page.wait_for_selector('body[data-ready="1"]', timeout=15_000)
    return page, seen


def test_every_page_loads_without_console_errors(browser: Any, stack: tuple[Recorded_, NatsServer, str]) -> None:
    _, _, url = stack
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for name, path in [("sessions", "/"), *((p, f"/s/{SID}" + ("" if p == "overview" else f"/{p}")) for p in PAGES)]:
        page, seen = open_page(browser, url + path)
        if name in ("figure", "lineage"):
            page.wait_for_selector(".main-svg", timeout=15_000)  # plotly has drawn
        page.wait_for_selector("#live.on", timeout=5_000)  # the live stream is open
        assert page.locator("#app .flag").count() == 0 or name in ("leaderboard", "integrity"), name
        text = page.inner_text("#app")
        assert "loading" not in text and "[object" not in text and "\nnull\n" not in text, name
        assert EXPECT.get(name, "") in text, name
        page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
        # agents' text is text: a title made of HTML is shown, never run
        assert page.evaluate("window.pwned") is None, name
        assert seen.errors == [], (name, seen.errors)
        page.close()


def test_the_figure_has_one_series_per_agent_with_its_points(browser: Any,
                                                             stack: tuple[Recorded_, NatsServer, str]) -> None:
    recorded, _, url = stack
    page, seen = open_page(browser, f"{url}/s/{SID}/figure")
    traces = page.evaluate("document.getElementById('chart').data.map(t => ({meta: t.meta, n: t.x.length}))")
    dots = {t["meta"]["agent"]: t["n"] for t in traces if t["meta"]["kind"] == "dots"}
    assert dots == recorded.dev_dots
    lines = [t["meta"]["agent"] for t in traces if t["meta"]["kind"] == "best"]
    assert sorted(lines) == sorted(recorded.dev_dots)
    kinds = {t["meta"]["kind"] for t in traces}
    assert {"test", "heldout", "naive", "reference"} <= kinds
    assert "human baseline" in page.inner_text("#chart")
    assert seen.errors == []


def _publish(server: NatsServer, event: Event[Any]) -> float:
    async def go() -> float:
        bus = await Bus.connect(BusSettings.for_role(server.url, server.credentials, Role.ADMIN), name="test-pub")
        try:
            t0 = time.monotonic()
            await bus.nc.publish(event.subject, event.to_json())
            await bus.nc.flush()
            return t0
        finally:
            await bus.close()

    # Playwright's sync API holds this thread's event loop: publish from another thread.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, go()).result(30)


def test_an_event_published_appears_on_the_open_page_within_a_second(
        browser: Any, stack: tuple[Recorded_, NatsServer, str]) -> None:
    _, server, url = stack
    page, seen = open_page(browser, f"{url}/s/{SID}/events")
    page.wait_for_selector("#live.on", timeout=5_000)
    event = Event.create(AgentToolCalled(agent_id="agent-1", tool="post"), session_id=SID, source="agent-1")
    t0 = _publish(server, event)
    page.wait_for_selector(f'#events tr[data-id="{event.id}"]', timeout=5_000)
    waited = time.monotonic() - t0
    assert waited < 1.0, f"the event took {waited:.2f}s to appear"
    assert page.get_attribute("#live-last", "data-id") == event.id
    # an event of another session does not show on this session's page
    other = Event.create(AgentToolCalled(agent_id="agent-1", tool="post"), session_id="s-other", source="agent-1")
    _publish(server, other)
    page.wait_for_timeout(300)
    assert page.locator(f'#events tr[data-id="{other.id}"]').count() == 0
    assert seen.errors == []


def test_a_lineage_node_opens_its_code(browser: Any, stack: tuple[Recorded_, NatsServer, str]) -> None:
    _, _, url = stack
    page, seen = open_page(browser, f"{url}/s/{SID}/lineage")
    page.wait_for_selector(".main-svg", timeout=15_000)
    # where plotly drew idea i2 (agent-written code), in page pixels; then a real click there
    x, y = page.evaluate("""() => {
        const gd = document.getElementById('graph'), L = gd._fullLayout;
        const t = gd.data.find(t => t.meta.kind === 'nodes' && t.meta.ids.includes('i2'));
        const i = t.meta.ids.indexOf('i2'), box = gd.getBoundingClientRect();
        return [box.left + L.margin.l + L.xaxis.l2p(t.x[i]), box.top + L.margin.t + L.yaxis.l2p(t.y[i])];
    }""")
    page.mouse.move(x, y)
    page.mouse.click(x, y)
    page.wait_for_selector("#detail:not([hidden]) #code .highlight", timeout=5_000)
    shown = page.inner_text("#code")
    assert "def run(ctx)" in shown and CODE.splitlines()[0].strip('"') in shown
    shown_all = page.inner_text("#detail")
    assert "hypothesis of i2" in shown_all and "[object" not in shown_all and "\nnull\n" not in shown_all
    assert page.locator('#detail a.idea[data-idea="i1"]').count() == 1  # builds on agent-1's idea
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "lineage-code.png"), full_page=True)
    assert seen.errors == []


def test_a_non_loopback_bind_refuses_a_browser_without_the_token(browser: Any, tmp_path: Path) -> None:
    home = AarHome(tmp_path / "aar").ensure()
    write(home)
    token = "t" * 43
    with served(home, host="0.0.0.0", token=token) as url:
        base = url.replace(url.split("//", 1)[1].split(":")[0], "127.0.0.1", 1)
        page = browser.new_page()
        denied = page.goto(f"{base}/s/{SID}/leaderboard")
        assert denied is not None and denied.status == 401 and "token" in page.inner_text("body")
        assert page.goto(f"{base}/api/sessions") is not None and "needs its token" in page.inner_text("body")
        ok = page.goto(f"{base}/s/{SID}/leaderboard?token={token}")
        assert ok is not None and ok.status == 200 and "token=" not in page.url
        page.wait_for_selector('body[data-ready="1"]', timeout=15_000)
        assert page.locator("table tbody tr").count() == 4
        page.close()
