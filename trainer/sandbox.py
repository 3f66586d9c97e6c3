"""Run untrusted method code in a bubblewrap sandbox (DESIGN.md section 5).

:func:`run_untrusted` writes the method's inputs into a job folder, starts
``python -m trainer.sandbox_runner /job`` under ``bwrap`` and returns a
:class:`SandboxResult` (predictions, runtime, CPU, memory, tasks, disk, logs, violations).

The sandbox (root on a Debian 12 VM with cgroup v1 in the hybrid layout, kernel 6.18,
bubblewrap 0.8.0):

- ``--unshare-all`` (network, IPC, PID, UTS, cgroup, user namespaces): the only network
  device is a down loopback; ``--unshare-user --uid 65534 --gid 65534``: the method runs
  as ``nobody`` in its own user namespace with every capability dropped (``--cap-drop
  ALL``), and ``--disable-userns`` keeps it from making another. As root bwrap needs no
  setuid bit; unprivileged callers need unprivileged user namespaces;
- a seccomp filter (:mod:`trainer.sandbox_seccomp`, ``--seccomp FD``) kills the process
  that calls what a method has no use for: a socket other than ``AF_UNIX``, io_uring,
  keyrings, ptrace, mounts, new namespaces, bpf, perf, userfaultfd, module loading...;
- read-only binds of ``/usr`` (and the ``/lib*``, ``/bin`` links or folders), the Python
  prefix(es) of this interpreter and its venv, and the ``trainer`` package (at
  ``/opt/aar/trainer``; it holds no secrets and gives the method the built-in library);
  from ``/etc`` only ``ld.so.cache`` and ``localtime``; installed dataset packages are
  masked by empty read-only tmpfs. Nothing else of the host exists inside: not ``/root``,
  not ``/work``, not ``AAR_HOME``, not the host ``/tmp``;
- ``/job/input`` read-only (inputs and ``method.py``, on the host); the only writable
  places are size-bounded tmpfs mounts, so a method cannot fill the host's disk:
  ``/job/work`` (``disk_bytes``, the working folder), ``/tmp`` and ``/dev/shm``
  (``tmp_bytes`` each). bwrap's own root and ``/dev`` are remounted read-only (left
  writable, they are RAM disks without a bound). The result leaves through a pipe
  (``AAR_RESULT_FD``, size-capped, predictions validated), stdout and stderr through pipes
  of which the trainer keeps the tails; nothing of the job is written to the host;
- ``--clearenv`` then an explicit minimal environment (no API key, no NATS credentials);
  ``--die-with-parent``, ``--new-session`` (no TIOCSTI on the caller's terminal).

Limits hold for the whole sandbox, not per process:

- with cgroups (v1, writable: root on these machines; :mod:`trainer.sandbox_cgroups`),
  a fresh group per job that ``bwrap`` joins before it execs: memory (page cache and the
  tmpfs mounts included; the kernel OOM-kills at the limit), ``pids.max`` (tasks:
  processes and threads), a CFS quota of ``threads`` cores, and ``cpuacct.usage``, which
  the trainer polls to end the job at ``cpu_s``. ``limits_mode`` is ``"cgroup"``;
- without (``cgroups=False`` forces this), rlimits and the trainer's monitor
  (:mod:`trainer.sandbox_monitor`), ``limits_mode`` ``"rlimit"``: ``RLIMIT_AS`` per process;
  ``RLIMIT_NPROC`` set inside the sandbox's user namespace, where it counts only the
  sandbox's tasks (but the kernel does not apply it to host uid 0, so as root only the
  monitor bounds tasks); the monitor ends the job when its tasks, its CPU time (an
  estimate) or its memory (anonymous memory plus tmpfs) pass their limit. Weaker: memory
  the kernel holds outside the address space and the job's tmpfs (memfd, SysV shared
  memory, pipe buffers) is not counted, and a task limit checked every 50 ms can be
  overshot for that long;
- in both: the bounded tmpfs mounts and a limit on their file count (``files``),
  ``RLIMIT_CPU`` (``cpu_s`` per process), ``RLIMIT_FSIZE``, no core dumps, and the wall
  clock, after which the whole sandbox is killed.

Violations (:mod:`trainer.sandbox_violations`) are detected from outside the sandbox, by
the trainer, from what the kernel reports: the exit status (``SIGSYS``, ``SIGXCPU``,
``SIGXFSZ``), the seccomp audit records in ``/dev/kmsg`` (:mod:`trainer.sandbox_kmsg`,
matched by the job's audit session), the job cgroup's counters, ``statvfs`` of the
tmpfs mounts, and the monitor's samples and clock. A denied syscall (``syscall``) is
*blocking*: the run is a sandbox violation. A limit (``memory``, ``processes``, ``cpu``,
``disk``, ``wall_clock``) fails the run and is reported; the job is killed as soon as one
is seen. The runner's audit hook and the stderr scan still report ``network``,
``filesystem`` and ``secret`` attempts (blocking too, as before), but as advisory evidence
(source ``inside``/``stderr``): the method can silence them. ``process`` (spawning a
program) is informational. ``SandboxResult.ok`` is True only when the runner exited 0
with valid predictions and nothing seen from outside (source ``kernel``/``monitor``)
says otherwise; ``violations`` holds the blocking ones and the limits hit, each with its
source, ``observations`` the informational ones.

Without ``bwrap`` on PATH (or without libseccomp), untrusted code is refused
(:class:`SandboxUnavailableError`) unless ``unsafe_no_sandbox=True``: then it runs in a
plain child process with the same scrubbed environment, the same cgroup or rlimit limits
and the same result pipe, but no namespaces, no seccomp filter and no tmpfs (its work
folder is on the host's disk), and the result says ``sandboxed=False`` (the caller must
record that as an integrity event).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import resource
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from trainer._util import usable_cpus
from trainer.errors import MethodError, TrainerError
from trainer.methods.base import MethodContext, validate_predictions
from trainer.sandbox_bwrap import (
    DATA_PACKAGES,
    SANDBOX_PKG,
    SANDBOX_ROOT,
    TRAINER_DIR,
    bwrap_mounts,
    hidden_data_paths,
    python_prefixes,
    sandbox_env,
    watched_paths,
    writable_mounts,
)
from trainer.sandbox_cgroups import CgroupCounters, JobCgroups, cgroup_problem
from trainer.sandbox_kmsg import UNSET_SESSION, KernelLog, SeccompRecord
from trainer.sandbox_monitor import TreeMonitor, limit_violations
from trainer.sandbox_pipes import Drain, QueryServer, pipe
from trainer.sandbox_seccomp import SeccompUnavailableError, filter_fd, syscall_name
from trainer.sandbox_violations import (
    BLOCKING,
    LIMITS,
    Source,
    Violation,
    ViolationKind,
    classify_stderr,
    dedupe,
    exit_signal,
    from_exit,
    kernel,
    monitor,
    parse_inside_reports,
)

__all__ = [
    "BLOCKING",
    "DATA_PACKAGES",
    "LIMITS",
    "SandboxLimits",
    "SandboxResult",
    "SandboxUnavailableError",
    "Source",
    "Violation",
    "ViolationKind",
    "classify_stderr",
    "hidden_data_paths",
    "run_untrusted",
    "sandbox_problem",
]

_TRAINER_DIR, _SANDBOX_ROOT, _SANDBOX_PKG = TRAINER_DIR, SANDBOX_ROOT, SANDBOX_PKG
_python_prefixes = python_prefixes
_LOG_TAIL = 64 * 1024
_REPORTS_CAP = 1 << 20
_POLL_S = 0.05


class SandboxUnavailableError(TrainerError):
    """``bwrap`` is missing or does not work here, and unsafe execution was not asked for."""


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    wall_s: float = 600.0  # wall clock, whole job
    cpu_s: float = 1800  # CPU seconds of the whole sandbox (all processes and threads); also RLIMIT_CPU per process
    memory_bytes: int = 8 << 30  # all memory of the sandbox, tmpfs included (fallback: also RLIMIT_AS per process)
    file_bytes: int = 2 << 30  # largest file the job may write (RLIMIT_FSIZE)
    threads: int = 0  # OMP/MKL/torch threads and the CPU quota in cores; 0: the usable cores
    processes: int = 512  # tasks of the whole sandbox: processes and threads (pids.max)
    disk_bytes: int = 2 << 30  # size of the /job/work tmpfs
    tmp_bytes: int = 1 << 30  # size of each of the /tmp and /dev/shm tmpfs
    files: int = 100_000  # files and folders in the job's tmpfs mounts together
    cgroups: bool | None = None  # None: where the host allows; False: rlimits + monitor; True: required


@dataclass(slots=True)
class SandboxResult:
    ok: bool
    predictions: np.ndarray | None  # P(class 1) per eval row, validated
    returncode: int | None
    runtime_s: float
    cpu_s: float  # whole sandbox: cpuacct.usage with cgroups, the monitor's estimate without
    peak_rss_bytes: int
    timed_out: bool
    sandboxed: bool
    stdout: str
    stderr: str
    violations: list[Violation] = field(default_factory=list)  # blocking ones and limits hit
    observations: list[Violation] = field(default_factory=list)  # process spawns, garbled audit lines
    error: str | None = None
    job_dir: Path | None = None
    limits_mode: str = ""  # "cgroup" or "rlimit"
    peak_memory_bytes: int = 0  # cgroup memory.max_usage_in_bytes, or the monitor's anonymous + tmpfs
    peak_tasks: int = 0
    peak_disk_bytes: int = 0  # the job's tmpfs mounts together
    method_s: float | None = None  # run(ctx) alone (all seeds), as the runner measured it
    seed_predictions: list[np.ndarray] = field(default_factory=list)  # one per context, in order
    kernel_counters: dict[str, int | float] = field(default_factory=dict)  # the job cgroup's, at the end
    seccomp_records: list[dict[str, Any]] = field(default_factory=list)  # the job's audit records
    notes: list[str] = field(default_factory=list)  # why some evidence was not available
    value_json: str | None = None  # a workspace run's result value, as JSON text
    stdout_bytes: int = 0  # what the sandbox wrote in all (stdout / stderr keep their tails)
    stderr_bytes: int = 0
    query_errors: list[str] = field(default_factory=list)  # teacher queries refused (budget, seed)

    @property
    def violation_kinds(self) -> set[ViolationKind]:
        return {v.kind for v in self.violations}

    @property
    def blocking_violations(self) -> list[Violation]:
        return [v for v in self.violations if v.blocking]

    @property
    def limit_violations(self) -> list[Violation]:
        return [v for v in self.violations if v.limit]

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "returncode": self.returncode,
            "runtime_s": round(self.runtime_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "peak_rss_bytes": self.peak_rss_bytes,
            "peak_memory_bytes": self.peak_memory_bytes,
            "peak_tasks": self.peak_tasks,
            "peak_disk_bytes": self.peak_disk_bytes,
            "timed_out": self.timed_out,
            "sandboxed": self.sandboxed,
            "limits_mode": self.limits_mode,
            "error": self.error,
            "violations": [v.as_dict() for v in self.violations],
            "observations": [v.as_dict() for v in self.observations],
            "kernel_counters": self.kernel_counters,
            "seccomp_records": self.seccomp_records,
            "notes": self.notes,
        }


# ------------------------------------------------------------------ availability


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


_probe: dict[str, str | None] = {}


def sandbox_problem() -> str | None:
    """None when the sandbox works here; otherwise why not (cached per process)."""
    if "result" not in _probe:
        _probe["result"] = _probe_sandbox()
    return _probe["result"]


def _probe_sandbox() -> str | None:
    exe = bwrap_path()
    if exe is None:
        return "bwrap is not on PATH (Debian/Ubuntu: apt-get install bubblewrap)"
    try:
        seccomp = filter_fd()
    except SeccompUnavailableError as exc:
        return str(exc)
    true = "/bin/true" if os.path.exists("/bin/true") else "/usr/bin/true"
    try:
        cmd = [exe, *_bwrap_mounts(None), "--seccomp", str(seccomp), "--", true]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, pass_fds=(seccomp,), check=False)
    finally:
        os.close(seccomp)
    return None if proc.returncode == 0 else f"bwrap does not start here: {proc.stderr.strip()}"


def _use_cgroups(limits: SandboxLimits) -> bool:
    if limits.cgroups is False:
        return False
    problem = cgroup_problem()
    if problem is not None and limits.cgroups:
        raise SandboxUnavailableError(f"cgroup limits were required, but {problem}")
    return problem is None


# ------------------------------------------------------------------ command line (trainer.sandbox_bwrap)


def _bwrap_mounts(job: Path | None, limits: SandboxLimits | None = None) -> list[str]:
    limits = limits or SandboxLimits()
    return bwrap_mounts(job, disk_bytes=limits.disk_bytes, tmp_bytes=limits.tmp_bytes)


class _ChildSetup:
    """Runs in the child between fork and exec (``preexec_fn``): join the job's cgroups, take a
    fresh audit session (so the kernel's seccomp records name this job), set the rlimits.
    Only system calls on values prepared by the parent."""

    __slots__ = ("cgroups", "loginuid", "rlimits")

    def __init__(self, limits: SandboxLimits, cgroups: JobCgroups | None) -> None:
        self.cgroups = cgroups
        self.rlimits = [
            (resource.RLIMIT_CPU, (math.ceil(limits.cpu_s), math.ceil(limits.cpu_s) + 5)),
            (resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes)),
            (resource.RLIMIT_CORE, (0, 0)),
        ]
        if cgroups is None:  # with a memory cgroup, an address-space limit only gets in the way
            self.rlimits.append((resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes)))
        self.loginuid = str(os.getuid()).encode()

    def __call__(self) -> None:
        if self.cgroups is not None:
            self.cgroups.join()
        try:
            fd = os.open("/proc/self/loginuid", os.O_WRONLY)
            try:
                os.write(fd, self.loginuid)
            finally:
                os.close(fd)
        except OSError:
            pass  # no audit, or no CAP_AUDIT_CONTROL: records are matched by pid instead
        for which, value in self.rlimits:
            resource.setrlimit(which, value)


def _audit_session(pid: int) -> int | None:
    """The child's audit session when it is its own (not inherited from the trainer)."""
    try:
        child = int(Path(f"/proc/{pid}/sessionid").read_text())
        own = int(Path("/proc/self/sessionid").read_text())
    except (OSError, ValueError):
        return None
    return None if child in (own, UNSET_SESSION) else child


# ------------------------------------------------------------------ job folder


def write_job(job: Path, method_source: str, ctx: MethodContext | Sequence[MethodContext],
              stored: dict[str, str] | None = None) -> None:
    """Write the method and its inputs (never gold labels: the context has none).

    Several contexts (one per seed of a job) share their features, texts and params and
    differ in ``seed`` and ``weak_soft_labels``: the runner calls ``run`` once per seed in
    one sandbox (one interpreter start and one import for the whole job)."""
    ctxs = [ctx] if isinstance(ctx, MethodContext) else list(ctx)
    if not ctxs:
        raise ValueError("a job needs at least one method context")
    first = ctxs[0]
    for other in ctxs[1:]:
        if (other.train_features.shape != first.train_features.shape
                or other.eval_features.shape != first.eval_features.shape or other.params != first.params):
            raise ValueError("the seeds of one job must share their features and params")
    inp = job / "input"
    inp.mkdir(parents=True, exist_ok=True)
    (inp / "method.py").write_text(method_source, encoding="utf-8")
    if stored:  # other ideas' code the method imports by hash (trainer.methods.stored)
        (inp / "stored").mkdir(exist_ok=True)
        for sha, code in stored.items():
            (inp / "stored" / f"{sha}.py").write_text(code, encoding="utf-8")
    np.save(inp / "train_features.npy", np.asarray(first.train_features, dtype=np.float32), allow_pickle=False)
    labels = np.stack([np.asarray(c.weak_soft_labels, dtype=np.float64) for c in ctxs])
    np.save(inp / "weak_soft_labels.npy", labels if len(ctxs) > 1 else labels[0], allow_pickle=False)
    np.save(inp / "eval_features.npy", np.asarray(first.eval_features, dtype=np.float32), allow_pickle=False)
    (inp / "train_texts.json").write_text(json.dumps(list(first.train_texts)), encoding="utf-8")
    (inp / "eval_texts.json").write_text(json.dumps(list(first.eval_texts)), encoding="utf-8")
    try:
        meta = json.dumps({"seed": int(first.seed), "seeds": [int(c.seed) for c in ctxs], "params": first.params,
                           "n_train": first.n_train, "n_eval": first.n_eval})
    except TypeError as exc:
        raise ValueError(f"method params must be JSON-serializable: {exc}") from None
    (inp / "ctx.json").write_text(meta, encoding="utf-8")


# ------------------------------------------------------------------ running


def run_untrusted(
    method_source: str | Path,
    ctx: MethodContext | Sequence[MethodContext],
    *,
    limits: SandboxLimits | None = None,
    job_dir: Path | None = None,
    unsafe_no_sandbox: bool = False,
    keep_job: bool = False,
    stored: dict[str, str] | None = None,
    teacher: Callable[[int, list[str]], Any] | None = None,
) -> SandboxResult:
    """Run ``run(ctx)`` from untrusted ``method_source`` (code, or a path to a .py file) in the sandbox.

    ``ctx`` may be a list of contexts, one per seed (see :func:`write_job`): one sandbox
    runs them all in order, under one set of limits for the whole job, and
    ``result.seed_predictions`` holds each seed's predictions (``result.predictions`` the
    first's). State the method keeps between its calls is its own (same job, same code).
    ``stored``: sha256 -> code of the stored methods it may import
    (:mod:`trainer.methods.stored`). ``teacher(seed, texts)``: answers ``ctx.teacher``
    (:mod:`trainer.teacher`), served over a pair of pipes; raising refuses the query.

    ``job_dir``: an empty folder for the job's inputs (default: a fresh temp folder, deleted
    afterwards unless ``keep_job``). Raises :class:`SandboxUnavailableError` when the
    sandbox cannot run here and ``unsafe_no_sandbox`` is false, or when ``limits.cgroups``
    is True and cgroups cannot be used. Never raises for what the method does: failures,
    violations, limits, timeouts and invalid predictions come back in the result.
    """
    limits = limits or SandboxLimits()
    source = Path(method_source).read_text(encoding="utf-8") if isinstance(method_source, Path) else method_source
    sandboxed = not unsafe_no_sandbox
    if sandboxed and (problem := sandbox_problem()) is not None:
        raise SandboxUnavailableError(
            f"refusing to run untrusted code without a sandbox: {problem}. "
            "Pass unsafe_no_sandbox=True only for trusted code (and record it as an integrity event)."
        )
    use_cgroups = _use_cgroups(limits)
    own_dir = job_dir is None
    job = Path(tempfile.mkdtemp(prefix="aar-job-")) if job_dir is None else Path(job_dir)
    job.mkdir(parents=True, exist_ok=True)
    job.chmod(0o755)
    try:
        write_job(job, source, ctx, stored)
        return _execute(job, limits, sandboxed, use_cgroups, teacher)
    finally:
        if own_dir and not keep_job:
            shutil.rmtree(job, ignore_errors=True)


@dataclass(slots=True)
class _Run:
    """What the watch loop found."""

    status: int = 0
    timed_out: bool = False
    stopped: list[Violation] = field(default_factory=list)  # why the trainer ended the job early


def _execute(job: Path, limits: SandboxLimits, sandboxed: bool, use_cgroups: bool,
             teacher: Any = None) -> SandboxResult:
    return Launched.start(job, limits, sandboxed, use_cgroups, teacher=teacher).finish()


class Launched:
    """A started sandbox. ``finish(code)`` watches it to its end and reads the result.

    A workspace sandbox (``stdin=True``) starts ahead of its run: the runner imports the
    libraries and loads the inputs, then waits for the code on its stdin. ``finish(code)``
    hands it over; the wall clock and the CPU limit count from then (the CPU the start
    used is subtracted), so a warm sandbox costs its run nothing of its start."""

    def __init__(self) -> None:
        self.job: Path
        self.limits: SandboxLimits
        self.sandboxed = True
        self.cgroups: JobCgroups | None = None
        self.klog: KernelLog
        self.proc: subprocess.Popen[bytes]
        self.drains: dict[str, Drain] = {}
        self.session: int | None = None
        self.mon: TreeMonitor
        self.watched: list[str] = []
        self.started = 0.0
        self.stdin_fd: int | None = None
        self.ready_fd: int | None = None
        self.server: QueryServer | None = None
        self.done = False

    @classmethod
    def start(cls, job: Path, limits: SandboxLimits, sandboxed: bool, use_cgroups: bool, *,
              teacher: Any = None, stdin: bool = False, result_cap: int | None = None) -> Launched:
        self = cls()
        self.job, self.limits, self.sandboxed = job, limits, sandboxed
        threads = limits.threads or usable_cpus()
        self.watched = watched_paths()
        if result_cap is None:
            k, n_eval = _shape(job)
            result_cap = 64 * (k * n_eval + 1024) + 4096
        self.cgroups = (
            JobCgroups.create(memory_bytes=limits.memory_bytes, tasks=limits.processes, cores=threads)
            if use_cgroups
            else None
        )
        self.klog = KernelLog()  # its position: now, before the sandbox starts
        try:
            self.started = time.monotonic()
            self.proc, reads, self.stdin_fd, queries = _spawn(
                job, limits, sandboxed, self.cgroups, threads, self.watched, stdin=stdin, queries=teacher is not None)
            self.ready_fd = reads.pop("ready", None)
            self.drains = {
                "audit": Drain(reads["audit"], _REPORTS_CAP).start(),
                "result": Drain(reads["result"], result_cap).start(),
                "stdout": Drain(reads["stdout"], _LOG_TAIL, tail=True).start(),
                "stderr": Drain(reads["stderr"], _LOG_TAIL, tail=True).start(),
            }
            if queries is not None:
                self.server = QueryServer(*queries, teacher).start()
            self.session = _audit_session(self.proc.pid)
            mounts = writable_mounts(disk_bytes=limits.disk_bytes, tmp_bytes=limits.tmp_bytes) if sandboxed else []
            self.mon = TreeMonitor(self.proc.pid, mounts)
        except BaseException:
            if getattr(self, "proc", None) is not None:  # started: the sandbox goes first
                _kill_sandbox(self.proc.pid, self.cgroups)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.proc.pid, 0)
                for fd in (self.stdin_fd, self.ready_fd):
                    if fd is not None:
                        with contextlib.suppress(OSError):
                            os.close(fd)
            self.klog.close()
            if self.cgroups is not None:
                self.cgroups.close()
            raise
        return self

    def alive(self) -> bool:
        return not self.done and self.proc.poll() is None

    def wait_ready(self, timeout_s: float) -> bool:
        """Until the runner waits for its code (True), exits, or ``timeout_s`` passes."""
        if self.ready_fd is None:
            return True
        readable, _, _ = select.select([self.ready_fd], [], [], timeout_s)
        if not readable:
            return False
        with contextlib.suppress(OSError):
            os.close(self.ready_fd)
        self.ready_fd = None
        return True

    def abandon(self) -> None:
        """Kill it unused (a warm sandbox nobody took)."""
        if self.done:
            return
        self.done = True
        _kill_sandbox(self.proc.pid, self.cgroups)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.proc.pid, 0)
        for fd in (self.stdin_fd, self.ready_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.klog.close()
        if self.cgroups is not None:
            self.cgroups.close()

    def finish(self, code: bytes | None = None) -> SandboxResult:
        limits, cgroups, mon = self.limits, self.cgroups, self.mon
        self.done = True
        try:
            offset = 0.0
            try:
                if self.stdin_fd is not None:
                    # A sandbox started just now (cold) is let finish its start first: what the
                    # start costs is not the run's, on the clock or in CPU.
                    self.wait_ready(120.0)
                    mon.sample()
                    counters = cgroups.counters() if cgroups is not None else None
                    offset = counters.cpu_s if counters is not None else mon.cpu_s
                    limits = replace(limits, cpu_s=limits.cpu_s + offset)
                    self.started = time.monotonic()
                    fd, self.stdin_fd = self.stdin_fd, None
                    threading.Thread(target=_feed, args=(fd, code or b""), daemon=True).start()
            except BaseException:  # the start failed or the trainer is going away: the sandbox goes first
                _kill_sandbox(self.proc.pid, cgroups)
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(self.proc.pid, 0)
                if self.stdin_fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(self.stdin_fd)
                raise
            try:
                run = _watch(self.proc, limits, mon, cgroups, self.klog, self.session, self.started)
            except BaseException:  # the trainer is going away: the sandbox goes first
                _kill_sandbox(self.proc.pid, cgroups)
                os.waitpid(self.proc.pid, 0)
                raise
            self.proc.returncode = os.waitstatus_to_exitcode(run.status)
            runtime = time.monotonic() - self.started
            counters = cgroups.counters() if cgroups is not None else None
            if cgroups is not None:
                mon.seen.update(cgroups.pids())
                cgroups.kill_all()  # an unsafe run's leftovers; a sandbox's die with its PID namespace
            self.klog.poll()
            for drain in self.drains.values():
                drain.join(5)
            result = _result(self.job, limits, self.sandboxed, self.proc.returncode, runtime, run, mon, counters,
                             self.klog, self.session, self.drains, self.watched)
            result.cpu_s = max(0.0, result.cpu_s - offset)
            result.stdout_bytes = self.drains["stdout"].total
            result.stderr_bytes = self.drains["stderr"].total
            if self.server is not None:
                result.query_errors = list(self.server.errors)
            return result
        finally:
            if self.ready_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self.ready_fd)
                self.ready_fd = None
            self.klog.close()
            if cgroups is not None:
                cgroups.close()


