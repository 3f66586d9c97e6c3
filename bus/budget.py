"""Publish and storage budgets: a token bucket of bytes per identity (the gateway, the artifacts service)."""

from __future__ import annotations

import time


class ByteBudget:
    """``per_minute`` units a minute (bytes, or puts: whatever ``take`` counts), with
    bursts of up to one minute's worth."""

    __slots__ = ("per_minute", "_tokens", "_at")

    def __init__(self, per_minute: int, now: float | None = None) -> None:
        self.per_minute = per_minute
        self._tokens = float(per_minute)
        self._at = time.monotonic() if now is None else now

    def _refill(self, now: float) -> None:
        self._tokens = min(float(self.per_minute), self._tokens + (now - self._at) * self.per_minute / 60.0)
        self._at = now

    def take(self, n: int, now: float | None = None) -> bool:
        """Spend ``n`` bytes if they are there; False (nothing spent) when they are not."""
        self._refill(time.monotonic() if now is None else now)
        if n > self._tokens:
            return False
        self._tokens -= n
        return True

    def retry_after(self, n: int, now: float | None = None) -> float:
        """Seconds until ``n`` bytes are there (inf: never, more than a minute's worth)."""
        self._refill(time.monotonic() if now is None else now)
        if n > self.per_minute:
            return float("inf")
        return max(0.0, (n - self._tokens) * 60.0 / self.per_minute)
