"""Attacks on the sandbox's limits, with real bwrap, cgroups and seccomp.

Each attack must be stopped or bounded, and reported from outside the sandbox (source
``kernel`` or ``monitor``), whatever the method did to the reporter inside. The tests use
only what every version of the sandbox has (``run_untrusted``, ``SandboxLimits``, the
violations' ``kind.value`` and ``source``), so that an older sandbox fails them for the
real reason: nothing bounded, nothing reported. Limit fields it does not know are dropped.
"""

from __future__ import annotations

import dataclasses
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.trainer.conftest import synthetic_context
from trainer import sandbox
from trainer.methods import MethodContext
from trainer.sandbox import SandboxLimits, run_untrusted

try:
    from trainer.sandbox_cgroups import cgroup_problem
except ImportError:  # a sandbox without cgroup support: the host may still have them

    def cgroup_problem() -> str | None:
        ok = all(os.access(f"/sys/fs/cgroup/{c}", os.W_OK) for c in ("memory", "pids", "cpu", "cpuacct"))
        return None if ok else "no writable cgroup v1 hierarchy"


needs_bwrap = pytest.mark.skipif(
    sandbox.sandbox_problem() is not None, reason=f"sandbox unavailable: {sandbox.sandbox_problem()}"
)
needs_cgroups = pytest.mark.skipif(cgroup_problem() is not None, reason=f"no cgroups: {cgroup_problem()}")
needs_kmsg = pytest.mark.skipif(not os.access("/dev/kmsg", os.R_OK), reason="/dev/kmsg is not readable")
x86_64 = pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers are x86_64's")
pytestmark = needs_bwrap

if TYPE_CHECKING:
    from services.trainer.jobs import JobOutcome

OUTSIDE = ("kernel", "monitor")
MODES = [pytest.param(True, marks=needs_cgroups, id="cgroup"), pytest.param(False, id="rlimit")]
SILENCE = (
    "import ctypes, os\n"
    "os.close(int(os.environ['AAR_AUDIT_FD']))  # the runner's reporter: gone\n"
    "os.environ.__class__ = type(os.environ).__mro__[1]  # its environ guard: gone\n"
    "libc = ctypes.CDLL(None, use_errno=True)  # straight to libc: no audit events\n"
    "libc.syscall.restype = ctypes.c_long\n"
)


def limits(**fields: float | bool | None) -> SandboxLimits:
    known = {f.name for f in dataclasses.fields(SandboxLimits)}
    kept = {k: v for k, v in fields.items() if k in known}
    return SandboxLimits(**kept)  # type: ignore[arg-type]  # mixed-type kwargs for whichever fields this sandbox version has


def outside(result: sandbox.SandboxResult, kind: str) -> list[sandbox.Violation]:
    return [v for v in result.violations if v.kind.value == kind and v.source in OUTSIDE]


@pytest.fixture
def ctx() -> MethodContext:
    return synthetic_context(n_train=60, n_eval=20)[0]


# ------------------------------------------------------------------ processes


@needs_cgroups
def test_fork_bomb_is_bounded_by_the_pids_cgroup(ctx: MethodContext) -> None:
    # Exponential, but at most 2**9 processes so that an unbounded sandbox survives it too.
    src = (
        "import os, time\n"
        "def run(ctx):\n"
        "    me = os.getpid()\n"
        "    for _ in range(9):\n"
        "        try:\n"
        "            os.fork()\n"
        "        except OSError:\n"
        "            pass\n"
        "    time.sleep(4)\n"
        "    if os.getpid() != me:\n"
        "        os._exit(0)\n"
        "    return [0.5] * ctx.n_eval\n"
    )
    result = run_untrusted(src, ctx, limits=limits(processes=48, wall_s=30))
    assert not result.ok, "the fork bomb ran to the end"
    hits = outside(result, "processes")
    assert hits and hits[0].source == "kernel" and not hits[0].blocking, result.violations
    assert result.peak_tasks <= 48
    assert result.runtime_s < 15