def _feed(fd: int, data: bytes) -> None:
    """Hand the code to a waiting runner (a thread: a pipe holds 64 KiB)."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
    except OSError:
        pass  # the runner is gone: its exit says why
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)


def _spawn(
    job: Path, limits: SandboxLimits, sandboxed: bool, cgroups: JobCgroups | None, threads: int, watched: list[str],
    *, stdin: bool = False, queries: bool = False,
) -> tuple[subprocess.Popen[bytes], dict[str, int], int | None, tuple[int, int] | None]:
    """Start the sandbox (or, unsafe, the plain runner). Returns it, the read ends of its
    pipes, the write end of its stdin (``stdin``: the runner reads its code there) and,
    with ``queries``, the trainer's ends of the query pipes (requests in, answers out)."""
    python = [sys.executable, "-B", "-s", "-m", "trainer.sandbox_runner"]
    if not sandboxed:
        # Only the trainer package on the path (a link), not the repository around it.
        pkg = job / "pkg"
        pkg.mkdir(exist_ok=True)
        if not (pkg / "trainer").exists():
            (pkg / "trainer").symlink_to(_TRAINER_DIR, target_is_directory=True)
        (job / "work" / "tmp").mkdir(parents=True, exist_ok=True)
    seccomp = filter_fd() if sandboxed else None
    ends = {name: pipe() for name in ("audit", "result", "stdout", "stderr")}
    writes = {name: w for name, (_, w) in ends.items()}
    stdin_r, stdin_w = os.pipe() if stdin else (None, None)
    if stdin_w is not None:
        os.set_inheritable(stdin_w, False)
        ends["ready"] = pipe()  # the runner writes a byte there once it waits for its code
        writes["ready"] = ends["ready"][1]
    child_q: tuple[int, int] | None = None  # the sandbox's ends: it writes queries, reads answers
    mine_q: tuple[int, int] | None = None
    if queries:
        ask_r, ask_w = pipe()  # the sandbox writes its queries; the trainer reads
        ans_r, ans_w = os.pipe()  # the trainer answers; the sandbox reads
        os.set_inheritable(ans_w, False)
        child_q, mine_q = (ask_w, ans_r), (ask_r, ans_w)
    try:
        if sandboxed:
            env = sandbox_env(threads, _SANDBOX_ROOT, _SANDBOX_PKG, writes, watched, limits.processes)
            setenv = [a for k, v in env.items() for a in ("--setenv", k, v)]
            cmd = [bwrap_path() or "bwrap", *_bwrap_mounts(job, limits), "--seccomp", str(seccomp)]
            cmd += [*setenv, "--", *python, _SANDBOX_ROOT]
            env, cwd = {"PATH": "/usr/bin:/bin"}, None
        else:
            unwatched = [w for w in watched if not str(job).startswith(w)]
            env = sandbox_env(threads, str(job), str(job / "pkg"), writes, unwatched, limits.processes)
            cmd, cwd = [*python, str(job)], str(job / "work")
        if "ready" in writes:
            if sandboxed:
                cmd[cmd.index("--"):cmd.index("--")] = ["--setenv", "AAR_READY_FD", str(writes["ready"])]
            else:
                env["AAR_READY_FD"] = str(writes["ready"])
        if child_q is not None:
            fds = f"{child_q[0]},{child_q[1]}"
            if sandboxed:
                cmd[cmd.index("--"):cmd.index("--")] = ["--setenv", "AAR_TEACHER_FDS", fds]
            else:
                env["AAR_TEACHER_FDS"] = fds
        proc = subprocess.Popen(
            cmd,
            stdin=stdin_r if stdin_r is not None else subprocess.DEVNULL,
            stdout=writes["stdout"],
            stderr=writes["stderr"],
            env=env,
            cwd=cwd,
            pass_fds=(writes["audit"], writes["result"], *([seccomp] if seccomp is not None else []),
                      *(child_q or ()), *([writes["ready"]] if "ready" in writes else [])),
            start_new_session=True,
            preexec_fn=_ChildSetup(limits, cgroups),  # fork-safe: only os.write and setrlimit
        )
    except BaseException:
        for r, _ in ends.values():
            os.close(r)
        for fd in (stdin_w, *(mine_q or ())):
            if fd is not None:
                os.close(fd)
        raise
    finally:
        for w in writes.values():
            os.close(w)
        for fd in (stdin_r, *(child_q or ())):
            if fd is not None:
                os.close(fd)
        if seccomp is not None:
            os.close(seccomp)
    return proc, {name: r for name, (r, _) in ends.items()}, stdin_w, mine_q


