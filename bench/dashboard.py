"""Dashboard benchmark: every page's load time in a real headless Chromium on a
1M-event session, each API call's latency, and the live latency from a NATS publish to
the event shown in the open page, against baselines measured in the same run.

    .venv/bin/python bench/dashboard.py [--events 1000000] [--small 10000] [--repeat 3] [--live 20]

1. logs      bench/replay.py's synthetic log (bench/bus.py's realistic mix, typed projections
             caught up, checkpointed) at ``--events`` and at ``--small`` events (the baseline:
             a session the size of a short demo), each in its own AAR_HOME.
2. pages     the dashboard app served from each log (tests/dashboard_serve.py: read-only
             file audit, live from a real nats-server as the ``dashboard`` role); Debian's
             chromium (Playwright, the system browser) opens each page: ``goto`` until the
             page says it has drawn its data (``body[data-ready="1"]``, plotly's SVG for the
             figure and lineage). Median of ``--repeat`` loads, ms (target < 1000 ms each);
             ratio = big log / small log.
3. api       each page's JSON call over HTTP (httpx), median of ``--repeat``, ms.
4. live      ``--live`` events published to NATS one at a time; the time until the open
             events page shows it (a MutationObserver on ``#live-last`` stamps the arrival)
             against a raw NATS subscriber's receipt of the same publish (the baseline);
             p50 and max, ms.

Progress on stderr; the last stdout line is JSON with page_load_ms, api_ms, live_latency_ms
and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
ROOT = _HERE.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench_replay = _load("bench_replay", _HERE / "replay.py")

import httpx

from bus import Bus, BusSettings, NatsServer, Role
from core.logs import configure
from core.paths import AarHome
from schemas import Event
from schemas.agent import AgentToolCalled
from tests.dashboard_serve import chromium as find_chromium
from tests.dashboard_serve import served

say = bench_replay.say
SID = "s-bench-dashboard"
TARGET_PAGE_MS = 1000.0
TARGET_LIVE_MS = 1000.0
PAGES = ["sessions", "overview", "figure", "leaderboard", "lineage", "forum", "experiments", "costs", "integrity",
         "events"]
DRAWN = {"figure": ".main-svg", "lineage": ".main-svg"}  # plotly's pages: ready once the chart is drawn
API = {"sessions": "/api/sessions", **{p: f"/api/s/{SID}/{p}" for p in PAGES if p != "sessions"}}


def chromium() -> str:
    path = find_chromium()
    if path is None:
        raise SystemExit("no chromium: apt-get install chromium (make test installs it when run as root)")
    return path


def page_path(name: str) -> str:
    return "/" if name == "sessions" else f"/s/{SID}" + ("" if name == "overview" else f"/{name}")


def measure_pages(browser: Any, url: str, repeat: int) -> tuple[dict[str, float], dict[str, float]]:
    """Each page's median load and its first load (its queries cold in DuckDB's buffers,
    plotly.js compiled for the first time on the figure page)."""
    out: dict[str, float] = {}
    first: dict[str, float] = {}
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    try:
        page.goto(url + "/")  # warm: the browser's cache holds plotly.js, as it does for a user
        page.wait_for_selector('body[data-ready="1"]', timeout=60_000)
        for name in PAGES:
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                page.goto(url + page_path(name))
                page.wait_for_selector('body[data-ready="1"]', timeout=60_000)
                if name in DRAWN:
                    page.wait_for_selector(DRAWN[name], timeout=60_000)
                times.append((time.perf_counter() - t0) * 1000)
            out[name], first[name] = statistics.median(times), times[0]
            say(f"    {name:<12} {out[name]:8.1f} ms (first {first[name]:.1f} ms)")
    finally:
        page.close()
    if errors:
        raise RuntimeError(f"page errors: {errors[:3]}")
    return out, first


def measure_api(url: str, repeat: int) -> dict[str, float]:
    out: dict[str, float] = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for name, path in API.items():
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                client.get(path).raise_for_status()
                times.append((time.perf_counter() - t0) * 1000)
            out[name] = statistics.median(times)
    return out


class Publisher:
    """A thread with its own event loop and NATS connection (Playwright's sync API holds the
    main thread's): publishes one event and stamps a raw subscriber's receipt of it."""

    def __init__(self, server: NatsServer) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="publisher", daemon=True)
        self.thread.start()
        self.received: dict[str, float] = {}
        self.bus: Bus = self._run(Bus.connect(BusSettings.for_role(server.url, server.credentials, Role.ADMIN),
                                              name="bench-publisher"))
        self._run(self.bus.nc.subscribe(f"aar.{SID}.>", cb=self._on))
        self._run(self.bus.nc.flush())

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    async def _on(self, msg: Any) -> None:
        self.received[json.loads(msg.data)["id"]] = time.time() * 1000

    def publish(self, event: Event[Any]) -> float:
        async def go() -> float:
            t0 = time.time() * 1000
            await self.bus.nc.publish(event.subject, event.to_json())
            await self.bus.nc.flush()
            return t0

        return float(self._run(go()))

    def close(self) -> None:
        self._run(self.bus.close())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


STAMP = """() => { window.aarSeen = {}; const last = document.getElementById('live-last');
  new MutationObserver(() => { if (last.dataset.id) window.aarSeen[last.dataset.id] = Date.now(); })
    .observe(last, {attributes: true, attributeFilter: ['data-id']}); }"""


def measure_live(browser: Any, url: str, server: NatsServer, n: int) -> dict[str, float]:
    pub = Publisher(server)
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    shown, raw = [], []
    try:
        page.goto(url + page_path("events"))
        page.wait_for_selector('body[data-ready="1"]', timeout=60_000)
        page.wait_for_selector("#live.on", timeout=10_000)
        page.evaluate(STAMP)
        for i in range(n):
            event = Event.create(AgentToolCalled(agent_id="agent-1", tool="post"), session_id=SID, source="agent-1")
            t0 = pub.publish(event)
            page.wait_for_function("id => window.aarSeen[id] !== undefined", arg=event.id, timeout=10_000)
            shown.append(float(page.evaluate("id => window.aarSeen[id]", event.id)) - t0)
            deadline = time.monotonic() + 5
            while event.id not in pub.received and time.monotonic() < deadline:
                time.sleep(0.005)
            raw.append(pub.received[event.id] - t0)
            page.wait_for_timeout(50)
            if (i + 1) % 5 == 0:
                say(f"    live {i + 1} of {n}: p50 {statistics.median(shown):.1f} ms in the page, "
                    f"{statistics.median(raw):.2f} ms raw")
    finally:
        page.close()
        pub.close()
    return {"p50": statistics.median(shown), "max": max(shown), "raw_p50": statistics.median(raw),
            "raw_max": max(raw)}


def serve_and(home: AarHome, server: NatsServer, fn: Callable[[str], Any]) -> Any:
    with served(home, nats=server) as url:
        return fn(url)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=10_000, help="the baseline log's size")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--live", type=int, default=20, help="events published for the live latency")
    args = ap.parse_args(argv)
    configure(json=False, level=os.environ.get("AAR_LOG_LEVEL", "WARNING"))
    from playwright.sync_api import sync_playwright

    exe = chromium()
    with tempfile.TemporaryDirectory(prefix="aar-bench-dash-") as tmp:
        homes: dict[str, AarHome] = {}
        build: dict[str, dict[str, float]] = {}
        for label, n in (("small", args.small), ("big", args.events)):
            home = AarHome(Path(tmp) / label).ensure()
            say(f"[1/4] writing the {label} log: {n:,} events")
            t = time.perf_counter()
            build[label] = bench_replay.build_log(home.events_db, n, SID)
            build[label]["total_s"] = time.perf_counter() - t
            homes[label] = home
        server = NatsServer(Path(tmp) / "nats", log_file=Path(tmp) / "nats-server.log")
        server.start()
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
                try:
                    pages: dict[str, dict[str, float]] = {}
                    firsts: dict[str, dict[str, float]] = {}
                    api: dict[str, dict[str, float]] = {}
                    for label in ("small", "big"):
                        say(f"[2/4] page loads on the {label} log (median of {args.repeat})")
                        pages[label], firsts[label] = serve_and(homes[label], server,
                                                                lambda url: measure_pages(browser, url, args.repeat))
                        say(f"[3/4] API calls on the {label} log")
                        api[label] = serve_and(homes[label], server, lambda url: measure_api(url, args.repeat))
                    say(f"[4/4] live latency: {args.live} events published, on the big log's events page")
                    live = serve_and(homes["big"], server, lambda url: measure_live(browser, url, server, args.live))
                finally:
                    browser.close()
        finally:
            server.stop()

    big, small = pages["big"], pages["small"]
    say(f"\n{'page':<12} {'1M ms':>9} {'1M first':>9} {'small ms':>9} {'ratio':>7} {'api 1M ms':>10}")
    for name in PAGES:
        say(f"{name:<12} {big[name]:9.1f} {firsts['big'][name]:9.1f} {small[name]:9.1f} {big[name] / small[name]:7.2f} "
            f"{api['big'][name]:10.1f}")
    slowest = max(big, key=lambda k: big[k])
    say(f"slowest page: {slowest} {big[slowest]:.0f} ms (target {TARGET_PAGE_MS:.0f} ms)")
    say(f"live: p50 {live['p50']:.1f} ms, max {live['max']:.1f} ms in the page; raw NATS p50 {live['raw_p50']:.2f} ms "
        f"(target {TARGET_LIVE_MS:.0f} ms)")
    result = {
        "bench": "dashboard", "events": args.events, "small_events": args.small,
        "page_load_ms": {k: round(v, 1) for k, v in big.items()},
        "page_load_first_ms": {k: round(v, 1) for k, v in firsts["big"].items()},
        "page_load_small_ms": {k: round(v, 1) for k, v in small.items()},
        "page_load_ratio": {k: round(big[k] / small[k], 2) for k in big},
        "api_ms": {k: round(v, 1) for k, v in api["big"].items()},
        "api_small_ms": {k: round(v, 1) for k, v in api["small"].items()},
        "slowest_page": slowest, "slowest_page_ms": round(big[slowest], 1),
        "live_latency_ms": round(live["p50"], 1), "live_latency_max_ms": round(live["max"], 1),
        "raw_nats_ms": round(live["raw_p50"], 2),
        "live_over_raw": round(live["p50"] / max(live["raw_p50"], 1e-3), 1),
        "pages_under_target": all(v < TARGET_PAGE_MS for v in big.values()),
        "live_under_target": live["max"] < TARGET_LIVE_MS,
        "build_s": {k: round(v["total_s"], 1) for k, v in build.items()},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