def test_processes_are_bounded_without_cgroups(ctx: MethodContext) -> None:
    src = (
        "import os, time\n"
        "def run(ctx):\n"
        "    kids = []\n"
        "    for _ in range(150):\n"
        "        pid = os.fork()\n"
        "        if pid == 0:\n"
        "            time.sleep(6)\n"
        "            os._exit(0)\n"
        "        kids.append(pid)\n"
        "    for pid in kids:\n"
        "        os.waitpid(pid, 0)\n"
        "    return [0.5] * ctx.n_eval\n"
    )
    result = run_untrusted(src, ctx, limits=limits(processes=40, cgroups=False, wall_s=30))
    assert not result.ok, "150 processes ran to the end"
    hits = outside(result, "processes")
    assert hits and hits[0].source == "monitor", result.violations
    assert result.limits_mode == "rlimit"
    assert result.runtime_s < 6 + 5  # stopped, not waited out


# ------------------------------------------------------------------ memory


@needs_cgroups
@pytest.mark.parametrize("ram_disk", ["/dev/shm", "/tmp"])
def test_memory_filled_through_a_ram_disk_is_bounded(ctx: MethodContext, ram_disk: str) -> None:
    src = (
        "def run(ctx):\n"
        f"    with open('{ram_disk}/fill', 'wb') as f:\n"
        "        for _ in range(128):\n"
        "            f.write(b'x' * (16 << 20))  # 2 GiB in all\n"
        "    return [0.5] * ctx.n_eval\n"
    )
    mem = 1536 << 20  # an older sandbox makes this the address-space limit per process: it must fit torch
    result = run_untrusted(src, ctx, limits=limits(memory_bytes=mem, tmp_bytes=4 << 30, wall_s=60))
    assert not result.ok, f"2 GiB fitted in {ram_disk}"
    hits = outside(result, "memory")
    assert hits and hits[0].source == "kernel", result.violations
    assert result.peak_memory_bytes <= mem


def test_memory_through_dev_shm_is_bounded_without_cgroups(ctx: MethodContext) -> None:
    src = (
        "import time\n"
        "def run(ctx):\n"
        "    with open('/dev/shm/fill', 'wb') as f:\n"
        "        for _ in range(128):\n"
        "            f.write(b'x' * (16 << 20))  # 2 GiB in all\n"
        "            time.sleep(0.01)\n"
        "    return [0.5] * ctx.n_eval\n"
    )
    mem = 1536 << 20  # the address-space limit per process must still fit torch
    result = run_untrusted(src, ctx, limits=limits(memory_bytes=mem, tmp_bytes=4 << 30, cgroups=False, wall_s=60))
    assert not result.ok, "2 GiB fitted in /dev/shm"
    hits = outside(result, "memory")
    assert hits and hits[0].source == "monitor", result.violations


def test_no_unbounded_ram_disk_is_left_writable(ctx: MethodContext) -> None:
    """bwrap's root and /dev are tmpfs without a size: they must not be writable."""
    src = (
        "def run(ctx):\n"
        "    writable = []\n"
        "    for d in ('/', '/job', '/dev', '/opt', '/opt/aar'):\n"
        "        try:\n"
        "            open(d.rstrip('/') + '/x', 'wb').write(b'x')\n"
        "            writable.append(d)\n"
        "        except OSError:\n"
        "            pass\n"
        "    print('writable:', writable)\n"
        "    return [len(writable) / 10] * ctx.n_eval\n"
    )
    result = run_untrusted(src, ctx)
    assert result.ok, result.error
    assert result.predictions is not None and result.predictions[0] == 0, result.stdout


# ------------------------------------------------------------------ disk


