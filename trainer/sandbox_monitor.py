"""The trainer's view of a running sandbox, from outside: its process tree and its RAM disks.

:class:`TreeMonitor` samples (every 50 ms) the processes under the ``bwrap`` process,
from ``/proc``:

- tasks: the sum of ``Threads`` (processes and threads, as ``pids.max`` counts them);
- memory: peak ``VmHWM`` and summed ``VmRSS`` (the RSS the result reports), and an
  estimate of the sandbox's memory for the fallback limit: summed ``RssAnon`` plus what
  the job's tmpfs mounts hold;
- CPU time: each live process's own time plus what it collected from children it
  reaped; a process that vanished between samples counts with its last-seen time unless
  its nearest live ancestor's collected time grew by as much (reaped normally), so
  ignoring ``SIGCHLD`` does not hide children's CPU. Still an estimate: a process born
  and gone within one sample whose parent does not reap it is missed (the cgroup's
  ``cpuacct.usage`` is exact);
- the job's tmpfs mounts through ``/proc/<pid>/root/<mount>``: bytes and files in use,
  and whether one is full (``statvfs``; a mount is only trusted when its size is the one
  the sandbox gave it).

Every pid seen is kept, to match kernel records (seccomp kills) to the job.
:func:`limit_violations` turns samples and cgroup counters into violations.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass

from trainer.sandbox_cgroups import CgroupCounters
from trainer.sandbox_violations import Violation, ViolationKind, kernel, monitor

_TICK = float(os.sysconf("SC_CLK_TCK"))
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class Tmpfs:
    path: str  # inside the sandbox, e.g. /job/work
    size_bytes: int


@dataclass(slots=True)
class _Proc:
    ppid: int
    own_s: float
    reaped_s: float
    threads: int


def _read_stat(pid: int) -> _Proc | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    rest = raw[raw.rfind(b")") + 2 :].split()
    try:
        return _Proc(
            ppid=int(rest[1]),
            own_s=(int(rest[11]) + int(rest[12])) / _TICK,
            reaped_s=(int(rest[13]) + int(rest[14])) / _TICK,
            threads=int(rest[17]),
        )
    except (IndexError, ValueError):
        return None


def _read_status(pid: int) -> dict[str, int]:
    found: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmHWM", "VmRSS", "RssAnon"):
                    found[key] = int(value.split()[0]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return found


class TreeMonitor:
    """Samples the process tree under ``root`` (the bwrap process) and the job's tmpfs mounts."""

    def __init__(self, root: int, mounts: Iterable[Tmpfs] = ()) -> None:
        self.root = root
        self.mounts = tuple(mounts)
        self.seen: set[int] = set()
        self.peak_rss = 0
        self.peak_tasks = 0
        self.peak_memory = 0  # RssAnon + tmpfs, the fallback's memory measure
        self.peak_disk = 0
        self.tasks = 0
        self.memory = 0
        self.disk_bytes = 0
        self.files = 0
        self.full: set[str] = set()
        self._procs: dict[int, _Proc] = {}
        self._lost_s = 0.0
        self._cpu_s = 0.0

    @property
    def cpu_s(self) -> float:
        return self._cpu_s

    def sample(self) -> None:
        tree = self._tree()
        if not tree:
            return
        self._account_cpu(tree)
        self.seen.update(tree)
        rss = anon = 0
        for pid in tree:
            status = _read_status(pid)
            rss += status.get("VmRSS", 0)
            anon += status.get("RssAnon", 0)
            self.peak_rss = max(self.peak_rss, status.get("VmHWM", 0))
        self.peak_rss = max(self.peak_rss, rss)
        self.tasks = sum(p.threads for p in tree.values())
        self.peak_tasks = max(self.peak_tasks, self.tasks)
        self._sample_mounts(tree)
        self.memory = anon + self.disk_bytes
        self.peak_memory = max(self.peak_memory, self.memory)

    def _tree(self) -> dict[int, _Proc]:
        procs: dict[int, _Proc] = {}
        try:
            names = os.listdir("/proc")
        except OSError:
            return procs
        for name in names:
            if name.isdigit():
                info = _read_stat(int(name))
                if info is not None:
                    procs[int(name)] = info
        if self.root not in procs:
            return {}
        children: dict[int, list[int]] = {}
        for pid, info in procs.items():
            children.setdefault(info.ppid, []).append(pid)
        tree: dict[int, _Proc] = {}
        stack = [self.root]
        while stack:
            pid = stack.pop()
            if pid in tree:
                continue
            tree[pid] = procs[pid]
            stack += children.get(pid, [])
        return tree

    def _account_cpu(self, tree: dict[int, _Proc]) -> None:
        previous, self._procs = self._procs, tree
        gone = {pid: p for pid, p in previous.items() if pid not in tree}
        owed: dict[int, float] = {}  # live ancestor -> CPU of its vanished descendants
        for proc in gone.values():
            ancestor = proc.ppid
            while ancestor in gone:
                ancestor = gone[ancestor].ppid
            if ancestor in tree and ancestor in previous:
                owed[ancestor] = owed.get(ancestor, 0.0) + proc.own_s + proc.reaped_s
            else:
                self._lost_s += proc.own_s + proc.reaped_s
        for ancestor, seconds in owed.items():
            grown = tree[ancestor].reaped_s - previous[ancestor].reaped_s
            self._lost_s += max(0.0, seconds - max(0.0, grown))
        live = sum(p.own_s + p.reaped_s for p in tree.values())
        self._cpu_s = max(self._cpu_s, live + self._lost_s)

    def _sample_mounts(self, tree: dict[int, _Proc]) -> None:
        if not self.mounts:
            return
        for pid in sorted(tree, reverse=True):  # the newest processes are inside the sandbox
            stats = [_statvfs(pid, m) for m in self.mounts]
            if all(s is not None for s in stats):
                break
        else:
            return
        used = files = 0
        for mount, st in zip(self.mounts, stats, strict=True):  # one stat per mount
            assert st is not None
            used += (st.f_blocks - st.f_bfree) * st.f_frsize
            files += st.f_files - st.f_ffree
            if st.f_bavail == 0 or (st.f_files and st.f_favail == 0):
                self.full.add(mount.path)
        self.disk_bytes, self.files = used, files
        self.peak_disk = max(self.peak_disk, used)


