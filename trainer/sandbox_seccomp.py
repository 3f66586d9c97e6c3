"""The sandbox's seccomp filter: built with libseccomp (``pyseccomp``), handed to bwrap as BPF.

Default action: allow. ``SECCOMP_RET_KILL_PROCESS`` for the syscalls below, which a method
(numpy, torch, threads, subprocess, multiprocessing) has no use for; a kill is what makes
an attempt visible from outside: the kernel logs an audit record (``type=1326``, with the
syscall number and the audit session of the sandbox) and the process dies of ``SIGSYS``
(bwrap then exits with 128 + 31). ``clone3`` returns ``ENOSYS`` instead (its flags live in
memory, where seccomp cannot read them); glibc then falls back to ``clone``, whose flags
are checked.

- ``socket``/``socketpair`` with any family but ``AF_UNIX``: the network (there is none,
  but an attempt is now reported by the kernel, not by code the method can silence);
- ``io_uring_*``: a large attack surface whose operations (e.g. ``IORING_OP_SOCKET``)
  bypass seccomp altogether;
- ``keyctl``, ``add_key``, ``request_key``: kernel keyrings (shared, persistent state);
- ``ptrace``, ``process_vm_readv/writev``, ``pidfd_getfd``, ``kcmp``, ``process_madvise``:
  reading or steering other processes;
- ``mount``, ``umount2``, ``pivot_root``, ``chroot`` and the new mount API (``fsopen``,
  ``fsconfig``, ``fsmount``, ``fspick``, ``move_mount``, ``open_tree``, ``open_tree_attr``,
  ``mount_setattr``): rearranging the filesystem the sandbox is made of;
- ``unshare``, ``setns`` and ``clone`` with any ``CLONE_NEW*`` flag: new namespaces (a
  new user namespace gives every capability inside it; bwrap's ``--disable-userns``
  forbids that too);
- ``bpf``, ``perf_event_open``, ``userfaultfd``: frequent kernel-exploit primitives;
- ``kexec_load``, ``kexec_file_load``, ``init_module``, ``finit_module``,
  ``delete_module``, ``swapon``, ``swapoff``, ``reboot``, ``syslog``, ``acct``,
  ``quotactl``, ``quotactl_fd``: machine administration (already needs capabilities the
  sandbox lacks; denied so that trying is reported);
- ``open_by_handle_at``, ``name_to_handle_at``: opening files by handle, around the
  mount tree (the classic container escape).

Only the x86_64 ABI is allowed: a syscall from another ABI (``int 0x80``, i386) is a bad
architecture and kills the process; the x32 numbers of the syscalls above are denied too
(x32 shares x86_64's audit architecture). Syscalls newer than the installed libseccomp
are added by their x86_64 number.
"""

from __future__ import annotations

import errno
import functools
import os
import tempfile
from types import ModuleType

AF_UNIX = 1
CLONE_NAMESPACE_FLAGS = {
    "CLONE_NEWNS": 0x00020000,
    "CLONE_NEWCGROUP": 0x02000000,
    "CLONE_NEWUTS": 0x04000000,
    "CLONE_NEWIPC": 0x08000000,
    "CLONE_NEWUSER": 0x10000000,
    "CLONE_NEWPID": 0x20000000,
    "CLONE_NEWNET": 0x40000000,
}  # CLONE_NEWTIME (0x80) is only valid for unshare/clone3: in clone's flags it is the exit signal

KILLED = (
    "io_uring_setup",
    "io_uring_enter",
    "io_uring_register",
    "keyctl",
    "add_key",
    "request_key",
    "ptrace",
    "process_vm_readv",
    "process_vm_writev",
    "pidfd_getfd",
    "kcmp",
    "process_madvise",
    "mount",
    "umount2",
    "pivot_root",
    "chroot",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "move_mount",
    "open_tree",
    "open_tree_attr",
    "mount_setattr",
    "unshare",
    "setns",
    "bpf",
    "perf_event_open",
    "userfaultfd",
    "kexec_load",
    "kexec_file_load",
    "init_module",
    "finit_module",
    "delete_module",
    "swapon",
    "swapoff",
    "reboot",
    "syslog",
    "acct",
    "quotactl",
    "quotactl_fd",
    "open_by_handle_at",
    "name_to_handle_at",
)
SOCKET_CALLS = ("socket", "socketpair")
# Newer than libseccomp 2.5 (Debian 12): x86_64 numbers, used when the name is unknown.
_X86_64_NUMBERS = {"open_tree_attr": 467}
_X32_BIT = 0x40000000


class SeccompUnavailableError(RuntimeError):
    """libseccomp (or its Python binding) is missing: the sandbox cannot filter syscalls."""


def _seccomp() -> ModuleType:
    try:
        import pyseccomp
    except (ImportError, OSError, AttributeError) as exc:
        raise SeccompUnavailableError(
            f"pyseccomp/libseccomp is not usable ({exc}); Debian/Ubuntu: apt-get install libseccomp2"
        ) from None
    return pyseccomp


def _number(sc: ModuleType, name: str) -> int | None:
    try:
        return int(sc.resolve_syscall(sc.Arch.NATIVE, name))
    except ValueError:
        pass
    if sc.system_arch() == sc.Arch.X86_64:
        return _X86_64_NUMBERS.get(name)
    return None


def _x32_number(sc: ModuleType, name: str) -> int | None:
    if sc.system_arch() != sc.Arch.X86_64:
        return None
    try:
        nr = int(sc.resolve_syscall(sc.Arch.X32, name))
    except ValueError:
        nr = -1
    if nr < 0 and name in _X86_64_NUMBERS:
        nr = _X86_64_NUMBERS[name] | _X32_BIT
    return nr if nr >= _X32_BIT else None


@functools.lru_cache(maxsize=1)
def filter_bpf() -> bytes:
    """The filter as a BPF program, the format ``bwrap --seccomp FD`` reads (built once)."""
    sc = _seccomp()
    flt = sc.SyscallFilter(sc.ALLOW)
    flt.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)

    def deny(name: str, action: int, *args: object) -> None:  # args: pyseccomp Arg conditions
        for nr in (_number(sc, name), _x32_number(sc, name)):
            if nr is not None and nr >= 0:
                flt.add_rule(action, nr, *args)

    for name in KILLED:
        deny(name, sc.KILL_PROCESS)
    for name in SOCKET_CALLS:
        deny(name, sc.KILL_PROCESS, sc.Arg(0, sc.NE, AF_UNIX))
    for flag in CLONE_NAMESPACE_FLAGS.values():
        deny("clone", sc.KILL_PROCESS, sc.Arg(0, sc.MASKED_EQ, flag, flag))
    deny("clone3", sc.ERRNO(errno.ENOSYS))
    with tempfile.TemporaryFile() as out:
        flt.export_bpf(out)
        out.seek(0)
        return out.read()


def filter_fd() -> int:
    """A fresh memfd holding :func:`filter_bpf`, positioned at 0 (the caller closes it)."""
    data = filter_bpf()
    fd = os.memfd_create("aar-seccomp", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def syscall_name(number: int) -> str:
    """``socket`` for 41 on x86_64; ``syscall 467`` where libseccomp does not know the number."""
    try:
        sc = _seccomp()
        name = sc.resolve_syscall(sc.Arch.NATIVE, number)
        return name.decode() if isinstance(name, bytes) else str(name)
    except (SeccompUnavailableError, ValueError, OSError):
        pass
    for name, nr in _X86_64_NUMBERS.items():
        if nr == number:
            return name
    return f"syscall {number}"
