"""Per-agent evaluation rate limits (a rolling window)."""

from __future__ import annotations

import time
from collections import defaultdict, deque


class RateLimiter:
    __slots__ = ("limit", "window_s", "_seen")

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self._seen: dict[str, deque[float]] = defaultdict(deque)

    def allow(self, agent: str, now: float | None = None) -> bool:
        """Count one request for ``agent`` if it is under its limit; False when it is not."""
        now = time.monotonic() if now is None else now
        seen = self._seen[agent]
        while seen and seen[0] <= now - self.window_s:
            seen.popleft()
        if len(seen) >= self.limit:
            return False
        seen.append(now)
        return True

    def retry_after(self, agent: str, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        seen = self._seen.get(agent)
        return max(0.0, seen[0] + self.window_s - now) if seen else 0.0
