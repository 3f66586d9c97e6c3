"""``aar replay``, ``aar export`` and the named queries of ``aar audit --list/--named``."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.table import Table
from rich.text import Text

from core.audit import AuditResult, Param
from core.console import data, esc


def _console() -> Any:
    from core.console import console

    return console


def _err() -> Any:
    from core.console import err

    return err


def named_audit(list_: bool, name: str | None, session: str | None, fmt: Any,
                run: Callable[[str, Sequence[Param]], AuditResult],
                show: Callable[[AuditResult, Any], None]) -> None:
    """``aar audit --list`` / ``--named NAME [--session ID]``. ``run`` answers SQL with
    its parameters (the session id is bound, never spliced)."""
    from core.audit import is_text
    from replay.audits import QUERIES

    if list_:
        table = Table("name", "what it answers", title="named audit queries (aar audit --named NAME [--session ID])")
        for q in QUERIES.values():
            table.add_row(q.name, q.description)
        _console().print(table)
        return
    assert name is not None
    query = QUERIES.get(name)
    if query is None:
        _err().print(f"[red]no named query {name!r}[/red]; known: {', '.join(QUERIES)}")
        raise typer.Exit(2)
    if session is not None and not is_text(session):
        # (a lone surrogate, from invalid bytes in the argument: no session id holds one)
        _err().print(f"[red]no session {session!r} in the log: it is not valid text[/red]")
        raise typer.Exit(1)
    sql, params = query.bound(session)
    show(run(sql, params), fmt)


def register(app: typer.Typer) -> None:
    app.command("replay")(replay)
    app.command("export")(export)


def replay(
    session: Annotated[str, typer.Argument(help="session id (see `aar sessions`)")],
    until: Annotated[Optional[str], typer.Option(help="stop at this event id or ISO time (inclusive)")] = None,
    speed: Annotated[Optional[str], typer.Option(help="re-publish at X times the original pace ('max': no pacing)")] = None,
    verify: Annotated[bool, typer.Option("--verify", help="re-run every scored experiment and check its score")] = False,
    tolerance: Annotated[float, typer.Option(help="--verify: largest accepted accuracy difference")] = 1e-6,
    check: Annotated[bool, typer.Option("--check", help="compare the rebuilt models with the recorder's SQL views")] = False,
    all_events: Annotated[bool, typer.Option("--all", help="timeline: show LLM/tool/progress events too")] = False,
    format: Annotated[str, typer.Option("--format", "-f", help="text | json (the rebuilt read models)")] = "text",
    dashboard: Annotated[bool, typer.Option(
        "--dashboard", help="--speed with no stack running: serve the dashboard, its pages animate the copy")] = False,
) -> None:
    """Rebuild a session's read models from the log and print its timeline; or re-publish it live
    (--speed), or re-run its scored experiments (--verify)."""
    from core.paths import AarHome
    from replay import log as replay_log
    from replay.models import rebuild
    from replay.timeline import UNREAD_FOLDED, lines

    console, err = _console(), _err()
    home = AarHome.from_env()
    try:
        # A plain rebuild skips the payloads no read model reads; re-publishing, re-running
        # and the full timeline need every event whole.
        whole = speed is not None or verify or all_events
        rows = replay_log.load_session(session, until=replay_log.Until.parse(until), home=home,
                                       skip_payloads=frozenset() if whole else UNREAD_FOLDED)
    except (replay_log.UnknownSession, FileNotFoundError) as exc:
        err.print(f"[red]{esc(exc)}[/red]")
        raise typer.Exit(1) from None
    if speed is not None:
        from replay.republish import parse_speed, republish

        try:
            pace = parse_speed(speed)
        except ValueError as exc:
            err.print(f"[red]{esc(exc)}[/red]")
            raise typer.Exit(2) from None
        def say(text: str) -> None:
            console.print(text, highlight=False, markup=False)

        done = asyncio.run(republish(rows, pace, home=home, dashboard=say if dashboard else None))
        console.print(f"re-published {done.events} events of {session} as [cyan]{done.session_id}[/cyan] "
                      f"({done.target}) in {done.publish_s:.2f}s = {done.rate:,.0f} events/s"
                      + (f"; all recorded {done.recorded_s:.2f}s later" if done.recorded_s is not None else ""))
        return
    models = rebuild(rows, session)
    if verify:
        from replay.verify import verify as run_verify

        results = run_verify(rows, home=home, tolerance=tolerance)
        if format == "json":
            for r in results:
                sys.stdout.write(json.dumps(r.as_dict(), default=str) + "\n")
        else:
            table = Table("status", "experiment", "purpose/split", "method", "recorded acc", "re-run acc", "diff",
                          "recorded PGR", "re-run PGR", "artifacts", "detail",
                          title=f"verify {session} (tolerance {tolerance:g} on accuracy)")
            for r in results:
                style = "green" if r.status == "reproduced" else "red"
                table.add_row(Text(r.status, style=style), data(r.experiment_id), f"{r.purpose}/{r.split}", data(r.method),
                              f"{r.recorded_accuracy:.6f}", "" if r.rerun_accuracy is None else f"{r.rerun_accuracy:.6f}",
                              "" if r.accuracy_diff is None else f"{r.accuracy_diff:+.2e}",
                              "" if r.recorded_pgr is None else f"{r.recorded_pgr:.4f}",
                              "" if r.rerun_pgr is None else f"{r.rerun_pgr:.4f}",
                              ",".join(f"{k}:{v}" for k, v in r.artifacts.items() if v != "none"), data(r.detail))
            console.print(table)
        bad = [r for r in results if r.status != "reproduced"]
        console.print(f"{len(results) - len(bad)} of {len(results)} scores reproduced" +
                      (f"; [red]{len(bad)} not[/red]" if bad else ""))
        raise typer.Exit(1 if bad else 0)
    diffs: list[str] | None = None
    if check:
        import contextlib

        from replay.compare import compare

        from .log_audit import open_audit

        if until is None:
            with contextlib.closing(open_audit(home)) as log_audit:
                diffs = compare(models, log_audit, session)
    if format == "json":
        out = models.as_dict()
        if diffs is not None:
            out["check"] = diffs
        sys.stdout.write(json.dumps(out, default=str) + "\n")
    else:
        for line in lines(rows, all_events=all_events):
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        _print_models(models)
    if check and until is not None:
        err.print("[yellow]--check compares the complete session only (the views have no --until)[/yellow]")
    if diffs is not None:
        if diffs:
            console.print(f"[red]{len(diffs)} difference(s) from the SQL views:[/red]")
            for d in diffs[:50]:
                console.print("  " + d, markup=False, highlight=False)
            raise typer.Exit(1)
        console.print("[green]the rebuilt read models equal the recorder's SQL views, field by field[/green]")


def _print_models(models: Any) -> None:
    console = _console()
    s = models.summary()
    sess = s["session"]
    console.print(f"[bold]{esc(sess['name'])}[/bold] ({esc(sess['session_id'])}): {s['ideas']} ideas, {s['experiments']} "
                  f"experiments {s['experiments_by_status']}, {s['scores']} scores, {s['forum_posts']} forum posts, "
                  f"{s['integrity_flags']} integrity flags, ${s['cost_usd']:.4f}; ended: {sess['end_reason']}")
    board = models.leaderboard()[:10]
    if board:
        table = Table("idea", "agent", "method", "dev PGR", "test PGR", "held-out PGR", "shuffled acc", "flags",
                      title="leaderboard (rebuilt)")

        def f(v: float | None, d: int = 3) -> str:
            return "" if v is None else f"{v:.{d}f}"

        for r in board:
            table.add_row(data(r["idea_id"]), data(r["agent_id"]), data(r["method"]), f(r["dev_pgr"]), f(r["test_pgr"]),
                          f(r["heldout_pgr"]), f(r["shuffled_accuracy"]), data(",".join(r["flags"])))
        console.print(table)
    agents = models.agent_rows()
    if agents:
        table = Table("agent", "ideas", "LLM calls", "input tokens", "output tokens", "USD", title="cost per agent")
        for a in agents:
            table.add_row(data(a["agent_id"]), str(a["ideas"]), str(a["llm_calls"]), str(a["input_tokens"]),
                          str(a["output_tokens"]), f"{a['cost_usd']:.4f}")
        console.print(table)


EXPORT_COLUMNS = ("id", "type", "schema_version", "session_id", "source", "time", "correlation_id", "causation_id",
                  "subject", "stream_seq", "recorded_at")


def export_parquet(db: Path, session_id: str, out: Path) -> dict[str, int]:
    """Write the session's events to ``out/event_type=<type>/*.parquet``; returns rows per type.

    The only place a connection with file access is opened: its own read-only
    connection, statements built here (the session id must be a subject token;
    it and the path are bound parameters), never user SQL. ``aar audit`` keeps its
    own connection with external access disabled."""
    import duckdb

    from core.audit import code_identifier
    from schemas.base import is_subject_token

    if not is_subject_token(session_id):
        raise ValueError(f"not a session id: {session_id!r}")
    if not db.exists():
        raise FileNotFoundError(f"no event log at {db}")
    out.mkdir(parents=True, exist_ok=True)
    con = duckdb.connect(str(db), read_only=True, config={"enable_external_access": True})
    try:
        con.execute("SET lock_configuration = true")
        counts = dict(con.execute(
            "SELECT type, count(*) FROM events WHERE session_id = ? GROUP BY 1", [session_id]).fetchall())
        if not counts:
            raise LookupError(f"no events for session {session_id!r}")
        cols = ", ".join(map(code_identifier, EXPORT_COLUMNS))  # column names of this module
        con.execute(
            f"COPY (SELECT type AS event_type, {cols}, CAST(payload AS VARCHAR) AS payload FROM events "
            "WHERE session_id = ? ORDER BY time, id) "
            "TO ? (FORMAT PARQUET, PARTITION_BY (event_type), OVERWRITE_OR_IGNORE true)",
            [session_id, str(out.resolve())],
        )
    finally:
        con.close()
    return {k: int(v) for k, v in counts.items()}


def export(
    session: Annotated[str, typer.Argument(help="session id")],
    parquet: Annotated[Path, typer.Option("--parquet", help="folder to write (one sub-folder per event type)")],
) -> None:
    """Export a session's events as Parquet, partitioned by event type (payload as a JSON string)."""
    from core.paths import AarHome, read_run_file

    console, err = _console(), _err()
    home = AarHome.from_env()
    if read_run_file(home) is not None:
        err.print("[red]a stack is running on this AAR_HOME (the recorder holds the log): export after it stops[/red]")
        raise typer.Exit(2)
    try:
        counts = export_parquet(home.events_db, session, parquet)
    except (ValueError, LookupError, FileNotFoundError) as exc:
        err.print(f"[red]{esc(exc)}[/red]")
        raise typer.Exit(1) from None
    console.print(f"exported {sum(counts.values())} events of {session} to {parquet} "
                  f"({len(counts)} event types, partitioned by event_type)")
