"""Child side of :mod:`trainer.sandbox`: ``python -m trainer.sandbox_runner JOB_ROOT``.

Runs inside the sandbox. Reads ``JOB_ROOT/input`` (method.py, ctx.json, .npy features
and weak labels, texts), imports the method once, calls ``run(ctx)`` for each seed of
the job (``ctx.json``'s ``seeds``, weak labels ``[seeds, n_train]``; torch and numpy
reseeded before each call) and sends the result on the file descriptor named by
``AAR_RESULT_FD`` (a pipe the trainer reads, size-capped): one JSON header line
(``{"method_seconds": ..., "predictions_bytes": N}``) and then N bytes of ``.npy``
(float64 probabilities, ``[n_eval]`` for one seed, ``[seeds, n_eval]`` for several). Nothing the trainer needs is left in the job
folder, whose writable part is a tmpfs that vanishes with the sandbox. Exit codes: 0
done, 2 bad job, 3 the method failed, 4 the result could not be sent.

First it lowers ``RLIMIT_NPROC`` to ``AAR_MAX_TASKS``: set here, inside the sandbox's own
user namespace, the limit counts only the sandbox's tasks (set on bwrap, it would count
every process of the trainer's uid); the kernel does not apply it to tasks whose host
uid is 0, so a root trainer relies on the pids cgroup or on its monitor.

Before the method is imported it installs detectors (not the enforcement: that is the
sandbox's job, and these reports are advisory, since the method can silence them): a
``sys.addaudithook`` hook that reports socket use, file access outside the job and the
interpreter, and reads of ``/proc/*/environ``; and a wrapper around ``os.environ`` that
reports lookups of secret-looking names. Reports are JSON lines on the file descriptor
named by ``AAR_AUDIT_FD`` (a pipe the parent reads), so the method can add lines but
never take back one already sent. This module imports only numpy, torch and
``trainer.methods`` (never ``aar``), so the sandbox needs nothing else.
"""

from __future__ import annotations

import io
import json
import os
import re
import resource
import socket
import sys
import time
from pathlib import Path

SECRET_NAME = re.compile(r"API_?KEY|TOKEN|SECRET|PASSW|CREDENTIAL|PRIVATE|ANTHROPIC|OPENAI|AWS_|NATS_", re.IGNORECASE)
_NET_EVENTS = {
    "socket.connect",
    "socket.bind",
    "socket.sendto",
    "socket.sendmsg",
    "socket.getaddrinfo",
    "socket.gethostbyname",
    "socket.gethostbyaddr",
    "socket.getnameinfo",
}
_INET = {int(socket.AF_INET), int(socket.AF_INET6)}
_SYSTEM_READ = (
    "/usr/",
    "/lib/",
    "/lib64/",
    "/lib32/",
    "/bin/",
    "/sbin/",
    "/dev/",
    "/sys/devices/system/cpu/",
    "/sys/fs/cgroup/",
    "/proc/self/",
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/sys/",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/os-release",
)
_ENVIRON = re.compile(r"^/proc/[^/]+/environ$")


class _Reporter:
    def __init__(self, fd: int | None, job_root: str) -> None:
        self.fd = fd
        self.sent: set[tuple[str, str]] = set()
        self.job_root = job_root.rstrip("/") + "/"
        prefixes = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
        package = Path(__file__).resolve().parent  # the trainer package
        self.code_ok = tuple(p.rstrip("/") + "/" for p in prefixes | {str(package)})
        self.import_dirs = {os.path.abspath(p or ".") for p in sys.path}  # the import system lists these
        self.write_ok = (self.job_root + "work/", "/tmp/", "/dev/null", "/dev/shm/")
        # Host paths worth protecting (AAR_HOME, the repository, home folders): any access is
        # reported, even where the sandbox maps the name elsewhere (e.g. a host /tmp path).
        watched = os.environ.get("AAR_WATCH_PATHS", "")
        self.watched = tuple(p.rstrip("/") + "/" for p in watched.split(os.pathsep) if p.startswith("/"))

    def report(self, kind: str, detail: str) -> None:
        key = (kind, detail[:300])
        if self.fd is None or key in self.sent or len(self.sent) > 200:
            return
        self.sent.add(key)
        try:
            os.write(self.fd, (json.dumps({"kind": kind, "detail": key[1]}) + "\n").encode())
        except OSError:
            pass

    def path_event(self, path: object, writing: bool, what: str) -> None:
        if isinstance(path, int) or not isinstance(path, (str, bytes, os.PathLike)):
            return  # a file descriptor, or not a path (os.fsdecode would refuse it)
        try:
            p = os.path.abspath(os.fsdecode(path))
        except (TypeError, ValueError):
            return
        if _ENVIRON.match(p):
            self.report("secret", f"{what} {p}")
            return
        probe = p + "/"
        if writing:
            if not probe.startswith(self.write_ok):
                self.report("filesystem", f"write {p}")
            return
        if probe.startswith(self.code_ok):  # the interpreter, its packages, the trainer package
            return
        if what == "list" and p in self.import_dirs:
            return
        if self.watched and probe.startswith(self.watched):
            self.report("filesystem", f"{what} {p}")
            return
        if not probe.startswith((self.job_root, *_SYSTEM_READ, *self.write_ok)):
            self.report("filesystem", f"{what} {p}")

    def __call__(self, event: str, args: tuple) -> None:
        try:
            if event == "open":
                path, mode = args[0], args[1]
                flags = args[2] if len(args) > 2 else 0
                writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool(
                    isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)
                )
                self.path_event(path, writing, "open")
            elif event in ("os.listdir", "os.scandir"):
                self.path_event(args[0] if args else ".", False, "list")
            elif event == "socket.__new__":
                if len(args) > 1 and int(args[1]) in _INET:
                    self.report("network", f"socket({args[1]!s})")
            elif event in _NET_EVENTS:
                shown = [a for a in args if not isinstance(a, socket.socket)][:2]
                self.report("network", f"{event} {shown!r}"[:300])
            elif event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn"):
                self.report("process", f"{event} {str(args[:2])[:200]}")
        except Exception:  # noqa: BLE001 - a detector must never break the method
            pass


