"""What a sandboxed run did wrong: kinds, sources, and the evidence they are read from.

Every :class:`Violation` names its *source*:

- ``kernel``: a record the kernel keeps, read by the trainer from outside the sandbox:
  the exit signal (``SIGSYS`` from seccomp, ``SIGXCPU``/``SIGXFSZ`` from an rlimit), the
  seccomp audit records in ``/dev/kmsg``, the job cgroup's counters (``memory.oom_control``
  ``oom_kill``, ``pids.events`` ``max``, ``cpuacct.usage``), a size-bounded tmpfs that
  ``statvfs`` reports full;
- ``monitor``: the trainer's own measurement, also from outside: the wall clock, and,
  where there are no cgroups, its sampling of the process tree (tasks, CPU, memory) and
  the file count of the job's tmpfs mounts;
- ``inside``: a report from the runner's audit hook in the sandbox, and ``stderr``: an
  error message the method printed. Both are advisory: the method can silence them
  (close the pipe, call libc through ctypes), so their absence proves nothing.

Kinds, and what a violation does to the run:

- *blocking* (the run is a ``SandboxViolation``, disqualified): ``syscall`` (a denied
  syscall, e.g. a network socket; kernel), ``network``, ``filesystem``, ``secret``
  (attempts reported from inside or seen in stderr);
- *limits* (the run fails, ``ResourceLimit``/``Timeout``, and is reported; not a
  disqualification): ``memory``, ``processes`` (tasks: processes and threads), ``cpu``
  (the whole sandbox's CPU time), ``disk`` (the job's tmpfs mounts full, too many files,
  a file over the file-size limit), ``wall_clock``;
- informational: ``process`` (a program was started; allowed).
"""

from __future__ import annotations

import json
import re
import signal
from dataclasses import dataclass
from enum import StrEnum

_DETAIL = 300


class ViolationKind(StrEnum):
    NETWORK = "network"  # a socket to the internet, a DNS lookup (inside/stderr evidence)
    FILESYSTEM = "filesystem"  # reading or listing outside the job and the interpreter; writing outside work/
    SECRET = "secret"  # looking up a secret-like environment variable, reading /proc/*/environ
    PROCESS = "process"  # informational: a program was started (allowed inside the sandbox)
    SYSCALL = "syscall"  # the seccomp filter killed a process for a denied syscall
    MEMORY = "memory"  # the sandbox's memory (RAM disks included) hit its limit
    PROCESSES = "processes"  # the sandbox's tasks (processes and threads) hit their limit
    CPU = "cpu"  # the sandbox's CPU time (all processes) hit its budget
    DISK = "disk"  # a writable tmpfs of the job full, too many files, or a file over the size limit
    WALL_CLOCK = "wall_clock"  # the job ran past its wall-clock limit


class Source(StrEnum):
    KERNEL = "kernel"
    MONITOR = "monitor"
    INSIDE = "inside"
    STDERR = "stderr"


BLOCKING = frozenset({ViolationKind.SYSCALL, ViolationKind.NETWORK, ViolationKind.FILESYSTEM, ViolationKind.SECRET})
LIMITS = frozenset(
    {ViolationKind.MEMORY, ViolationKind.PROCESSES, ViolationKind.CPU, ViolationKind.DISK, ViolationKind.WALL_CLOCK}
)
OUTSIDE = frozenset({Source.KERNEL, Source.MONITOR})
INSIDE_KINDS = frozenset({ViolationKind.NETWORK, ViolationKind.FILESYSTEM, ViolationKind.SECRET, ViolationKind.PROCESS})


@dataclass(frozen=True, slots=True)
class Violation:
    kind: ViolationKind
    detail: str
    source: str  # a Source value

    @property
    def blocking(self) -> bool:
        return self.kind in BLOCKING

    @property
    def limit(self) -> bool:
        return self.kind in LIMITS

    @property
    def outside(self) -> bool:
        """Seen by the trainer from outside the sandbox, not reported by code that runs inside."""
        return self.source in OUTSIDE

    def as_dict(self) -> dict[str, str | bool]:
        return {"kind": self.kind.value, "detail": self.detail, "source": str(self.source), "blocking": self.blocking}