@pytest.mark.parametrize("cgroups", MODES)
@pytest.mark.parametrize("shape", ["big_files", "many_files"])
def test_job_folder_filled_is_bounded(ctx: MethodContext, cgroups: bool, shape: str) -> None:
    if shape == "big_files":  # 128 MiB into a 32 MiB folder; ENOSPC is swallowed. (It fills at 128
        # files: well under the file-count limit, which the monitor would otherwise see first.)
        body = "            open(f'f{i}', 'wb').write(b'x' * (256 << 10))\n"
        count = 512
    else:  # empty files: no bytes, only inodes
        body = "            open(f'f{i}', 'wb').close()\n"
        count = 3000
    src = (
        "import time\n"
        "def run(ctx):\n"
        f"    for i in range({count}):\n"
        "        try:\n" + body + "        except OSError:\n"
        "            break\n"
        "    time.sleep(2)\n"
        "    return [0.5] * ctx.n_eval\n"
    )
    job = limits(disk_bytes=32 << 20, files=500, cgroups=cgroups, wall_s=30)
    result = run_untrusted(src, ctx, limits=job)
    assert not result.ok, "the job folder took everything"
    hits = outside(result, "disk")
    assert hits, result.violations
    assert hits[0].source == ("kernel" if shape == "big_files" else "monitor")
    assert result.peak_disk_bytes <= 32 << 20


# ------------------------------------------------------------------ CPU


BURN = "import time\\nt = time.process_time()\\nwhile time.process_time() - t < 1: pass"


@pytest.mark.parametrize("cgroups", MODES)
@pytest.mark.parametrize("how", ["subprocess", "multiprocessing"])
def test_cpu_burnt_in_child_processes_is_bounded(ctx: MethodContext, cgroups: bool, how: str) -> None:
    if how == "subprocess":  # short children, each far below the per-process CPU rlimit
        src = (
            "import subprocess, sys\n"
            "def run(ctx):\n"
            "    for _ in range(8):\n"
            f"        procs = [subprocess.Popen([sys.executable, '-c', '{BURN}']) for _ in range(2)]\n"
            "        for p in procs:\n"
            "            p.wait()\n"
            "    return [0.5] * ctx.n_eval\n"
        )
    else:
        src = (
            "import multiprocessing as mp, time\n"
            "def burn(_):\n"
            "    t = time.process_time()\n"
            "    while time.process_time() - t < 1:\n"
            "        pass\n"
            "def run(ctx):\n"
            "    # a fresh worker per task: none comes near the per-process CPU rlimit\n"
            "    with mp.get_context('fork').Pool(2, maxtasksperchild=1) as pool:\n"
            "        pool.map(burn, range(16))\n"
            "    return [0.5] * ctx.n_eval\n"
        )
    budget = 5  # about 2 s of it go to starting Python and torch
    result = run_untrusted(src, ctx, limits=limits(cpu_s=budget, threads=2, cgroups=cgroups, wall_s=40))
    assert not result.ok, "16 CPU-seconds in children went unnoticed"
    hits = outside(result, "cpu")
    assert hits and hits[0].source == ("kernel" if cgroups else "monitor"), result.violations
    assert budget <= result.cpu_s < budget + 3
    assert result.runtime_s < 12


# ------------------------------------------------------------------ syscalls


@x86_64
def test_network_socket_after_silencing_the_reporter_is_reported_by_the_kernel(ctx: MethodContext) -> None:
    src = SILENCE + (
        "def run(ctx):\n"
        "    fd = libc.socket(2, 1, 0)  # AF_INET, SOCK_STREAM\n"
        "    return [0.5] * ctx.n_eval\n"
    )
    result = run_untrusted(src, ctx)
    assert not result.ok, "a network socket was opened"
    hits = outside(result, "syscall")
    assert hits and all(v.source == "kernel" and v.blocking for v in hits), result.violations
    if os.access("/dev/kmsg", os.R_OK):
        assert any(v.detail.startswith("socket") for v in hits), hits