def _guard_environ(reporter: _Reporter) -> None:
    class GuardedEnviron(os._Environ[str]):  # the class of os.environ
        def __getitem__(self, key: str) -> str:
            if isinstance(key, str) and SECRET_NAME.search(key):
                reporter.report("secret", f"environ[{key!r}]")
            return super().__getitem__(key)

    guarded = GuardedEnviron.__new__(GuardedEnviron)
    guarded.__dict__.update(os.environ.__dict__)
    os.environ = guarded  # noqa: B003 (a wrapper with the same contents)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python -m trainer.sandbox_runner JOB_ROOT", file=sys.stderr)
        return 2
    job = Path(argv[1])
    _limit_tasks(os.environ.pop("AAR_MAX_TASKS", ""))
    result_fd = _fd(os.environ.pop("AAR_RESULT_FD", ""))
    if result_fd is not None:
        os.set_inheritable(result_fd, False)  # not passed on to programs the method starts
    fd_text = os.environ.get("AAR_AUDIT_FD")
    reporter = _Reporter(int(fd_text) if fd_text else None, str(job))
    sys.addaudithook(reporter)
    _guard_environ(reporter)

    import importlib.util

    import numpy as np

    from trainer.methods import MethodContext, validate_predictions
    from trainer.methods.workspace import PipeTeacher

    teacher = PipeTeacher.from_env()
    inp = job / "input"
    try:
        meta = json.loads((inp / "ctx.json").read_text())
        if meta.get("workspace"):
            return _workspace(inp, meta, teacher, result_fd)
        seeds = [int(s) for s in (meta.get("seeds") or [meta["seed"]])]
        labels = np.load(inp / "weak_soft_labels.npy", allow_pickle=False)
        per_seed = list(labels) if len(seeds) > 1 else [labels]
        if len(per_seed) != len(seeds):
            raise ValueError(f"{len(seeds)} seeds but weak labels for {len(per_seed)}")
        train_features = np.load(inp / "train_features.npy", allow_pickle=False)
        eval_features = np.load(inp / "eval_features.npy", allow_pickle=False)
        train_texts = json.loads((inp / "train_texts.json").read_text())
        eval_texts = json.loads((inp / "eval_texts.json").read_text())
        ctxs = [
            MethodContext(
                train_features=train_features, weak_soft_labels=weak, eval_features=eval_features,
                train_texts=train_texts, eval_texts=eval_texts, seed=seed, params=dict(meta.get("params") or {}),
                teacher_fn=teacher,
            )
            for seed, weak in zip(seeds, per_seed, strict=True)
        ]
    except Exception as exc:  # noqa: BLE001 - any unreadable job folder is exit status 2
        print(f"aar-sandbox: bad job folder: {exc!r}", file=sys.stderr)
        return 2

    import torch

    from trainer.methods import stored

    stored.ROOT = inp / "stored"
    started = time.monotonic()
    try:
        spec = importlib.util.spec_from_file_location("method", inp / "method.py")
        if spec is None or spec.loader is None:
            raise ImportError("cannot load method.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["method"] = module
        torch.manual_seed(seeds[0])
        np.random.seed(seeds[0] % 2**32)
        spec.loader.exec_module(module)
        run = getattr(module, "run", None)
        if not callable(run):
            raise AttributeError("method.py defines no run(ctx) function")
        outputs = []
        for ctx in ctxs:  # one interpreter and one import for every seed of the job
            torch.manual_seed(ctx.seed)
            np.random.seed(ctx.seed % 2**32)
            outputs.append(validate_predictions(run(ctx), ctx.n_eval))
        predictions = np.stack(outputs) if len(ctxs) > 1 else outputs[0]
    except BaseException:  # noqa: BLE001 - whatever the method raised (SystemExit too) is its failure, status 3
        import traceback

        traceback.print_exc()
        return 3
    buf = io.BytesIO()
    np.save(buf, predictions.astype(np.float64), allow_pickle=False)
    body = buf.getvalue()
    header = {"method_seconds": round(time.monotonic() - started, 3), "predictions_bytes": len(body)}
    try:
        _send(result_fd, (json.dumps(header) + "\n").encode() + body)
    except OSError as exc:
        print(f"aar-sandbox: cannot send the result: {exc!r}", file=sys.stderr)
        return 4
    return 0


def _workspace(inp: Path, meta: dict, teacher: object, result_fd: int | None) -> int:
    """An agent's workspace script: inputs loaded and libraries imported first, then the
    code is read from stdin (a warm sandbox waits there) and run with ``ctx`` in its globals."""
    import numpy as np
    import torch

    import trainer.methods  # noqa: F401 - imported before the code arrives (a warm start)
    from trainer.methods import stored
    from trainer.methods.workspace import WorkspaceContext

    try:
        def arr(name: str) -> np.ndarray:
            return np.load(inp / f"{name}.npy", allow_pickle=False)

        def texts(name: str) -> list[str]:
            return json.loads((inp / f"{name}.json").read_text())

        ctx = WorkspaceContext(
            train_features=arr("train_features"), weak_soft_labels=arr("weak_soft_labels"),
            train_texts=texts("train_texts"), heldback_features=arr("heldback_features"),
            heldback_weak_labels=arr("heldback_weak_labels"), heldback_texts=texts("heldback_texts"),
            dev_features=arr("dev_features"), dev_texts=texts("dev_texts"), seed=int(meta.get("seed", 0)),
            teacher_fn=teacher,
        )
    except Exception as exc:  # noqa: BLE001 - any unreadable job folder is exit status 2
        print(f"aar-sandbox: bad job folder: {exc!r}", file=sys.stderr)
        return 2
    stored.ROOT = inp / "stored"
    _warm_up(ctx)
    ready = _fd(os.environ.pop("AAR_READY_FD", ""))
    if ready is not None:
        try:
            os.write(ready, b"1")
            os.close(ready)
        except OSError:
            pass
    code = sys.stdin.buffer.read().decode("utf-8", "replace")
    started = time.monotonic()
    try:
        torch.manual_seed(ctx.seed)
        np.random.seed(ctx.seed % 2**32)
        scope: dict = {"__name__": "__workspace__", "ctx": ctx}
        exec(compile(code, "workspace.py", "exec"), scope)
        value = scope.get("result")
        if value is None and callable(scope.get("main")):
            value = scope["main"](ctx)
        body = json.dumps(value, default=_jsonable, allow_nan=False).encode()
    except BaseException:  # noqa: BLE001 - whatever the code raised is its failure, status 3
        import traceback

        traceback.print_exc()
        return 3
    header = {"method_seconds": round(time.monotonic() - started, 3), "value_bytes": len(body)}
    try:
        _send(result_fd, (json.dumps(header) + "\n").encode() + body)
    except OSError as exc:
        print(f"aar-sandbox: cannot send the result: {exc!r}", file=sys.stderr)
        return 4
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the result is sent: skip the interpreter's teardown (torch's takes a while)


def _warm_up(ctx: object) -> None:
    """Train a tiny head once, before the code arrives: torch's first optimizer step costs
    about a second of lazy set-up that would otherwise fall on the run."""
    import numpy as np

    from trainer.methods import train_head

    x = np.zeros((8, ctx.train_features.shape[1]), dtype=np.float32)  # type: ignore[attr-defined]
    try:
        train_head(x, np.full(8, 0.5), epochs=1)
    except Exception:  # noqa: BLE001 - a warm-up only
        pass


def _jsonable(value: object) -> object:
    """numpy numbers and arrays as JSON; anything else is an error the code sees."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"the result must be JSON: {type(value).__name__} is not")


def _limit_tasks(text: str) -> None:
    if text.isdigit() and int(text) > 0:
        try:
            resource.setrlimit(resource.RLIMIT_NPROC, (int(text), int(text)))
        except (ValueError, OSError):
            pass


def _fd(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _send(fd: int | None, data: bytes) -> None:
    if fd is None:
        raise OSError("AAR_RESULT_FD is not set")
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.close(fd)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