def _watch(
    proc: subprocess.Popen[bytes],
    limits: SandboxLimits,
    mon: TreeMonitor,
    cgroups: JobCgroups | None,
    klog: KernelLog,
    session: int | None,
    started: float,
) -> _Run:
    """Sample until the child exits; kill the whole sandbox at a limit, a denied syscall or the wall clock."""
    run = _Run()
    deadline = started + limits.wall_s
    while True:
        mon.sample()
        if cgroups is not None:
            mon.seen.update(cgroups.pids())
        klog.poll()
        counters = cgroups.counters() if cgroups is not None else None
        hits = _limits_hit(mon, counters, limits) + _syscall_violations(klog.for_job(session, mon.seen))
        pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
        if pid == proc.pid:
            run.status = status
            return run
        if not hits and time.monotonic() > deadline:
            run.timed_out = True
            hits = [monitor(ViolationKind.WALL_CLOCK, f"wall-clock limit of {limits.wall_s:g}s exceeded")]
        if hits:
            run.stopped = hits
            _kill_sandbox(proc.pid, cgroups)
            _, run.status, _ = os.wait4(proc.pid, 0)
            return run
        time.sleep(_POLL_S)


def _limits_hit(mon: TreeMonitor, counters: CgroupCounters | None, limits: SandboxLimits) -> list[Violation]:
    return limit_violations(
        mon,
        counters,
        memory_bytes=limits.memory_bytes,
        tasks=limits.processes,
        cpu_s=limits.cpu_s,
        files=limits.files,
    )