@x86_64
@needs_kmsg
def test_socket_in_a_short_lived_child_is_found_in_the_kernel_log(ctx: MethodContext) -> None:
    """The parent survives and returns predictions: only the kernel's audit record tells."""
    src = SILENCE + (
        "def run(ctx):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        libc.socket(10, 2, 0)  # AF_INET6, SOCK_DGRAM\n"
        "        os._exit(0)\n"
        "    os.waitpid(pid, 0)\n"
        "    return [0.5] * ctx.n_eval\n"
    )
    result = run_untrusted(src, ctx)
    assert not result.ok
    hits = outside(result, "syscall")
    assert any(v.detail.startswith("socket") and v.source == "kernel" for v in hits), result.violations


def test_a_denied_syscall_is_seen_even_after_a_burst_of_crashes(ctx: MethodContext) -> None:
    """The kernel rate-limits what it prints (10 messages per 5 s, segfault reports and
    seccomp records alike): a dozen crashing children used to crowd the record of a
    denied syscall out of /dev/kmsg, and the run came back clean. The audit netlink
    group, read where the trainer may (root), gets every record."""
    src = SILENCE + (
        "def child(fn):\n"
        "    pid = os.fork()\n"
        "    if pid == 0:\n"
        "        try:\n"
        "            fn()\n"
        "        finally:\n"
        "            os._exit(0)\n"
        "    return os.waitpid(pid, 0)[1]\n"
        "def run(ctx):\n"
        "    for _ in range(12):\n"
        "        child(lambda: ctypes.string_at(0))  # segfaults, each one a kernel message\n"
        "    child(lambda: libc.syscall(250, 0, 0, 0, 0, 0))  # keyctl: killed\n"
        "    return [0.5] * ctx.n_eval\n"
    )
    result = run_untrusted(src, ctx)
    assert not result.ok
    assert any(v.source == "kernel" for v in outside(result, "syscall")), (result.violations, result.notes)


CLONE_NEWUSER, CLONE_NEWNET, SIGCHLD = 0x10000000, 0x40000000, 17
DENIED = {
    "io_uring_setup": "params = ctypes.create_string_buffer(120)\n    libc.syscall(425, 8, params)",
    "keyctl": "libc.syscall(250, 0, -3, 1)  # KEYCTL_GET_KEYRING_ID of the session keyring, create it",
    "ptrace": "libc.syscall(101, 0, 0, 0, 0)  # PTRACE_TRACEME",
    "unshare": f"libc.syscall(272, {CLONE_NEWUSER})  # a user namespace of its own, with every capability",
    "mount": "libc.syscall(165, b'none', b'/job/work', b'tmpfs', 0, None)",
    "clone": f"pid = libc.syscall(56, {CLONE_NEWNET | SIGCHLD}, 0, 0, 0, 0)\n    if pid == 0: os._exit(0)",
    "bpf": "libc.syscall(321, 0, None, 0)",
    "userfaultfd": "libc.syscall(323, 0)",
}


@x86_64
@pytest.mark.parametrize("name", sorted(DENIED))
def test_denied_syscall_kills_the_method_and_is_reported_by_the_kernel(ctx: MethodContext, name: str) -> None:
    src = SILENCE + (
        "def run(ctx):\n"
        f"    {DENIED[name]}\n"
        "    return [0.5] * ctx.n_eval\n"
    )
    result = run_untrusted(src, ctx)
    assert not result.ok, f"{name} was allowed"
    hits = outside(result, "syscall")
    assert hits and all(v.blocking for v in hits), result.violations
    if os.access("/dev/kmsg", os.R_OK):
        assert any(v.detail.startswith(name) for v in hits), hits


@x86_64
def test_clone3_fails_with_enosys_and_threads_still_start(ctx: MethodContext) -> None:
    src = (
        "import ctypes, subprocess, sys, threading\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "def run(ctx):\n"
        "    libc.syscall(435, None, 0)\n"
        "    err = ctypes.get_errno()\n"
        "    t = threading.Thread(target=print, args=('thread',))\n"
        "    t.start(); t.join()\n"
        "    subprocess.run([sys.executable, '-c', 'print(1)'], check=True)\n"
        "    return [err / 100] * ctx.n_eval\n"
    )
    result = run_untrusted(src, ctx)
    assert result.ok, (result.error, result.stderr[-2000:])
    assert result.predictions is not None and round(float(result.predictions[0]) * 100) == 38  # ENOSYS


