"""One fresh set of cgroup v1 groups per sandboxed job: whole-sandbox limits the kernel enforces.

Under each of the ``memory``, ``pids``, ``cpu`` and ``cpuacct`` hierarchies (found in
``/proc/self/mountinfo``; co-mounted ones share a folder) the job gets
``<our own cgroup>/aar-<trainer pid>-<token>``, nested under the trainer's own group so
the host's limits on the trainer still hold:

- ``memory.limit_in_bytes`` (and ``memory.memsw.limit_in_bytes`` where swap is accounted):
  all memory of the sandbox, page cache and tmpfs pages (the job's RAM disks) included;
  at the limit the kernel's OOM killer kills inside the group (``oom_kill`` in
  ``memory.oom_control``);
- ``pids.max``: tasks (processes and threads); a fork over it fails with ``EAGAIN`` and
  counts in ``pids.events`` (``max``);
- ``cpu.cfs_quota_us``: ``threads`` cores of bandwidth;
- ``cpuacct.usage``: the CPU time of every task that ever ran in the group, which the
  trainer polls to end the job at its CPU budget.

The process that execs ``bwrap`` joins the groups between fork and exec (:meth:`JobCgroups.join`
writes to ``cgroup.procs`` descriptors opened beforehand), so every sandbox process is in
them from its first instruction. :meth:`JobCgroups.close` kills what is left and removes
the groups; groups left by a trainer that died are removed when the next job starts.

Only cgroup v1 (the hybrid layout) is handled; where a controller is missing or its
folder is not writable (no root, a read-only cgroupfs in a container, a pure v2 host),
:func:`cgroup_problem` says why and the sandbox uses rlimits and its monitor instead.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
_PREFIX = "aar-"
_PERIOD_US = 100_000


def _v1_mounts() -> dict[str, Path]:
    """Controller -> mount point of its v1 hierarchy."""
    found: dict[str, Path] = {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        left, _, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if len(fields) < 5 or len(tail) < 3 or tail[0] != "cgroup":
            continue
        for option in tail[2].split(","):
            if option in CONTROLLERS:
                found.setdefault(option, Path(fields[4]))
    return found


def _own_groups() -> dict[str, str]:
    """Controller -> this process's group path in its v1 hierarchy."""
    found: dict[str, str] = {}
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[1]:
            for name in parts[1].split(","):
                found[name] = parts[2]
    return found


def _parents() -> tuple[dict[str, Path], str | None]:
    mounts, own = _v1_mounts(), _own_groups()
    missing = [c for c in CONTROLLERS if c not in mounts or c not in own]
    if missing:
        return {}, f"no cgroup v1 hierarchy for {', '.join(missing)}"
    return {c: mounts[c] / own[c].lstrip("/") for c in CONTROLLERS}, None


_checked: dict[str, str | None] = {}


def cgroup_problem() -> str | None:
    """None when job cgroups can be made here; otherwise why not (checked once per process)."""
    if "result" not in _checked:
        parents, problem = _parents()
        for controller, parent in parents.items():
            probe = parent / f"{_PREFIX}probe-{os.getpid()}-{secrets.token_hex(3)}"
            try:
                probe.mkdir()
                probe.rmdir()
            except OSError as exc:
                problem = f"cannot create a {controller} cgroup under {parent}: {exc.strerror}"
                break
        _checked["result"] = problem
    return _checked["result"]


@dataclass(frozen=True, slots=True)
class CgroupCounters:
    memory_bytes: int = 0
    memory_peak_bytes: int = 0
    memory_failcnt: int = 0
    oom_kills: int = 0
    tasks: int = 0
    tasks_peak: int = 0
    pids_max_events: int = 0
    cpu_s: float = 0.0

    def as_dict(self) -> dict[str, int | float]:
        return {
            "memory.usage_in_bytes": self.memory_bytes,
            "memory.max_usage_in_bytes": self.memory_peak_bytes,
            "memory.failcnt": self.memory_failcnt,
            "memory.oom_control.oom_kill": self.oom_kills,
            "pids.current": self.tasks,
            "pids.peak": self.tasks_peak,
            "pids.events.max": self.pids_max_events,
            "cpuacct.usage_s": round(self.cpu_s, 3),
        }