def _syscall_violations(records: list[SeccompRecord]) -> list[Violation]:
    found = []
    for rec in records[:20]:
        name = syscall_name(rec.syscall)
        found.append(
            kernel(
                ViolationKind.SYSCALL,
                f"{name} denied by the seccomp filter: pid {rec.pid} ({rec.comm}) killed by signal {rec.signal}",
            )
        )
    return found


def _kill_sandbox(pid: int, cgroups: JobCgroups | None) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # bwrap (start_new_session: its pid is the group id); with
    except ProcessLookupError:  # --die-with-parent its PID namespace, the whole sandbox, dies with it
        pass
    if cgroups is not None:
        cgroups.kill_all()


def _result(
    job: Path,
    limits: SandboxLimits,
    sandboxed: bool,
    code: int,
    runtime: float,
    run: _Run,
    mon: TreeMonitor,
    counters: CgroupCounters | None,
    klog: KernelLog,
    session: int | None,
    drains: dict[str, Drain],
    watched: list[str],
) -> SandboxResult:
    stderr = drains["stderr"].text()
    root = _SANDBOX_ROOT if sandboxed else str(job)
    records = klog.for_job(session, mon.seen)
    outside = _syscall_violations(records)
    if sandboxed and klog.dropped is not None:
        # The kernel dropped messages during the job: a seccomp record may be among them.
        outside.append(kernel(ViolationKind.SYSCALL,
                              f"the kernel dropped log messages during the job ({klog.dropped}): a denied "
                              "system call may be hidden among them"))
    if not records or exit_signal(code) != signal.SIGSYS:
        outside += from_exit(code)
    outside += run.stopped + _limits_hit(mon, counters, limits)
    outside = _first_per_kind(outside)
    inside = parse_inside_reports(drains["audit"].data()) + classify_stderr(stderr, root, watched)
    found = dedupe(outside + inside)
    notes = []
    if klog.problem:
        notes.append(f"no kernel log: {klog.problem}")
    if sandboxed and session is None:
        notes.append("no audit session of its own: seccomp records matched by pid")
    result = SandboxResult(
        ok=False,
        predictions=None,
        returncode=code,
        runtime_s=runtime,
        cpu_s=counters.cpu_s if counters is not None else mon.cpu_s,
        peak_rss_bytes=mon.peak_rss,
        timed_out=run.timed_out,
        sandboxed=sandboxed,
        stdout=drains["stdout"].text(),
        stderr=stderr,
        violations=[v for v in found if v.blocking or v.limit],
        observations=[v for v in found if not (v.blocking or v.limit)],
        job_dir=job,
        limits_mode="cgroup" if counters is not None else "rlimit",
        peak_memory_bytes=counters.memory_peak_bytes if counters is not None else mon.peak_memory,
        peak_tasks=max(mon.peak_tasks, counters.tasks_peak if counters is not None else 0),
        peak_disk_bytes=mon.peak_disk,
        kernel_counters=counters.as_dict() if counters is not None else {},
        seccomp_records=[
            {"pid": r.pid, "syscall": syscall_name(r.syscall), "number": r.syscall, "signal": r.signal, "comm": r.comm}
            for r in records[:20]
        ],
        notes=notes,
    )
    fatal = [v for v in outside if v.blocking] + [v for v in outside if v.limit]
    if run.timed_out:
        result.error = f"wall-clock limit of {limits.wall_s:g}s exceeded"
    elif fatal:
        result.error = f"{fatal[0].kind.value}: {fatal[0].detail}"
    elif code != 0:
        result.error = _exit_reason(code, stderr)
    else:
        try:
            if _is_workspace(job):
                result.value_json, result.method_s = _read_value(drains["result"])
            else:
                result.seed_predictions, result.method_s = _read_result(drains["result"], *_shape(job))
                result.predictions = result.seed_predictions[0]
            result.ok = True
        except MethodError as exc:
            result.error = str(exc)
    return result


