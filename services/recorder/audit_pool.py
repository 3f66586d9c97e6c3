"""The recorder's audit queries, on threads of their own.

The recorder's appends, moves and checkpoints run on asyncio's default executor. An
audit never does: it runs on this pool's few threads, so however many audits arrive
and however slow they are, a commit never waits behind one in a queue. At most
``workers`` run at once and ``queue`` more wait; a request past that is refused at
once with a clear message (the asker tries again), rather than piling up. Each
statement is interrupted at its time limit (``audit.run_query``)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import threading
from collections.abc import Sequence
from typing import Any

from core.audit import Param

from .audit import AuditResult, default_timeout_s
from .store import EventStore

DEFAULT_WORKERS = 2
DEFAULT_QUEUE = 4


class AuditBusy(RuntimeError):
    """Too many audits are running or waiting: try again shortly."""


class AuditPool:
    __slots__ = ("_executor", "_lock", "_running", "_waiting", "done", "queue", "store", "timeout_s", "workers")

    def __init__(self, store: EventStore, *, workers: int = DEFAULT_WORKERS, queue: int = DEFAULT_QUEUE,
                 timeout_s: float | None = None) -> None:
        self.store = store
        self.workers = max(1, int(workers))
        self.queue = max(0, int(queue))
        self.timeout_s = default_timeout_s() if timeout_s is None else float(timeout_s)
        self._running = 0
        self._waiting = 0
        self.done = 0  # audits answered (or failed) since start
        self._lock = threading.Lock()
        self._executor = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="recorder-audit")

    @property
    def running(self) -> int:
        return self._running

    @property
    def waiting(self) -> int:
        return self._waiting

    def limit(self, requested: Any) -> float:
        """The time limit of one audit: the pool's, or less if the asker wants less."""
        if isinstance(requested, (int, float)) and not isinstance(requested, bool) and math.isfinite(requested) \
                and requested > 0:
            return min(float(requested), self.timeout_s)
        return self.timeout_s

    async def run(self, sql: str, params: Sequence[Param] = (), *, timeout_s: Any = None, max_bytes: int,
                  max_rows: int | None = None) -> AuditResult:
        """Run one audit (``params`` bound) on the pool; refused at once (:class:`AuditBusy`) when full."""
        limit = self.limit(timeout_s)
        with self._lock:
            if self._running + self._waiting >= self.workers + self.queue:
                raise AuditBusy(
                    f"the recorder is busy with audit queries ({self._running} running, {self._waiting} waiting; "
                    f"at most {self.workers} run and {self.queue} wait); try again shortly")
            self._waiting += 1
        def job() -> AuditResult:
            with self._lock:
                self._waiting -= 1
                self._running += 1
            try:
                return self.store.query(sql, params, max_rows=max_rows, max_bytes=max_bytes, timeout_s=limit)
            finally:
                with self._lock:
                    self._running -= 1
                    self.done += 1

        future = self._executor.submit(job)
        try:
            return await asyncio.wrap_future(future)
        finally:
            if future.cancel():  # True only if it never ran (the asker gave up, or the pool shut down)
                with self._lock:
                    self._waiting -= 1

    def close(self) -> None:
        """Stop: interrupt what runs, drop what waits (their askers get an error)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.store.interrupt_audits()
