"""The ``aar`` command line (DESIGN.md section 8)."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import signal
import sys
import time
from collections.abc import Sequence
from enum import StrEnum
from typing import Annotated, Optional

import typer
from rich.table import Table

from core.audit import AuditResult, Param
from core.console import console, data, err, esc
from core.logs import configure
from core.paths import AarHome
from core.processes import BY_SERVICE
from schemas.base import new_session_id
from schemas.session import Backend

from .log_audit import run_audit

app = typer.Typer(help="AAR: automated alignment research on weak-to-strong supervision.", no_args_is_help=True,
                  pretty_exceptions_show_locals=False)


class OutputFormat(StrEnum):
    TABLE = "table"
    CSV = "csv"
    JSON = "json"


@app.callback()
def _main(
    home: Annotated[Optional[str], typer.Option("--home", envvar="AAR_HOME", help="data folder (default ./.aar)")] = None,
) -> None:
    configure(json=False)
    if home is not None:
        import os

        os.environ["AAR_HOME"] = home


def _heldout(names: list[str] | None) -> dict[str, list[str]]:
    """``--heldout``: absent, the default set (ScoringConfig's); ``none``, no held-out dataset."""
    if names is None:
        return {}
    return {"heldout": [n for n in names if n != "none"]}


@app.command()
def up(
    ctx: typer.Context,
    agents: Annotated[int, typer.Option(min=0, help="researcher agents")] = 3,
    trainers: Annotated[int, typer.Option(min=0, help="trainer processes")] = 1,
    backend: Annotated[Backend, typer.Option(help="offline policy or Claude")] = Backend.OFFLINE,
    max_experiments: Annotated[Optional[int], typer.Option(min=1, help="end after this many scored experiments")] = None,
    max_wall: Annotated[Optional[float], typer.Option(min=1, help="end after this many seconds")] = None,
    max_usd: Annotated[Optional[float], typer.Option(min=0, help="session dollar budget (Claude)")] = None,
    dataset: Annotated[str, typer.Option(help="task dataset")] = "rotten_tomatoes",
    session: Annotated[Optional[str], typer.Option(help="a name for the session")] = None,
    weak_model: Annotated[str, typer.Option(help="weak teacher backbone")] = "minilm",
    strong_model: Annotated[str, typer.Option(help="strong student backbone")] = "mpnet",
    seeds: Annotated[int, typer.Option(min=1, max=50, help="seeds per experiment and baseline")] = 5,
    sizes: Annotated[str, typer.Option(help="rows in splits A,B,dev,test")] = "300,2000,3000,1500",
    heldout: Annotated[Optional[list[str]], typer.Option(
        help="held-out dataset for top ideas (repeatable; default imdb; 'none' for none)")] = None,
    unsafe_no_sandbox: Annotated[
        bool, typer.Option("--unsafe-no-sandbox", help="run agent code without bubblewrap (flagged in the log)")
    ] = False,
    model: Annotated[str, typer.Option(help="Claude model (--backend claude)")] = "claude-sonnet-4-6",
    max_usd_per_agent: Annotated[Optional[float], typer.Option(min=0, help="dollar budget per agent (Claude)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the offline agents and of direction assignment")] = 0,
    llm_base_url: Annotated[Optional[str], typer.Option(
        help="a server that speaks the Messages API (self-hosted models; sets ANTHROPIC_BASE_URL for agents)")] = None,
    llm_price: Annotated[Optional[str], typer.Option(
        help="USD per million input,output tokens of --model, e.g. 0,0 for a free self-hosted model")] = None,
    resume: Annotated[Optional[str], typer.Option(
        help="continue an interrupted session (its id or name) with its own configuration", metavar="SESSION")] = None,
    dashboard: Annotated[bool, typer.Option(help="serve the live web dashboard (the dashboard service)")] = True,
    dashboard_host: Annotated[Optional[str], typer.Option(
        help="the dashboard's address (default 127.0.0.1; any other needs its token, printed once)")] = None,
    dashboard_port: Annotated[Optional[int], typer.Option(
        min=0, max=65535, help="the dashboard's port (default 8765, or a free one when taken)")] = None,
) -> None:
    """Start the embedded stack and run one research session (or continue one: --resume)."""
    from core.paths import read_run_file
    from services.orchestrator.config import RESUME_ENV, SessionConfig

    from .supervisor import Supervisor, default_specs, log_paths

    home = AarHome.from_env().ensure()
    if read_run_file(home) is not None:
        err.print(f"[red]a session is already running on {home.root}[/red] (see {home.run_file}); stop it first")
        raise typer.Exit(1)
    resume_at: float | None = None
    if resume is not None:
        from .resume_cmd import ResumeError, find

        def typed(name: str) -> bool:  # on the command line (typer vendors its own click: compare by name)
            source = ctx.get_parameter_source(name)
            return source is not None and source.name == "COMMANDLINE"

        given = sorted(f"--{p.name.replace('_', '-')}" for p in ctx.command.params
                       if p.name is not None and p.name != "resume" and typed(p.name))
        if given:
            err.print(f"[red]--resume goes on with the session's own configuration; drop {', '.join(given)}[/red]")
            raise typer.Exit(2)
        try:
            found = find(home, resume)
        except ResumeError as exc:
            err.print(f"[red]{esc(exc)}[/red]")
            raise typer.Exit(1) from None
        config, resume_at = found.config, time.time()
        session_id, name, backend, llm_base_url = config.session_id, config.name, config.backend, config.llm_base_url
        weak_model, strong_model, agents, trainers = config.weak_model, config.strong_model, config.agents, config.trainers
        max_wall, max_experiments = config.max_wall_s, config.max_experiments
        how = "was killed" if found.previous_end is None else f"ended ({found.previous_end.value})"
        console.print(f"resuming session [cyan]{session_id}[/cyan] ({esc(name)}): its last run {how}; "
                      f"{found.dev_scores} dev score(s) so far, {found.resumes} earlier resume(s)")
        if backend is Backend.CLAUDE:
            import os

            if not os.environ.get("ANTHROPIC_API_KEY") and not (llm_base_url or os.environ.get("ANTHROPIC_BASE_URL")):
                err.print("[red]this session's agents use Claude: ANTHROPIC_API_KEY is needed in the environment[/red]")
                raise typer.Exit(2)
    else:
        if llm_base_url is not None and not llm_base_url.startswith(("http://", "https://")):
            err.print(f"[red]--llm-base-url must be an http:// or https:// URL, got {esc(llm_base_url)!r}[/red]")
            raise typer.Exit(2)
        price: tuple[float, float] | None = None
        if llm_price is not None:
            try:
                low, high = (float(x) for x in llm_price.split(","))
                if min(low, high) < 0:
                    raise ValueError
                price = (low, high)
            except ValueError:
                err.print(f"[red]--llm-price takes two non-negative numbers INPUT,OUTPUT (USD per million tokens), "
                          f"got {esc(llm_price)!r}[/red]")
                raise typer.Exit(2) from None
        if backend is Backend.CLAUDE:
            import os

            if not os.environ.get("ANTHROPIC_API_KEY") and not (llm_base_url or os.environ.get("ANTHROPIC_BASE_URL")):
                err.print("[red]--backend claude needs ANTHROPIC_API_KEY in the environment (or --llm-base-url)[/red]")
                raise typer.Exit(2)
        if session is not None and not session.strip():
            err.print("[red]--session must not be empty[/red]")
            raise typer.Exit(2)
        try:
            split_sizes = dict(zip(("A", "B", "dev", "test"), (int(x) for x in sizes.split(",")), strict=True))
            if min(split_sizes.values()) < 1:
                raise ValueError
        except ValueError:
            err.print(f"[red]--sizes takes four positive integers A,B,dev,test, got {sizes!r}[/red]")
            raise typer.Exit(2) from None
        from services.scorer.config import ScoringConfig
        from trainer.data import spec as dataset_spec
        from trainer.errors import UnknownNameError
        from trainer.models import spec as model_spec

        try:
            for name_ in (weak_model, strong_model):
                model_spec(name_)
            for name_ in (dataset, *(h for h in (heldout or []) if h != "none")):
                dataset_spec(name_)
        except UnknownNameError as exc:
            err.print(f"[red]{esc(exc)}[/red]")
            raise typer.Exit(2) from None
        session_id = new_session_id()
        name = session or session_id
        config = SessionConfig(
            session_id=session_id, name=name, agents=agents, trainers=trainers, backend=backend, dataset=dataset,
            weak_model=weak_model, strong_model=strong_model,
            max_experiments=max_experiments, max_usd=max_usd, max_wall_s=max_wall,
            model=model, max_usd_per_agent=max_usd_per_agent, seed=seed, llm_base_url=llm_base_url, llm_price=price,
            scoring=ScoringConfig(seeds=seeds, split_sizes=split_sizes, **_heldout(heldout)),
        )
    # Backbones first, in the foreground: a download shows its progress here and a
    # failure (no network, a corrupt file) is a clear error before anything starts.
    from trainer.errors import TrainerError
    from trainer.models import model_path

    try:
        for name_ in dict.fromkeys((weak_model, strong_model)):
            model_path(name_, home, progress=True)
    except (TrainerError, OSError) as exc:
        err.print(f"[red]cannot prepare backbone {name_!r}: {esc(exc)}[/red]")
        raise typer.Exit(1) from None
    import os as _os

    # Only agent processes of the Claude backend get the API key.
    agent_env: dict[str, str] = {}
    if backend is Backend.CLAUDE:
        if _os.environ.get("ANTHROPIC_API_KEY"):
            agent_env["ANTHROPIC_API_KEY"] = _os.environ["ANTHROPIC_API_KEY"]
        base_url = llm_base_url or _os.environ.get("ANTHROPIC_BASE_URL")
        if base_url:
            agent_env["ANTHROPIC_BASE_URL"] = base_url
    supervisor = Supervisor(
        home,
        default_specs({**config.to_env(), **({RESUME_ENV: repr(resume_at)} if resume_at is not None else {})},
                      agents=agents, trainers=trainers, unsafe_no_sandbox=unsafe_no_sandbox,
                      agent_env=agent_env, dashboard=dashboard,
                      dashboard_env={k: str(v) for k, v in (("AAR_DASHBOARD_HOST", dashboard_host),
                                                             ("AAR_DASHBOARD_PORT", dashboard_port)) if v is not None}),
    )
    console.print(f"[bold]AAR[/bold] session [cyan]{session_id}[/cyan] ({name}) in {home.root}")

    async def run() -> str:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        from .progress import SessionWatch

        watch = SessionWatch(session_id)
        shown = {"version": -1, "at": 0.0}

        def tick() -> None:
            now = time.monotonic()
            if (watch.version != shown["version"] and now - shown["at"] >= 2) or now - shown["at"] >= 30:
                console.print(watch.line(), highlight=False, soft_wrap=True)
                shown.update(version=watch.version, at=now)

        try:
            # The progress line subscribes before any service starts: it sees their first events
            # (a resumed session's orchestrator says so at once).
            await supervisor.start(before_services=lambda: watch.start(supervisor.admin_settings()))
            console.print(f"nats-server at {supervisor.server.url}; services: {', '.join(supervisor.children)}")
            if dashboard:
                url = await supervisor.dashboard_url()
                console.print(f"dashboard: [cyan]{url}/s/{session_id}[/cyan]" if url else
                              f"[yellow]the dashboard has not started yet (see {home.logs / 'dashboard.log'})[/yellow]",
                              highlight=False)
            if max_wall is None and max_experiments is None:
                console.print("running until Ctrl-C")
            return await supervisor.run(stop, on_tick=tick)
        finally:
            await watch.close()
            console.print("stopping services ...")
            await supervisor.shutdown()

    why = asyncio.run(run())
    console.print(f"session {session_id}: {why}")
    import contextlib

    from .log_audit import open_audit
    from .summary import print_summary

    try:
        with contextlib.closing(open_audit(home)) as log_audit:
            print_summary(log_audit, session_id, console)
    except Exception as exc:  # noqa: BLE001 - the summary is a courtesy: never fail the session over it
        err.print(f"[yellow]no summary: {esc(exc)}[/yellow]")
    for label, path in log_paths(home).items():
        console.print(f"  {label}: {path}")
    try:  # the log's hash chain: a head kept outside AAR_HOME proves nothing was rewritten since
        head = run_audit("SELECT hash, batch FROM log_chain ORDER BY batch DESC LIMIT 1").rows
        if head:
            console.print(f"  log chain head: {head[0][0]} (batch {head[0][1]}; keep it: "
                          f"aar verify-log --head {head[0][0]})")
    except Exception as exc:  # noqa: BLE001 - a courtesy, like the summary
        err.print(f"[yellow]no chain head: {esc(exc)}[/yellow]")
    console.print(f'  audit it: aar audit "SELECT type, count(*) FROM events WHERE session_id = \'{session_id}\' GROUP BY 1"')


def _print_result(result: AuditResult, fmt: OutputFormat) -> None:
    columns, rows = result.columns, result.rows
    if fmt is OutputFormat.JSON:
        for row in rows:
            sys.stdout.write(json.dumps(dict(zip(columns, row, strict=True)), default=str) + "\n")
    elif fmt is OutputFormat.CSV:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([json.dumps(v) if isinstance(v, (list, dict)) else v for v in row])
        sys.stdout.write(buf.getvalue())
    else:
        table = Table(*columns, show_lines=False)
        for row in rows:
            table.add_row(*[data(v) for v in row])
        console.print(table)
        console.print(f"{len(rows)} row(s)" + (" (truncated)" if result.truncated else ""))


def _audit_or_exit(sql: str, params: Sequence[Param] = ()) -> AuditResult:
    from bus.client import QueryError
    from core.audit import AuditFailed, AuditRefused

    try:
        return run_audit(sql, params)
    except (AuditRefused, AuditFailed, QueryError, FileNotFoundError) as exc:
        err.print(f"[red]{esc(exc)}[/red]")
        raise typer.Exit(2) from None
    except Exception as exc:  # noqa: BLE001 - duckdb errors: bad SQL, unknown column, ...
        err.print(f"[red]{type(exc).__name__}: {esc(exc)}[/red]")
        raise typer.Exit(2) from None


@app.command()
def audit(
    sql: Annotated[Optional[str], typer.Argument(help="a read-only SELECT over events and the views")] = None,
    format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.TABLE,
    list_: Annotated[bool, typer.Option("--list", help="list the named audit queries")] = False,
    named: Annotated[Optional[str], typer.Option("--named", help="run a named audit query (see --list)")] = None,
    session: Annotated[Optional[str], typer.Option("--session", help="--named: only this session")] = None,
    param: Annotated[Optional[list[str]], typer.Option(
        "--param", "-p", help="a text value bound to the next ? or $n (repeatable, in order)")] = None,
    params_json: Annotated[Optional[str], typer.Option(
        "--params", help='all bound values as one JSON list (typed: \'["s-1", 3, ["a", "b"]]\')')] = None,
) -> None:
    """Run read-only SQL over the event log (or a named audit query: --list, --named).

    Values go in as bound parameters, never into the SQL text:
    aar audit "SELECT * FROM ideas WHERE session_id = ?" --param s-01J..."""
    if list_ or named is not None:
        from .replay_cmds import named_audit

        return named_audit(list_, named, session, format, _audit_or_exit, _print_result)
    if sql is None:
        err.print("[red]give a SELECT, --named NAME or --list[/red]")
        raise typer.Exit(2)
    _print_result(_audit_or_exit(sql, _cli_params(param, params_json)), format)


def _cli_params(texts: list[str] | None, as_json: str | None) -> list[Param]:
    """``--param`` values (text) or ``--params`` (one JSON list), checked like any audit's."""
    from core.audit import AuditParamError, check_params

    if texts and as_json is not None:
        err.print("[red]give either --param (repeatable) or --params JSON, not both[/red]")
        raise typer.Exit(2)
    try:
        if as_json is None:
            return check_params(list(texts or []))
        try:
            values = json.loads(as_json)
        except json.JSONDecodeError as exc:
            raise AuditParamError(f"--params is not JSON: {exc}") from None
        return check_params(values)
    except AuditParamError as exc:
        err.print(f"[red]{esc(exc)}[/red]")
        raise typer.Exit(2) from None


@app.command()
def sessions(format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.TABLE) -> None:
    """List the sessions in the log."""
    _print_result(
        _audit_or_exit(
            "SELECT session_id, name, backend, dataset, first_event, last_event, events, scores, resumed, end_reason "
            "FROM sessions ORDER BY first_event"
        ),
        format,
    )


@app.command()
def lineage(
    any_id: Annotated[str, typer.Argument(metavar="ID", help="an idea id, an experiment id or a score event id")],
    format: Annotated[OutputFormat, typer.Option("--format", "-f")] = OutputFormat.TABLE,
) -> None:
    """The chain behind a score: agent, direction, hypothesis, parent ideas, cited posts, artifact, runs, flags."""
    import contextlib

    from bus.client import QueryError
    from core.audit import AuditFailed, AuditRefused

    from .lineage import LineageError, render
    from .lineage import lineage as build
    from .log_audit import open_audit

    try:
        with contextlib.closing(open_audit()) as log_audit:
            data = build(log_audit, any_id)
    except LineageError as exc:
        err.print(f"[red]{esc(exc)}[/red]")
        raise typer.Exit(1) from None
    except (AuditRefused, AuditFailed, QueryError, FileNotFoundError) as exc:
        err.print(f"[red]{esc(exc)}[/red]")
        raise typer.Exit(2) from None
    if format is OutputFormat.JSON:
        sys.stdout.write(json.dumps(data, default=str, indent=1) + "\n")
    else:
        render(data, console)


# `aar service NAME` runs a module of the process table (core.processes).
SERVICE_MODULES = {name: proc.module for name, proc in BY_SERVICE.items() if proc.module is not None}


@app.command("service", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run_service(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help=" | ".join(SERVICE_MODULES))],
) -> None:
    """Run one service process (what `aar up` and compose start); extra arguments go to the service."""
    import runpy
    import sys

    if name not in SERVICE_MODULES:
        err.print(f"[red]unknown service {name!r}[/red]; known: {', '.join(sorted(SERVICE_MODULES))}")
        raise typer.Exit(2)
    sys.argv = [SERVICE_MODULES[name], *ctx.args]
    runpy.run_module(SERVICE_MODULES[name], run_name="__main__")


app.add_typer(__import__("aar.models_cmd", fromlist=["app"]).app, name="models")  # aar models list|fetch
__import__("aar.replay_cmds", fromlist=["register"]).register(app)  # aar replay, aar export
__import__("aar.verify_log", fromlist=["register"]).register(app)  # aar verify-log
app.command("plot")(__import__("aar.plot_cmd", fromlist=["plot"]).plot)  # the study's figure
app.command("dashboard")(__import__("aar.dashboard_cmd", fromlist=["dashboard"]).dashboard)  # the web view
app.command("nats-config")(__import__("aar.compose_cmds", fromlist=["x"]).nats_config)  # docs/compose.md
app.command("healthcheck")(__import__("aar.compose_cmds", fromlist=["x"]).healthcheck)

if __name__ == "__main__":  # pragma: no cover
    app()
