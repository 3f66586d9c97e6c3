"""The dashboard's web application (FastAPI): pages, their JSON, the live stream.

Read-only by construction: every route is a GET (any other method is 405), the data
comes from :class:`data.Reader` (audit SQL, values bound), and the live stream from
:class:`live.Hub`. Pages are one template each with the page's name; ``static/
dashboard.js`` renders them from ``/api/...`` with plotly.js, which is served from the
``plotly`` package (no CDN: offline clusters). Agents' text reaches the page as JSON
and is inserted as text, never as HTML; code is highlighted by Pygments on the server.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.responses import StreamingResponse as Streaming
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from core.audit import AuditFailed, AuditRefused, AuditTimeout

from .access import COOKIE, Access
from .data import LINEAGE_IDEAS, Reader
from .live import Hub

HERE = Path(__file__).resolve().parent
# page name -> its title in the navigation (the order of the navigation)
PAGES: dict[str, str] = {
    "overview": "Overview", "figure": "Figure", "leaderboard": "Leaderboard", "lineage": "Lineage",
    "forum": "Forum", "experiments": "Experiments", "costs": "Cost", "integrity": "Integrity", "events": "Events",
}
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                               "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def plotly_js() -> Path:
    import plotly

    path = Path(plotly.__file__).resolve().parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(f"plotly.min.js is not in the plotly package at {path}")
    return path


def highlight(code: str) -> str:
    from pygments import highlight as pyg
    from pygments.formatters import HtmlFormatter
    from pygments.lexers import PythonLexer

    return pyg(code, PythonLexer(), HtmlFormatter(linenos="table"))


def code_css() -> str:
    from pygments.formatters import HtmlFormatter

    return str(HtmlFormatter().get_style_defs(".highlight"))


def create_app(reader: Reader, hub: Hub, access: Access, *,
               reference: tuple[float, str] | None = None, title: str = "AAR") -> FastAPI:
    app = FastAPI(title="AAR dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.hub = hub
    templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(["html"]))
    plotly_path = plotly_js()
    css = code_css()

    @app.middleware("http")
    async def guard(request: Request, call_next: Any) -> Any:
        presented = request.query_params.get("token") or request.cookies.get(COOKIE)
        auth = request.headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            presented = auth[7:].strip()
        ok, why = access.allows(host_header=request.headers.get("host", ""), presented=presented)
        if not ok:
            return PlainTextResponse(why + "\n", status_code=401 if access.token else 403)
        if access.token and "token" in request.query_params:
            # Once shown, the token moves from the address into a cookie (not in history, logs).
            rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
            url = request.url.replace_query_params(**dict(rest)) if rest else request.url.remove_query_params("token")
            response: Any = RedirectResponse(str(url), status_code=303)
            response.set_cookie(COOKIE, access.token, httponly=True, samesite="strict")
        else:
            response = await call_next(request)
        for k, v in SECURITY_HEADERS.items():
            response.headers.setdefault(k, v)
        return response

    def render(page: str, session_id: str | None = None) -> HTMLResponse:
        html = templates.get_template("page.html").render(
            page=page, session_id=session_id, pages=PAGES, title=title,
            reference_pgr=None if reference is None else reference[0],
            reference_label=None if reference is None else reference[1])
        return HTMLResponse(html)

    def answer(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except LookupError as exc:
            raise HTTPException(404, str(exc)) from None
        except AuditTimeout as exc:
            raise HTTPException(504, f"the log did not answer in time: {exc}") from None
        except (AuditFailed, AuditRefused) as exc:
            raise HTTPException(500, f"the log could not answer: {exc}") from None

    # -- pages ------------------------------------------------------------------------

    @app.get("/", response_class=HTMLResponse)
    def sessions_page() -> HTMLResponse:
        return render("sessions")

    @app.get("/s/{session_id}", response_class=HTMLResponse)
    def overview_page(session_id: str) -> HTMLResponse:
        return render("overview", session_id)

    @app.get("/s/{session_id}/{page}", response_class=HTMLResponse)
    def session_page(session_id: str, page: str) -> HTMLResponse:
        if page not in PAGES:
            raise HTTPException(404, f"no page {page!r}: {', '.join(PAGES)}")
        return render(page, session_id)

    # -- data -------------------------------------------------------------------------

    @app.get("/api/sessions")
    def sessions(limit: int = 100, offset: int = 0) -> Any:
        return answer(reader.sessions, limit, offset)

    @app.get("/api/s/{session_id}/overview")
    def overview(session_id: str) -> Any:
        return answer(reader.overview, session_id)

    @app.get("/api/s/{session_id}/figure")
    def figure(session_id: str) -> Any:
        out = answer(reader.figure, session_id)
        out["reference"] = None if reference is None else {"pgr": reference[0], "label": reference[1]}
        return out

    @app.get("/api/s/{session_id}/leaderboard")
    def leaderboard(session_id: str, limit: int = 100, offset: int = 0) -> Any:
        return answer(reader.leaderboard, session_id, limit, offset)

    @app.get("/api/s/{session_id}/lineage")
    def lineage(session_id: str, limit: int = LINEAGE_IDEAS) -> Any:
        return answer(reader.lineage, session_id, limit)

    @app.get("/api/s/{session_id}/idea/{idea_id}")
    def idea(session_id: str, idea_id: str) -> Any:
        out = answer(reader.idea, session_id, idea_id)
        out["code_html"] = None if out["code"] is None else highlight(out["code"])
        return out

    @app.get("/api/s/{session_id}/forum")
    def forum(session_id: str, limit: int = 100, offset: int = 0) -> Any:
        return answer(reader.forum, session_id, limit, offset)

    @app.get("/api/s/{session_id}/experiments")
    def experiments(session_id: str, limit: int = 100, offset: int = 0, status: str | None = None) -> Any:
        return answer(reader.experiments, session_id, limit, offset, status or None)

    @app.get("/api/s/{session_id}/costs")
    def costs(session_id: str, limit: int = 100, offset: int = 0) -> Any:
        return answer(reader.costs, session_id, limit, offset)

    @app.get("/api/s/{session_id}/integrity")
    def integrity(session_id: str, limit: int = 100, offset: int = 0) -> Any:
        return answer(reader.integrity, session_id, limit, offset)

    @app.get("/api/s/{session_id}/events")
    def events(session_id: str, limit: int = 200, before_us: int | None = None, type: str | None = None,
               agent: str | None = None) -> Any:
        return answer(reader.events, session_id, limit=limit, before_us=before_us, type_prefix=type, agent=agent)

    @app.get("/api/stream")
    async def stream(request: Request, session: str | None = Query(default=None)) -> Streaming:
        return Streaming(hub.stream(session, request.is_disconnected), media_type="text/event-stream",
                         headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.get("/healthz")
    def healthz() -> JSONResponse:
        return JSONResponse({"ok": True, "live": hub.connected, "pages_open": len(hub.watchers),
                             "events_seen": hub.delivered})

    # -- assets -------------------------------------------------------------------------

    @app.get("/assets/plotly.min.js")
    def plotly_asset() -> FileResponse:
        return FileResponse(plotly_path, media_type="text/javascript",
                            headers={"Cache-Control": "public, max-age=86400"})

    @app.get("/assets/code.css")
    def code_asset() -> PlainTextResponse:
        return PlainTextResponse(css, media_type="text/css")

    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return app