class JobCgroups:
    """The groups of one job. Create with :meth:`create`; always :meth:`close`."""

    __slots__ = ("_join_fds", "_tasks_peak", "dirs")

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs
        self._tasks_peak = 0
        unique = sorted({str(d) for d in dirs.values()})
        self._join_fds = [os.open(f"{d}/cgroup.procs", os.O_WRONLY | os.O_CLOEXEC) for d in unique]

    @classmethod
    def create(cls, *, memory_bytes: int, tasks: int, cores: int) -> JobCgroups:
        parents, problem = _parents()
        if problem:
            raise OSError(problem)
        name = f"{_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        made: dict[str, Path] = {}
        try:
            for controller, parent in parents.items():
                _remove_stale(parent)
                path = parent / name
                if not path.exists():  # co-mounted controllers share one folder
                    path.mkdir()
                made[controller] = path
            memory = made["memory"]
            _write(memory / "memory.limit_in_bytes", memory_bytes)
            if (memory / "memory.memsw.limit_in_bytes").exists():
                _write(memory / "memory.memsw.limit_in_bytes", memory_bytes)
            _write(made["pids"] / "pids.max", max(1, tasks))
            _write(made["cpu"] / "cpu.cfs_period_us", _PERIOD_US)
            _write(made["cpu"] / "cpu.cfs_quota_us", max(1, cores) * _PERIOD_US)
            return cls(made)
        except BaseException:
            for made_path in {str(p) for p in made.values()}:
                _rmdir(Path(made_path))
            raise

    def join(self) -> None:
        """Move the calling process into the groups. Runs in the child between fork and exec:
        nothing here but ``os.write`` on descriptors opened by the parent."""
        for fd in self._join_fds:
            os.write(fd, b"0")

    def counters(self) -> CgroupCounters:
        mem, pids = self.dirs["memory"], self.dirs["pids"]
        tasks = _read_int(pids / "pids.current")
        self._tasks_peak = max(self._tasks_peak, tasks, _read_int(pids / "pids.peak"))
        return CgroupCounters(
            memory_bytes=_read_int(mem / "memory.usage_in_bytes"),
            memory_peak_bytes=_read_int(mem / "memory.max_usage_in_bytes"),
            memory_failcnt=_read_int(mem / "memory.failcnt"),
            oom_kills=_read_keyed(mem / "memory.oom_control").get("oom_kill", 0),
            tasks=tasks,
            tasks_peak=self._tasks_peak,
            pids_max_events=_read_keyed(pids / "pids.events").get("max", 0),
            cpu_s=_read_int(self.dirs["cpuacct"] / "cpuacct.usage") / 1e9,
        )

    def pids(self) -> list[int]:
        try:
            return [int(x) for x in (self.dirs["pids"] / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def kill_all(self, timeout_s: float = 5.0) -> bool:
        """SIGKILL every process in the groups until none is left; True when empty."""
        return _kill_members(self.dirs["pids"], timeout_s)

    def close(self) -> None:
        self.kill_all()
        for fd in self._join_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self._join_fds = []
        for path in sorted({str(p) for p in self.dirs.values()}):
            _rmdir(Path(path))


def _kill_members(group: Path, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    pause = 0.001
    while True:
        try:
            members = [int(x) for x in (group / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return True
        if not members:
            return True
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            return False
        time.sleep(pause)  # exiting takes a moment: poll fast, then back off
        pause = min(pause * 2, 0.05)


def _remove_stale(parent: Path) -> None:
    """Remove groups left by trainers that are gone (their pid is in the name)."""
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        name = entry.name
        if not name.startswith(_PREFIX) or not entry.is_dir():
            continue
        owner = name[len(_PREFIX) :].split("-", 1)[0]
        if owner.isdigit() and not _alive(int(owner)):
            _kill_members(entry, 1.0)
            _rmdir(entry, attempts=1)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _rmdir(path: Path, attempts: int = 40) -> None:
    pause = 0.001
    for _ in range(attempts):
        try:
            path.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(pause)  # tasks still exiting
            pause = min(pause * 2, 0.05)


def _write(path: Path, value: int) -> None:
    with open(path, "w") as f:
        f.write(str(value))


def _read_int(path: Path) -> int:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def _read_keyed(path: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                found[key] = int(value)
    except OSError:
        pass
    return found