def kernel(kind: ViolationKind, detail: str) -> Violation:
    return Violation(kind, detail[:_DETAIL], Source.KERNEL)


def monitor(kind: ViolationKind, detail: str) -> Violation:
    return Violation(kind, detail[:_DETAIL], Source.MONITOR)


def dedupe(violations: list[Violation]) -> list[Violation]:
    seen: set[tuple[ViolationKind, str]] = set()
    out = []
    for v in violations:
        if (v.kind, v.detail) not in seen:
            seen.add((v.kind, v.detail))
            out.append(v)
    return out


# ------------------------------------------------------------------ exit status


def exit_signal(code: int | None) -> int | None:
    """The signal that ended the run: negative from Popen, or 128 + N as bwrap reports its child's death."""
    if code is None:
        return None
    if code < 0:
        return -code
    if 128 < code < 128 + 65:
        return code - 128
    return None


def from_exit(code: int | None) -> list[Violation]:
    """Violations the exit status proves (the kernel sent these signals)."""
    sig = exit_signal(code)
    if sig == signal.SIGSYS:
        return [kernel(ViolationKind.SYSCALL, "killed by SIGSYS: the seccomp filter denied a syscall")]
    if sig == signal.SIGXCPU:
        return [kernel(ViolationKind.CPU, "killed by SIGXCPU: a process used up its CPU-time rlimit")]
    if sig == signal.SIGXFSZ:
        return [kernel(ViolationKind.DISK, "killed by SIGXFSZ: a file grew past the file-size limit")]
    return []


# ------------------------------------------------------------------ inside evidence (advisory)


def parse_inside_reports(raw: bytes) -> list[Violation]:
    """The runner's JSON lines. Only inside kinds are accepted: a line claiming a kernel kind is garbled."""
    found = []
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            rec = json.loads(line)
            kind = ViolationKind(rec["kind"])
            if kind not in INSIDE_KINDS:
                raise ValueError(kind)
            found.append(Violation(kind, str(rec["detail"])[:_DETAIL], Source.INSIDE))
        except (ValueError, KeyError, TypeError):
            found.append(Violation(ViolationKind.PROCESS, f"garbled audit record: {line[:200]}", Source.INSIDE))
    return found


_STDERR_RULES: tuple[tuple[ViolationKind, re.Pattern[str]], ...] = (
    (
        ViolationKind.NETWORK,
        re.compile(
            r"Network is unreachable|Temporary failure in name resolution|Name or service not known|"
            r"No address associated with hostname|\[Errno (?:101|97|99|111|113)\]|socket\.gaierror|"
            r"ConnectionRefusedError|nodename nor servname"
        ),
    ),
    (
        ViolationKind.FILESYSTEM,
        re.compile(r"PermissionError|Read-only file system|\[Errno (?:13|30|1)\]|Operation not permitted"),
    ),
    (
        ViolationKind.SECRET,
        re.compile(
            r"KeyError: '[^']*(?:API_?KEY|TOKEN|SECRET|PASSW|CREDENTIAL|PRIVATE|ANTHROPIC|OPENAI|AWS_|NATS_)[^']*'",
            re.IGNORECASE,
        ),
    ),
)
_MISSING_PATH = re.compile(r"(?:FileNotFoundError|NotADirectoryError): \[Errno \d+\] [^:]*: '([^']+)'")


def classify_stderr(stderr: str, job_root: str, watched: list[str] | tuple[str, ...] = ()) -> list[Violation]:
    """Violations evidenced by error messages in the child's stderr."""
    found: list[Violation] = []
    watch = tuple(w.rstrip("/") + "/" for w in watched)
    for line in stderr.splitlines():
        for kind, rule in _STDERR_RULES:
            if rule.search(line):
                found.append(Violation(kind, line.strip()[:_DETAIL], Source.STDERR))
        m = _MISSING_PATH.search(line)
        missing = m.group(1) if m else ""
        if missing.startswith("/") and (
            (watch and (missing + "/").startswith(watch)) or not missing.startswith((job_root + "/", "/tmp/"))
        ):
            found.append(Violation(ViolationKind.FILESYSTEM, line.strip()[:_DETAIL], Source.STDERR))
    return found