def _first_per_kind(violations: list[Violation]) -> list[Violation]:
    """One violation per (kind, source), the first seen; denied syscalls each count."""
    seen: set[tuple[ViolationKind, str]] = set()
    out = []
    for v in violations:
        key = (v.kind, v.detail if v.kind is ViolationKind.SYSCALL else str(v.source))
        if key not in seen:
            seen.add(key)
            out.append(v)
    return out


_SIGNAL_HINTS = {
    signal.SIGXCPU: " (CPU-time limit)",
    signal.SIGXFSZ: " (file-size limit)",
    signal.SIGKILL: " (hard CPU-time limit, out of memory, or killed)",
    signal.SIGSEGV: " (crashed; possibly the address-space limit)",
    signal.SIGSYS: " (a syscall the sandbox denies)",
}


def _exit_reason(code: int, stderr: str) -> str:
    if code == 3:
        last = [line for line in stderr.strip().splitlines() if line.strip()]
        return f"method raised: {last[-1] if last else 'an exception'}"
    if code == 2:
        return "bad job folder"
    if code == 4:
        return "the runner could not send the result"
    signum = exit_signal(code)
    if signum is not None:
        try:
            sig = signal.Signals(signum)
            return f"killed by {sig.name}{_SIGNAL_HINTS.get(sig, '')}"
        except ValueError:
            return f"killed by signal {signum}"
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr:
        return f"exit {code}: out of memory"
    return f"exit {code}"


