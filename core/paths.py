"""Where AAR keeps its data (DESIGN.md section 7).

``AAR_HOME`` (default ``./.aar``) holds ``events.duckdb`` (the event log) and
its inboxes ``events.inbox-{0,1}.duckdb`` (services/recorder/inbox.py),
``artifacts/`` (sha256-addressed blobs), ``cache/`` (models, features,
baselines) and ``nats/`` (the JetStream store).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class AarHome:
    root: Path

    @classmethod
    def from_env(cls, override: str | os.PathLike[str] | None = None) -> AarHome:
        raw = override if override is not None else os.environ.get("AAR_HOME", ".aar")
        return cls(Path(raw).expanduser().resolve())

    @property
    def events_db(self) -> Path:
        return self.root / "events.duckdb"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def models(self) -> Path:
        return self.cache / "models"

    @property
    def features(self) -> Path:
        return self.cache / "features"

    @property
    def nats(self) -> Path:
        return self.root / "nats"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run_file(self) -> Path:
        """Connection details of the running stack (absent when none runs)."""
        return self.root / "run.json"

    def ensure(self) -> AarHome:
        for path in (self.root, self.artifacts, self.cache, self.nats, self.logs):
            path.mkdir(parents=True, exist_ok=True)
        return self


def read_run_file(home: AarHome) -> dict[str, object] | None:
    """The running stack's ``run.json`` (None when no stack runs, or its supervisor died)."""
    try:
        data = json.loads(home.run_file.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    pid = data.get("pid")
    if isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None  # a stale file from a crashed supervisor
        except PermissionError:
            pass
    return data if isinstance(data, dict) else None
