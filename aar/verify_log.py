"""``aar verify-log``: is the event log as it was recorded?

Checks, each with plain SQL through the guarded audit path (the recorder while a stack
runs, else the file read-only, attached in a fresh in-memory database so that nothing
stored in the file can stand in for a built-in function):

1. the hash chain (``services.recorder.chain``): every link, every batch's rows, and
   rows outside every batch; the first broken link is reported with its batch, table,
   positions, the event id (or stream sequence) found there and what differs;
2. the typed projections the views read (``proj_*``) against the events they were
   built from;
3. the views' definitions against the ones AAR creates, and no user-defined
   functions in the file.

Exit status: 0 intact, 1 broken (or ``--head`` not in the chain), 2 nothing could be
verified (no log, no chain, an error).
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Annotated, Any

import typer

from core.audit import AuditQueries, AuditResult, code_identifier
from core.console import esc

HEX = re.compile(r"^[0-9a-f]{8,64}$")


def register(app: typer.Typer) -> None:
    app.command("verify-log")(verify_log)


@dataclass
class Report:
    log: str
    via: str
    summary: dict[str, Any] = field(default_factory=dict)
    breaks: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # projections, views, functions, head
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def intact(self) -> bool:
        return not self.breaks and not self.problems

    def as_dict(self) -> dict[str, Any]:
        return {"log": self.log, "via": self.via, "intact": self.intact, "summary": self.summary,
                "first_break": self.breaks[0] if self.breaks else None, "breaks": self.breaks,
                "problems": self.problems, "notes": self.notes, "seconds": round(self.seconds, 3)}


def _rows(result: AuditResult) -> list[dict[str, Any]]:
    return result.dicts()


def expected_views() -> dict[str, str]:
    """The views AAR creates, as DuckDB stores their definitions."""
    import duckdb

    from services.recorder import chain
    from services.recorder.views import create_schema

    con = duckdb.connect(":memory:")
    try:
        create_schema(con)
        chain.ensure(con)
        return dict(con.execute("SELECT view_name, sql FROM duckdb_views() WHERE NOT internal "
                                "AND database_name = current_database()").fetchall())
    finally:
        con.close()


def check(audit: AuditQueries, db: str = "", *, head: str | None = None, projections: bool = True,
          log: str = "", via: str = "") -> Report:
    """All the checks, with ``audit`` answering SQL; ``db`` prefixes the log's tables
    (``"log."`` when it is attached as ``log``; ``""``: the current database). Values
    (the catalog's name, the head) are bound; ``db`` is an identifier from code."""
    from services.recorder import chain
    from services.recorder import projections as proj

    def run(sql: str, params: list[Any] | None = None) -> AuditResult:
        return audit.query(sql, params or [])

    started = time.perf_counter()
    report = Report(log=log, via=via)
    db = code_identifier(db) if db else ""
    database = db.rstrip(".") if db else str(run("SELECT current_database()").rows[0][0])
    tables = {r["table_name"] for r in _rows(run(
        "SELECT table_name FROM duckdb_tables() WHERE schema_name = 'main' AND database_name = ?", [database]))}
    if "events" not in tables:
        raise NoChain(f"{log}: not an event log (it has no events table)")
    if chain.TABLE not in tables:
        raise NoChain(f"{log}: this log has no hash chain (it was recorded before AAR kept one); the next "
                      "recorder to open it starts one over what it holds")
    summary = _rows(run(chain.summary_sql(db)))[0]
    report.summary = summary
    if not summary["batches"]:
        if summary["events_in_log"] or summary["rejected_in_log"]:
            raise NoChain(f"{log}: this log has no hash chain (it was recorded before AAR kept one); the next "
                          "recorder to open it starts one over what it holds")
        report.notes.append("the log is empty: nothing to verify")
    for note in summary.get("notes") or []:
        report.notes.append(str(note))
    report.breaks = _rows(run(chain.breaks_sql(db)))
    if head is not None:
        found = _rows(run(f"SELECT batch, hash FROM {db}{chain.TABLE} WHERE starts_with(hash, ?) ORDER BY batch",
                          [head]))
        if not found:
            report.problems.append(
                f"the head you trusted ({head}) is not the hash of any batch of this chain: the chain was "
                "rewritten or cut short after you took it (or it is another log)")
        else:
            report.notes.append(f"the head you trusted is batch {found[0]['batch']}'s "
                                f"(the chain has {summary['batches']} batches)")
    if projections:
        for row in _rows(run(proj.check_sql(db))):
            if row["extra"] or row["missing"]:
                report.problems.append(
                    f"projection proj_{row['projection']} (read by the views) does not match the events: "
                    f"{row['extra']} row(s) not from the log, {row['missing']} missing; first at events rowid "
                    f"{row['first_rid']}. Delete its row in projection_state to have the next recorder rebuild it")
    stored = {r["view_name"]: r["sql"] for r in _rows(run(
        "SELECT view_name, sql FROM duckdb_views() WHERE NOT internal AND schema_name = 'main' "
        "AND database_name = ?", [database]))}
    for name, sql in expected_views().items():
        if name not in stored:
            report.problems.append(f"view {name} is missing")
        elif stored[name] != sql:
            report.problems.append(f"view {name} was redefined: it is not the view AAR creates")
    for name in sorted(set(stored) - set(expected_views())):
        report.problems.append(f"view {name} is not one AAR creates")
    functions = _rows(run("SELECT DISTINCT function_name, function_type FROM system.main.duckdb_functions() "
                          "WHERE NOT internal AND database_name = ? ORDER BY ALL", [database]))
    for f in functions:
        report.problems.append(f"user-defined {f['function_type']} {f['function_name']} in the log (AAR creates "
                               "none; it can take the place of a built-in in any query)")
    report.seconds = time.perf_counter() - started
    return report


class NoChain(RuntimeError):
    pass


def file_audit(path: Any, timeout_s: float) -> AuditQueries:
    """SQL on the log file, attached read-only as ``log`` in an in-memory database (so
    functions stored in the file never resolve), with the audit guard."""
    import duckdb

    from services.recorder.audit import FileAudit
    from services.recorder.inbox import unfolded

    if not path.exists():
        raise FileNotFoundError(f"no event log at {path}: run `aar up` first (or set AAR_HOME)")
    con = duckdb.connect(":memory:")
    try:
        con.execute("ATTACH ? AS log (READ_ONLY)", [str(path)])
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    if waiting := unfolded(path):
        _err().print(f"[yellow]{waiting} rows wait in the inboxes of {path} (a recorder stopped before moving "
                     "them): they are not in the log, nor in the chain, until the next recorder folds them in"
                     "[/yellow]")
    return FileAudit(con, timeout_s=timeout_s)


def recorder_audit(settings: Any, timeout_s: float) -> AuditQueries:
    from services.recorder.remote import RecorderAudit

    return RecorderAudit(settings, timeout_s=timeout_s, name="aar-verify-log")


def _err() -> Any:
    from core.console import err

    return err


def verify_log(
    head: Annotated[str | None, typer.Option("--head", help="a chain head (hash) you kept: check it is in the chain")] = None,
    format: Annotated[str, typer.Option("--format", "-f", help="text | json")] = "text",
    projections: Annotated[bool, typer.Option("--projections/--no-projections",
                                              help="also check the typed projections the views read")] = True,
    timeout: Annotated[float, typer.Option(min=1, help="seconds each check may run (the recorder caps it)")] = 300.0,
) -> None:
    """Check the event log against its hash chain (and its projections and views): exit 0 when intact,
    1 with the first broken link, 2 when it cannot be verified."""
    from bus.client import QueryError
    from bus.settings import admin_settings_from_home
    from core.audit import AuditFailed, AuditRefused, AuditTimeout
    from core.paths import AarHome

    err = _err()
    if head is not None:
        head = head.strip().lower()
        if not HEX.fullmatch(head):
            err.print("[red]--head takes a chain hash: 8 to 64 hex digits[/red]")
            raise typer.Exit(2)
    home = AarHome.from_env()
    settings = admin_settings_from_home(home)
    try:
        if settings is not None:
            audit = recorder_audit(settings, timeout)
            db, via = "", "the running recorder"
        else:
            audit = file_audit(home.events_db, timeout)
            db, via = "log.", "the file, read-only"
    except (FileNotFoundError, QueryError, OSError) as exc:
        err.print(f"[red]{esc(exc)}[/red]")
        raise typer.Exit(2) from None
    except Exception as exc:  # noqa: BLE001 - duckdb: the file is held, or not a log
        err.print(f"[red]cannot open the log: {type(exc).__name__}: {esc(exc)}[/red]")
        raise typer.Exit(2) from None
    try:
        report = check(audit, db, head=head, projections=projections, log=str(home.events_db), via=via)
    except NoChain as exc:
        err.print(f"[yellow]{esc(exc)}[/yellow]")
        raise typer.Exit(2) from None
    except (AuditRefused, AuditTimeout, AuditFailed, QueryError) as exc:
        err.print(f"[red]could not verify: {esc(exc)}[/red]")
        raise typer.Exit(2) from None
    except Exception as exc:  # noqa: BLE001 - a log too damaged to query is not intact either
        err.print(f"[red]could not verify: {type(exc).__name__}: {esc(exc)}[/red]")
        raise typer.Exit(2) from None
    finally:
        audit.close()
    if format == "json":
        sys.stdout.write(json.dumps(report.as_dict(), default=str) + "\n")
    else:
        _print(report)
    raise typer.Exit(0 if report.intact else 1)


def _print(report: Report) -> None:
    from core.console import console

    s = report.summary
    console.print(f"log {report.log} (via {report.via}): {s.get('events_in_log', 0)} events, "
                  f"{s.get('rejected_in_log', 0)} rejected events; chain of {s.get('batches', 0)} batches, "
                  f"head {s.get('head')}", highlight=False, soft_wrap=True)
    for note in report.notes:
        console.print(f"  note: {note}", highlight=False, soft_wrap=True)
    if report.breaks:
        first = report.breaks[0]
        where = f"batch {first['batch']}" if first["batch"] is not None else "after the last batch"
        console.print(f"[red]BROKEN[/red]: first broken link: {where}, table {first['tbl'] or 'log_chain'}: "
                      f"{first['problem']}: {first['detail']}", highlight=False, soft_wrap=True)
        if len(report.breaks) > 1:
            console.print(f"  ({len(report.breaks) - 1} more problem(s) after it: aar verify-log -f json lists "
                          "them; later batches usually break only because an earlier one did)", highlight=False)
    for problem in report.problems:
        console.print(f"[red]BROKEN[/red]: {problem}", highlight=False, soft_wrap=True)
    if report.intact:
        console.print(f"[green]intact[/green]: every row is where the chain says, as recorded "
                      f"(checked in {report.seconds:.2f} s). Keep the head to check against later: "
                      f"aar verify-log --head {s.get('head')}", highlight=False, soft_wrap=True)