def _is_workspace(job: Path) -> bool:
    return bool(json.loads((job / "input" / "ctx.json").read_text()).get("workspace"))


def _read_value(drain: Drain) -> tuple[str, float | None]:
    """A workspace run's result: a JSON header line, then the value's JSON text."""
    if drain.overflow:
        raise MethodError(f"the result is larger than {drain.cap} bytes")
    line, _, body = drain.data().partition(b"\n")
    try:  # whatever the sandbox wrote (it can write this pipe itself) is data, never a crash here
        header = json.loads(line)
        size = header["value_bytes"]
        seconds = header.get("method_seconds")
        text = body.decode("utf-8")
        json.loads(text)
        if not isinstance(size, int):
            raise TypeError("value_bytes")
    except Exception:  # noqa: BLE001 - RecursionError, OverflowError, ... included
        raise MethodError("garbled result from the sandbox") from None
    if size != len(body):
        raise MethodError(f"the result holds {len(body)} bytes, its header says {size}")
    return text, float(seconds) if isinstance(seconds, int | float) and math.isfinite(seconds) else None


def _shape(job: Path) -> tuple[int, int]:
    """(seeds, eval rows) of a job, from the ctx.json the trainer wrote."""
    meta = json.loads((job / "input" / "ctx.json").read_text())
    return len(meta.get("seeds") or [meta["seed"]]), int(meta["n_eval"])


