"""Methods stored by other ideas, importable by their artifact hash from agent code.

Agent code extends another idea's code with::

    from trainer.methods.stored import load
    parent = load("<sha256 of the other idea's method artifact>")
    def run(ctx):
        p = parent.run(ctx)
        ...

The sandbox has no network and no artifact store: before a job starts, the trainer
finds every 64-hex-digit string in the method's code (and, recursively, in the code it
names) that is a stored artifact, and writes those modules into the job's input folder
(:func:`references`, :func:`trainer.sandbox.write_job`). ``load`` imports them from
there; a hash the trainer did not provide is a clear error. The experiment records
which hashes were imported (``experiment.finished``'s ``imports``), so the lineage
shows the import.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

SHA = re.compile(r"\b[0-9a-f]{64}\b")
MAX_IMPORTS = 20  # stored modules one job may import, directly or not

# Set by the sandbox runner to the job's folder of stored modules (input/stored).
ROOT: Path | None = None


def references(source: str) -> list[str]:
    """The 64-hex-digit strings of ``source``, in order of appearance (candidate hashes)."""
    return list(dict.fromkeys(SHA.findall(source)))


def load(sha: str) -> ModuleType:
    """The stored method module with this artifact hash (its ``run(ctx)`` and the rest)."""
    sha = str(sha).strip().lower()
    if not SHA.fullmatch(sha):
        raise ValueError(f"{sha!r} is not a sha256 hex digest")
    name = f"stored_{sha[:16]}"
    if name in sys.modules:
        return sys.modules[name]
    path = (ROOT / f"{sha}.py") if ROOT is not None else None
    if path is None or not path.is_file():
        raise ImportError(
            f"stored method {sha[:12]}... is not available in this job: the trainer provides the stored "
            "methods whose hash appears literally in the method's code (write it out as a string)"
        )
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load stored method {sha[:12]}...")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
