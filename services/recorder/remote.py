"""``core.audit.AuditQueries`` through the running recorder, over NATS.

While a stack runs, the recorder holds the log file: nobody else may open it. Audit
SQL then goes to it as an :class:`core.audit.AuditRequest` on
``aarq.recorder.audit`` (as admin, the identity of the CLI),
and the recorder runs it behind the same guard as :class:`audit.FileAudit` does on
the file. Parameters are checked here first (a bad one never leaves the process),
and the recorder checks them again.

The interface is synchronous (its callers are the CLI and ``aar replay``): the
connection lives on an event loop of its own, on a daemon thread, so ``query`` works
the same from plain code and from a thread next to a running loop.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from core.audit import (
    AuditFailed,
    AuditParamError,
    AuditRefused,
    AuditRequest,
    AuditResult,
    AuditTimeout,
    Param,
    check_params,
)

T = TypeVar("T")

# An error reply names its exception class (``QueryReply.error_type``, from ``Bus.serve``): these come
# back as themselves, so both implementations raise the same errors.
_ERRORS: dict[str, type[Exception]] = {
    "AuditRefused": AuditRefused,
    "AuditParamError": AuditParamError,
    "AuditTimeout": AuditTimeout,
    "AuditFailed": AuditFailed,
}
# How long past its own time limit an answer is waited for (queueing, transfer).
ANSWER_MARGIN_S = 30.0


class RecorderAudit:
    """Audit SQL through the recorder of the stack that ``settings`` (admin) reaches.
    ``timeout_s``: the time limit asked for each statement (the recorder caps it at its
    own); None: the recorder's."""

    def __init__(self, settings: Any, *, timeout_s: float | None = None, name: str = "aar-audit") -> None:
        from bus import Bus

        self.timeout_s = timeout_s
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"{name}-loop", daemon=True)
        self._thread.start()
        self._closed = False
        try:
            self._bus = self._run(Bus.connect(settings, name=name))
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def query(self, sql: str, params: Sequence[Param] = (), *, max_rows: int | None = None) -> AuditResult:
        from bus.client import QueryError

        from .queries import AUDIT

        if self._closed:
            raise AuditRefused("this audit connection is closed")
        if max_rows is not None and (isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1):
            raise AuditRefused(f"max_rows must be a positive integer, not {max_rows!r}")
        request = AuditRequest.parse({"sql": sql, "params": check_params(params), "timeout_s": self.timeout_s,
                                      "max_rows": max_rows})
        wait = (self.timeout_s or 60.0) + ANSWER_MARGIN_S
        try:
            return self._run(self._bus.ask(AUDIT, request, timeout=wait))
        except QueryError as exc:
            raise _as_audit_error(exc) from None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._run(self._bus.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        if not self._loop.is_running():
            self._loop.close()

    def __enter__(self) -> RecorderAudit:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_audit_error(exc: Exception) -> Exception:
    """The recorder's error reply as the exception the file path raises (the others,
    such as no recorder answering, stay ``QueryError``)."""
    kind = getattr(exc, "error_type", None)
    if kind in _ERRORS:
        return _ERRORS[kind](str(exc).removeprefix(f"{kind}: "))
    return exc