def _read_result(drain: Drain, k: int, n_eval: int) -> tuple[list[np.ndarray], float | None]:
    """The runner's result from its pipe: a JSON header line, then the predictions as .npy
    (``[n_eval]`` for one seed, ``[k, n_eval]`` for ``k``)."""
    if drain.overflow:
        raise MethodError("the result is larger than predictions can be")
    raw = drain.data()
    if not raw:
        raise MethodError("the method wrote no predictions")
    line, _, body = raw.partition(b"\n")
    try:  # the method can write this pipe itself: anything here is data, never a crash
        header = json.loads(line)
        size = header["predictions_bytes"]
        seconds = header.get("method_seconds")
        if not isinstance(size, int):
            raise TypeError("predictions_bytes")
    except Exception:  # noqa: BLE001 - RecursionError, OverflowError, ... included
        raise MethodError("garbled result from the sandbox") from None
    if size != len(body):
        raise MethodError(f"the result holds {len(body)} bytes of predictions, its header says {size}")
    try:
        predictions = np.load(io.BytesIO(body), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise MethodError(f"unreadable predictions: {exc}") from None
    if k == 1:
        rows = [predictions]
    elif predictions.ndim >= 2 and predictions.shape[0] == k:
        rows = list(predictions)
    else:
        raise MethodError(f"expected predictions for {k} seeds, got shape {predictions.shape}")
    return ([validate_predictions(p, n_eval) for p in rows],
            float(seconds) if isinstance(seconds, (int, float)) else None)
