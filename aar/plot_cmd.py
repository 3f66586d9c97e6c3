"""``aar plot SESSION``: the study's figure with matplotlib (PNG, SVG or PDF)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Annotated, Optional

import typer

from core.console import console, err, esc
from core.paths import AarHome
from services.dashboard.figure import Figure, figure

FORMATS = (".png", ".svg", ".pdf")


def draw(fig: Figure, out: Path, reference: tuple[float, str] | None = None) -> Path:
    """Write the figure to ``out`` (its suffix picks the format)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = plt.get_cmap("tab10")
    canvas, ax = plt.subplots(figsize=(9, 5.5), dpi=120)
    try:
        for i, agent in enumerate(fig.agents):
            color = colors(i % 10)
            dots = [d for d in fig.dots if d.agent_id == agent]
            steps = fig.best.get(agent, [])
            if steps:
                ax.step([h for h, _ in steps], [p for _, p in steps], where="post", color=color, linewidth=2,
                        label=f"{agent} (best so far)")
            if dots:
                ax.scatter([d.hours for d in dots], [d.pgr for d in dots], color=color, alpha=0.45, s=22,
                           label=f"{agent} ideas ({len(dots)})")
        if fig.promoted:
            tests = [p for p in fig.promoted if p.test_pgr is not None]
            ax.scatter([p.hours for p in tests], [p.test_pgr or 0.0 for p in tests], marker="D", facecolors="none",
                       edgecolors="black", s=46, label="promoted: test PGR")
            held = [p for p in fig.promoted if p.heldout_pgr is not None]
            if held:
                ax.scatter([p.hours for p in held], [p.heldout_pgr or 0.0 for p in held], marker="x", color="black", s=46,
                           label=f"promoted: held-out PGR ({held[0].heldout})")
        if fig.naive_pgr is not None:
            ax.axhline(fig.naive_pgr, color="gray", linestyle="--", linewidth=1,
                       label=f"naive_soft {fig.naive_pgr:.2f}")
        if reference is not None:
            ax.axhline(reference[0], color="firebrick", linestyle=":", linewidth=1.5,
                       label=f"{reference[1]} {reference[0]:.2f}")
        ax.set_xlabel("cumulative research hours (the agents' active time, summed)")
        ax.set_ylabel("PGR on dev (performance gap recovered)")
        ax.set_title(f"{fig.name}: best-so-far PGR per researcher", fontsize=11)
        ax.grid(alpha=0.3)
        if fig.dots or reference is not None or fig.naive_pgr is not None:
            ax.legend(fontsize=8, loc="best")
        else:
            ax.text(0.5, 0.5, "no scored ideas yet", ha="center", va="center", transform=ax.transAxes)
        canvas.tight_layout()
        out.parent.mkdir(parents=True, exist_ok=True)
        canvas.savefig(out)
    finally:
        plt.close(canvas)
    return out


def plot(
    session: Annotated[Optional[str], typer.Argument(help="a session id (default: the newest)")] = None,
    out: Annotated[Optional[Path], typer.Option(
        "--out", "-o", help="FILE.png, .svg or .pdf (default: AAR_HOME/figures/SESSION.png, next to the log)")] = None,
    reference_pgr: Annotated[tuple[float, str], typer.Option(
        help='a reference line: PGR and label, e.g. --reference-pgr 0.23 "human baseline"')] = (float("nan"), ""),
) -> None:
    """Draw the study's figure: best-so-far dev PGR per agent against cumulative research hours."""
    from bus.client import QueryError
    from core.audit import AuditFailed, AuditRefused

    from .log_audit import open_audit

    if out is not None and out.suffix.lower() not in FORMATS:
        err.print(f"[red]--out must end in {', '.join(FORMATS)}, got {esc(out.name)!r}[/red]")
        raise typer.Exit(2)
    reference = None if reference_pgr[0] != reference_pgr[0] else (reference_pgr[0], reference_pgr[1] or "reference")
    home = AarHome.from_env()
    try:
        with contextlib.closing(open_audit(home)) as audit:
            if session is None:
                newest = audit.query("SELECT session_id FROM sessions ORDER BY last_event DESC LIMIT 1").rows
                if not newest:
                    err.print("[red]no session in the log yet[/red]")
                    raise typer.Exit(1)
                session = str(newest[0][0])
            data = figure(audit, session)
    except LookupError as exc:
        err.print(f"[red]{esc(exc.args[0] if exc.args else exc)}[/red]")
        raise typer.Exit(1) from None
    except (AuditRefused, AuditFailed, QueryError, FileNotFoundError) as exc:
        err.print(f"[red]{esc(exc)}[/red]")
        raise typer.Exit(2) from None
    path = draw(data, out or home.root / "figures" / f"{session}.png", reference)
    console.print(f"{len(data.dots)} scored idea(s) of {len(data.agents)} agent(s) over {data.hours:.2f} research "
                  f"hours; {len(data.promoted)} promoted")
    console.print(f"figure: {path}")
