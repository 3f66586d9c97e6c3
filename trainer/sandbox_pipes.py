"""Pipes from the sandbox to the trainer, drained by threads with a cap on what is kept.

Nothing the sandbox writes reaches the host's disk: stdout and stderr keep their last
64 KiB, the runner's reports their first MiB, the result its first ``cap`` bytes (what
comes after is read and dropped, and :attr:`Drain.overflow` says so). Each thread owns
its read end and closes it at end of file.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
from typing import Any


class Drain:
    """Reads ``fd`` to its end in a daemon thread; keeps the head or the tail, at most ``cap`` bytes."""

    __slots__ = ("_chunks", "_fd", "_kept", "_thread", "cap", "overflow", "tail", "total")

    def __init__(self, fd: int, cap: int, *, tail: bool = False) -> None:
        self._fd = fd
        self.cap = cap
        self.tail = tail
        self.total = 0
        self.overflow = False
        self._chunks: list[bytes] = []
        self._kept = 0
        self._thread = threading.Thread(target=self._run, name=f"sandbox-drain-{fd}", daemon=True)

    def start(self) -> Drain:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            while chunk := os.read(self._fd, 65536):
                self.total += len(chunk)
                if self.tail:
                    self._chunks.append(chunk)
                    self._kept += len(chunk)
                    while self._kept - len(self._chunks[0]) >= self.cap:
                        self._kept -= len(self._chunks.pop(0))
                        self.overflow = True
                elif self._kept < self.cap:
                    room = self.cap - self._kept
                    self._chunks.append(chunk[:room])
                    self._kept += min(room, len(chunk))
                    self.overflow = self.overflow or len(chunk) > room
                else:
                    self.overflow = True
        except OSError:
            pass
        finally:
            os.close(self._fd)

    def join(self, timeout_s: float) -> bool:
        """Wait for end of file; False when writers still hold the pipe open."""
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def data(self) -> bytes:
        raw = b"".join(list(self._chunks))
        return raw[-self.cap :] if self.tail else raw[: self.cap]

    def text(self) -> str:
        return self.data().decode("utf-8", "replace")


def pipe() -> tuple[int, int]:
    """(read end, write end); the read end is never inherited by the child."""
    r, w = os.pipe()
    os.set_inheritable(r, False)
    return r, w


class QueryServer:
    """Answers the sandbox's queries in a daemon thread: JSON lines in on ``in_fd``
    (``{"seed": int, "texts": [str]}``), one JSON line out on ``out_fd`` per query
    (``{"p": [...]}`` or ``{"error": "..."}``). ``answer(seed, texts)`` raises to refuse;
    a line longer than ``cap`` bytes, or not such an object, is refused and ends the
    conversation. Both ends are closed when it ends."""

    def __init__(self, in_fd: int, out_fd: int, answer: Any, cap: int = 8 << 20) -> None:
        self._in, self._out, self.answer, self.cap = in_fd, out_fd, answer, cap
        self.errors: list[str] = []  # the first few refusals
        self.refused = 0
        self._thread = threading.Thread(target=self._run, name=f"sandbox-queries-{in_fd}", daemon=True)

    def start(self) -> QueryServer:
        self._thread.start()
        return self

    def _reply(self, obj: dict[str, Any]) -> None:
        view = memoryview((json.dumps(obj) + "\n").encode())
        while view:
            view = view[os.write(self._out, view):]

    def _run(self) -> None:
        buf = b""
        try:
            while True:
                while b"\n" not in buf:
                    chunk = os.read(self._in, 65536)
                    if not chunk:
                        return
                    buf += chunk
                    if len(buf) > self.cap:
                        self._reply({"error": f"a query is larger than {self.cap} bytes"})
                        return
                line, _, buf = buf.partition(b"\n")
                try:
                    query = json.loads(line)
                    seed, texts = query["seed"], query["texts"]
                    if not isinstance(seed, int) or not isinstance(texts, list) or not all(
                            isinstance(t, str) for t in texts):
                        raise ValueError("a query is {\"seed\": int, \"texts\": [str, ...]}")
                except Exception as exc:  # noqa: BLE001 - RecursionError, ... included: the query is refused
                    self._reply({"error": f"bad query: {type(exc).__name__}: {exc}"[:500]})
                    return
                try:
                    probs = self.answer(seed, texts)
                except Exception as exc:  # noqa: BLE001 - refused (budget, unknown seed): said to the method
                    self.refused += 1
                    if len(self.errors) < 5:
                        self.errors.append(str(exc)[:500])
                    self._reply({"error": str(exc)[:500]})
                    continue
                self._reply({"p": [float(x) for x in probs]})
        except OSError:
            pass
        finally:
            for fd in (self._in, self._out):
                with contextlib.suppress(OSError):
                    os.close(fd)
