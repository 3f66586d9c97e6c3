"""The command line's two consoles: results on standard output, messages on standard error."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape
from rich.text import Text

console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)


def data(value: object) -> Text:
    """A value read from the log (an agent may have written it) as a table cell or a
    line part: plain text, never Rich markup (``[/]`` in an idea id must not crash a
    table, ``[link=...]`` must not dress up a line)."""
    return Text("" if value is None else str(value))


def esc(value: object) -> str:
    """``value`` for an f-string that Rich reads as markup: its brackets escaped."""
    return escape(str(value))