def _statvfs(pid: int, mount: Tmpfs) -> os.statvfs_result | None:
    try:
        st = os.statvfs(f"/proc/{pid}/root{mount.path}")
    except OSError:
        return None
    size = st.f_blocks * st.f_frsize
    expected = -(-mount.size_bytes // _PAGE) * _PAGE
    return st if abs(size - expected) <= _PAGE else None  # not our tmpfs (yet): bwrap still setting up


def limit_violations(
    mon: TreeMonitor,
    counters: CgroupCounters | None,
    *,
    memory_bytes: int,
    tasks: int,
    cpu_s: float,
    files: int,
) -> list[Violation]:
    """The limits crossed so far: from the cgroup's counters (kernel) or the monitor's samples."""
    found: list[Violation] = []
    if counters is not None:
        if counters.oom_kills:
            found.append(
                kernel(
                    ViolationKind.MEMORY,
                    f"the kernel's OOM killer ended {counters.oom_kills} process(es) at the sandbox's memory "
                    f"limit of {memory_bytes >> 20} MiB (page cache and tmpfs included)",
                )
            )
        if counters.pids_max_events:
            found.append(
                kernel(
                    ViolationKind.PROCESSES,
                    f"{counters.pids_max_events} fork(s) refused at the sandbox's limit of {tasks} tasks",
                )
            )
        if counters.cpu_s >= cpu_s:
            found.append(
                kernel(ViolationKind.CPU, f"the sandbox used {counters.cpu_s:.1f} s of CPU, its budget is {cpu_s:g} s")
            )
    else:
        if mon.memory > memory_bytes:
            found.append(
                monitor(
                    ViolationKind.MEMORY,
                    f"the sandbox held {mon.memory >> 20} MiB (anonymous memory and tmpfs), "
                    f"its limit is {memory_bytes >> 20} MiB",
                )
            )
        if mon.tasks > tasks:
            found.append(monitor(ViolationKind.PROCESSES, f"the sandbox ran {mon.tasks} tasks, its limit is {tasks}"))
        if mon.cpu_s >= cpu_s:
            found.append(
                monitor(ViolationKind.CPU, f"the sandbox used about {mon.cpu_s:.1f} s of CPU, its budget is {cpu_s:g} s")
            )
    for path in sorted(mon.full):
        found.append(kernel(ViolationKind.DISK, f"the job's tmpfs {path} is full"))
    if mon.files > files:
        found.append(
            monitor(ViolationKind.DISK, f"the job's tmpfs mounts hold {mon.files} files, the limit is {files}")
        )
    return found
