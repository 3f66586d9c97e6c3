"""The command line's two consoles: results on standard output, messages on standard error."""

from __future__ import annotations

import sys

from rich.console import Console

console = Console(width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True)
