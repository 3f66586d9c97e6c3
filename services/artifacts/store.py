"""Blobs on disk under ``AAR_HOME/artifacts``, named by the SHA-256 of their bytes.

A plain folder rather than the JetStream Object Store: blobs stay readable with
``cat`` and ``sha256sum`` (an auditor re-hashes a file to check it), survive a
wiped JetStream store, and cost no stream storage. Writes are atomic (temp file
then rename), so a crash never leaves a half-written blob under a real name.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from pathlib import Path

DEFAULT_MAX_BYTES = 4 * 1024 * 1024  # under the 8 MiB NATS max_payload, with room for headers
_SHA = re.compile(r"^[0-9a-f]{64}$")


class ArtifactError(Exception):
    """A put or get that cannot be served; the message says why."""


class ArtifactTooLarge(ArtifactError):
    pass


class ArtifactNotFound(ArtifactError, KeyError):
    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else "artifact not found"


class ArtifactCorrupt(ArtifactError):
    """The bytes on disk no longer hash to their name (tampered with or damaged)."""


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_sha(sha: str) -> str:
    sha = sha.strip().lower()
    if not _SHA.fullmatch(sha):
        raise ArtifactError(f"not a SHA-256 hex digest: {sha[:80]!r}")
    return sha


class BlobStore:
    __slots__ = ("root", "max_bytes")

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, sha: str) -> Path:
        sha = check_sha(sha)
        return self.root / sha[:2] / sha

    def has(self, sha: str) -> bool:
        return self.path(sha).is_file()

    def put(self, data: bytes) -> tuple[str, bool]:
        """Store ``data``; returns (sha256, whether it was new)."""
        if len(data) > self.max_bytes:
            raise ArtifactTooLarge(f"artifact of {len(data):,} bytes exceeds the limit of {self.max_bytes:,} bytes")
        digest = sha256(data)
        dest = self.path(digest)
        if dest.is_file():
            return digest, False
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return digest, True

    def get(self, sha: str, *, verify: bool = True) -> bytes:
        path = self.path(sha)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactNotFound(f"no artifact {sha}") from None
        if verify and sha256(data) != path.name:
            raise ArtifactCorrupt(f"artifact {sha} is corrupt: its bytes hash to {sha256(data)}")
        return data
