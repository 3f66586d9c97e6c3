"""Seed -> array blobs (weak labels from the scorer, predictions from trainers) as ``.npz``.

Read with ``allow_pickle=False``: a blob is data, never code.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

MEDIA_TYPE = "application/x-npz"


def pack_seeds(arrays: dict[int, np.ndarray]) -> bytes:
    buf = io.BytesIO()
    named: dict[str, Any] = {f"seed_{int(seed)}": np.asarray(a, dtype=np.float32) for seed, a in sorted(arrays.items())}
    np.savez(buf, **named)
    return buf.getvalue()


def unpack_seeds(data: bytes) -> dict[int, np.ndarray]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            out = {}
            for key in npz.files:
                if not key.startswith("seed_"):
                    raise ValueError(f"unexpected array {key!r}")
                out[int(key.removeprefix("seed_"))] = np.asarray(npz[key], dtype=np.float64)
            return out
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"not a seed->array npz blob: {exc}") from exc