def test_limits_of_a_normal_run_are_reported(ctx: MethodContext, tmp_path: Path) -> None:
    src = "from trainer.methods import run_method\ndef run(ctx):\n    return run_method('naive_soft', ctx)\n"
    result = run_untrusted(src, ctx, limits=limits(threads=2))
    assert result.ok and not result.violations, (result.error, result.violations)
    assert result.limits_mode == ("cgroup" if cgroup_problem() is None else "rlimit")
    assert result.peak_tasks >= 2 and result.peak_memory_bytes > 10 << 20 and result.cpu_s > 0
    assert result.method_s is not None and 0 <= result.method_s < result.runtime_s


# ------------------------------------------------------------------ what the trainer service makes of it


def _job(src: str, job_limits: SandboxLimits) -> JobOutcome:
    from schemas.experiment import ExperimentRequested
    from services.trainer.jobs import Inputs, run_job

    ctx = synthetic_context(n_train=60, n_eval=20)[0]
    req = ExperimentRequested(
        experiment_id="exp-limits",
        dataset="rotten_tomatoes",
        weak_model="minilm",
        strong_model="minilm",
        seeds=[0],
        method_artifact="0" * 64,
    )
    inputs = Inputs(ctx.train_features, ctx.eval_features, list(ctx.train_texts), list(ctx.eval_texts))
    return run_job(req, inputs, {0: ctx.weak_soft_labels}, method_source=src, limits=job_limits)


@x86_64
def test_a_denied_syscall_is_a_sandbox_violation_with_kernel_evidence() -> None:
    from services.trainer.jobs import JobFailed

    with pytest.raises(JobFailed) as failed:
        _job(SILENCE + "def run(ctx):\n    libc.socket(2, 1, 0)\n    return [0.5] * ctx.n_eval\n", SandboxLimits())
    assert failed.value.error_class == "SandboxViolation"
    assert all(set(v) == {"kind", "detail", "source", "blocking"} for v in failed.value.violations)
    assert any(v["kind"] == "syscall" and v["source"] == "kernel" and v["blocking"] for v in failed.value.violations)


def test_a_resource_limit_fails_the_job_with_its_violations_not_blocking() -> None:
    from services.trainer.jobs import JobFailed

    src = "import time\ndef run(ctx):\n    [open(f'f{i}', 'w').close() for i in range(1000)]\n    time.sleep(2)\n"
    with pytest.raises(JobFailed) as failed:
        _job(src, limits(files=100, wall_s=30))
    assert failed.value.error_class == "ResourceLimit"
    assert failed.value.violations and not any(v["blocking"] for v in failed.value.violations)
    assert failed.value.violations[0]["kind"] == "disk" and failed.value.violations[0]["source"] == "monitor"


def test_kernel_records_are_parsed_and_inside_reports_cannot_claim_kernel_kinds() -> None:
    from trainer.sandbox_kmsg import parse_record
    from trainer.sandbox_violations import parse_inside_reports

    line = (
        '5,345,2028590087,-;audit: type=1326 audit(1796186618.020:3): auid=0 uid=0 gid=0 ses=7 pid=11572 '
        'comm="python" exe="/usr/bin/python3.11" sig=31 arch=c000003e syscall=41 compat=0 ip=0x7f code=0x80000000'
    )
    rec = parse_record(line)
    assert rec is not None and (rec.pid, rec.session, rec.syscall, rec.signal, rec.comm) == (11572, 7, 41, 31, "python")
    assert parse_record("6,1,2,-;audit: type=1400 apparmor=ALLOWED") is None
    forged = parse_inside_reports(b'{"kind": "syscall", "detail": "socket"}\n{"kind": "network", "detail": "x"}\n')
    assert [(v.kind.value, v.source) for v in forged] == [("process", "inside"), ("network", "inside")]
