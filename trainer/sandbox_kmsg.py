"""Seccomp kills as the kernel logs them: audit records (``type=1326``) read from ``/dev/kmsg``.

A ``SECCOMP_RET_KILL_PROCESS`` makes the kernel log, e.g.::

    audit: type=1326 audit(...): auid=0 uid=0 gid=0 ses=7 pid=4242 comm="python"
        exe="/usr/bin/python3.11" sig=31 arch=c000003e syscall=41 compat=0 ip=0x... code=0x80000000

(in ``/dev/kmsg`` when no audit daemon takes the records). :class:`KernelLog` opens
``/dev/kmsg`` non-blocking at the end of the buffer when a job starts and reads only
what came after. A record belongs to the job when its ``ses`` is the job's audit
session: the trainer gives the sandbox a fresh one by writing ``/proc/self/loginuid``
between fork and exec, it is inherited by every sandbox process, and changing it needs
``CAP_AUDIT_CONTROL``, which nothing in the sandbox has. Where no session could be set,
records are matched by the host pids the monitor saw. Without a readable ``/dev/kmsg``
(a container, ``dmesg_restrict`` for non-root) nothing is read and the exit status
(``SIGSYS``) remains the evidence; the kernel also rate-limits these messages.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Collection
from dataclasses import dataclass

AUDIT_SECCOMP = 1326
UNSET_SESSION = 4294967295
_FIELD = re.compile(r'(\w+)=("[^"]*"|\S+)')


@dataclass(frozen=True, slots=True)
class SeccompRecord:
    pid: int
    session: int | None
    syscall: int
    signal: int
    comm: str
    exe: str


def parse_record(line: str) -> SeccompRecord | None:
    """A seccomp audit record from one ``/dev/kmsg`` line, or None."""
    _, _, message = line.partition(";")
    if f"type={AUDIT_SECCOMP}" not in message:
        return None
    fields = {k: v.strip('"') for k, v in _FIELD.findall(message)}
    try:
        ses = int(fields.get("ses", UNSET_SESSION))
        return SeccompRecord(
            pid=int(fields["pid"]),
            session=None if ses == UNSET_SESSION else ses,
            syscall=int(fields["syscall"]),
            signal=int(fields.get("sig", 0)),
            comm=fields.get("comm", "")[:64],
            exe=fields.get("exe", "")[:200],
        )
    except (KeyError, ValueError):
        return None


class KernelLog:
    """New ``/dev/kmsg`` records since construction. Never raises for a missing log."""

    __slots__ = ("_fd", "_records", "problem")

    def __init__(self, path: str = "/dev/kmsg") -> None:
        self._fd: int | None = None
        self.problem: str | None = None
        self._records: list[SeccompRecord] = []
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self._fd, 0, os.SEEK_END)
        except OSError as exc:
            self.problem = f"{path}: {exc.strerror}"
            self.close()

    @property
    def available(self) -> bool:
        return self._fd is not None

    def poll(self) -> list[SeccompRecord]:
        """Read what is new; returns the seccomp records among it (also kept in :attr:`records`)."""
        new: list[SeccompRecord] = []
        while self._fd is not None:
            try:
                chunk = os.read(self._fd, 16384)  # one record per read
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records overwritten before we read them: go on
                    continue
                self.problem = f"/dev/kmsg: {exc.strerror}"
                break
            if not chunk:
                break
            rec = parse_record(chunk.decode("utf-8", "replace"))
            if rec is not None:
                new.append(rec)
        self._records += new
        return new

    @property
    def records(self) -> list[SeccompRecord]:
        return list(self._records)

    def for_job(self, session: int | None, pids: Collection[int]) -> list[SeccompRecord]:
        if session is not None:
            return [r for r in self._records if r.session == session]
        return [r for r in self._records if r.pid in pids]

    def close(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
