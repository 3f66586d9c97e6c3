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
(``SIGSYS``) remains the evidence.

The kernel rate-limits what it prints (about 10 messages per 5 s, shared with others
such as segfault reports), so code in the sandbox could crowd a record out of
``/dev/kmsg``: a burst of crashing children, then a denied syscall in another child
whose parent survives. So where it can (root, or ``CAP_AUDIT_READ``) the log is read
from the audit netlink socket's read-only multicast group instead, which gets every
record and is not rate-limited; ``/dev/kmsg`` is the fallback. A job during which the
kernel says it dropped messages or records ("callbacks suppressed", "audit_lost", a
record overwritten before it was read) is reported (:attr:`KernelLog.dropped`): the
sandbox counts it as a denied syscall it cannot name, not as a clean run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import struct
from collections.abc import Collection
from dataclasses import dataclass

AUDIT_SECCOMP = 1326
NETLINK_AUDIT = 9
AUDIT_NLGRP_READLOG = 1  # the multicast group of every audit record, read-only
_NLMSG = struct.Struct("=IHHII")  # length, type, flags, seq, pid
UNSET_SESSION = 4294967295
_FIELD = re.compile(r'(\w+)=("[^"]*"|\S+)')
# What the kernel prints when it drops log messages or audit records.
_DROPPED = re.compile(r"callbacks suppressed|messages suppressed|audit_lost=|backlog limit exceeded|"
                      r"hold queue overflow|audit: rate limit exceeded")


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
    return _fields_record(message)


def _fields_record(message: str) -> SeccompRecord | None:
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

    __slots__ = ("_fd", "_sock", "_records", "problem", "dropped", "source")

    def __init__(self, path: str = "/dev/kmsg", *, netlink: bool = True) -> None:
        self._fd: int | None = None
        self._sock: socket.socket | None = None
        self.problem: str | None = None
        self.dropped: str | None = None  # why records may be missing since the start, if the kernel said so
        self._records: list[SeccompRecord] = []
        self.source = ""
        if netlink:
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_AUDIT)
                sock.bind((0, 1 << (AUDIT_NLGRP_READLOG - 1)))
                sock.setblocking(False)
                with contextlib.suppress(OSError):  # room for a burst of other processes' records
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
                self._sock, self.source = sock, "audit netlink"
                return
            except (OSError, AttributeError):
                pass  # not root / no CAP_AUDIT_READ, or no audit in the kernel: /dev/kmsg
        self.source = path
        try:
            self._fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            os.lseek(self._fd, 0, os.SEEK_END)
        except OSError as exc:
            self.problem = f"{path}: {exc.strerror}"
            self.close()

    @property
    def available(self) -> bool:
        return self._fd is not None or self._sock is not None

    def poll(self) -> list[SeccompRecord]:
        """Read what is new; returns the seccomp records among it (also kept in :attr:`records`)."""
        new = self._poll_netlink() if self._sock is not None else self._poll_kmsg()
        self._records += new
        return new

    def _poll_netlink(self) -> list[SeccompRecord]:
        new: list[SeccompRecord] = []
        while self._sock is not None:
            try:
                data = self._sock.recv(1 << 16)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:  # the socket's buffer overflowed: records lost
                    self.dropped = self.dropped or "audit records were lost (the netlink buffer overflowed)"
                    continue
                self.problem = f"audit netlink: {exc.strerror}"
                break
            offset = 0
            while offset + _NLMSG.size <= len(data):
                length, kind, _, _, _ = _NLMSG.unpack_from(data, offset)
                if length < _NLMSG.size:
                    break
                if kind == AUDIT_SECCOMP:
                    text = data[offset + _NLMSG.size: offset + length].decode("utf-8", "replace")
                    if (rec := _fields_record(text)) is not None:
                        new.append(rec)
                offset += (length + 3) & ~3
        return new

    def _poll_kmsg(self) -> list[SeccompRecord]:
        new: list[SeccompRecord] = []
        while self._fd is not None:
            try:
                chunk = os.read(self._fd, 16384)  # one record per read
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.EPIPE:  # records overwritten before we read them: go on
                    self.dropped = self.dropped or "kernel log records were overwritten before they were read"
                    continue
                self.problem = f"/dev/kmsg: {exc.strerror}"
                break
            if not chunk:
                break
            line = chunk.decode("utf-8", "replace")
            rec = parse_record(line)
            if rec is not None:
                new.append(rec)
            elif self.dropped is None and _DROPPED.search(line):
                self.dropped = line.partition(";")[2].strip()[:200] or "the kernel dropped log messages"
        return new

    @property
    def records(self) -> list[SeccompRecord]:
        return list(self._records)

    def for_job(self, session: int | None, pids: Collection[int]) -> list[SeccompRecord]:
        if session is not None:
            return [r for r in self._records if r.session == session]
        return [r for r in self._records if r.pid in pids]

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
