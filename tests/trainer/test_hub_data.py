"""The hub datasets of the W2S literature: row formats and the loader, offline with a
stand-in ``datasets`` module; the real download only where the hub is reachable."""

from __future__ import annotations

import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest

from trainer import data
from trainer.data import SplitSizes, get_dataset


@pytest.fixture(autouse=True)
def fresh_pools() -> Iterator[None]:
    """Pools are cached per process: keep stand-in rows out of other tests."""
    data.load_pool.cache_clear()
    yield
    data.load_pool.cache_clear()


def test_rows_become_text_and_label() -> None:
    sciq = {"question": "What do plants absorb?", "correct_answer": "light", "distractor1": "sand",
            "distractor2": "iron", "distractor3": "salt"}
    text, label = data._sciq_row(sciq)
    assert text.startswith("Q: What do plants absorb? A: ")
    assert text.endswith("light") == (label == 1) and label in (0, 1)
    assert data._sciq_row(sciq) == (text, label)  # stable
    assert data._boolq_row({"passage": "P", "question": "q?", "answer": True}) == ("Passage: P\nQuestion: q?", 1)
    assert data._amazon_row({"title": "Great", "content": "works", "label": 1}) == ("Great works", 1)
    hh = {"chosen": "Human: hi Assistant: hello", "rejected": "Human: hi Assistant: go away"}
    text, label = data._hh_row(hh)
    assert text == (hh["chosen"] if label else hh["rejected"])


def test_the_loader_reads_each_split_through_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str | None, str]] = []

    def load_dataset(repo: str, config: str | None, split: str) -> list[dict[str, Any]]:
        calls.append((repo, config, split))
        name = split.split("[")[0]
        return [{"title": f"{name} {i}", "content": "good" if i % 2 else "bad", "label": i % 2} for i in range(300)]

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    ds = get_dataset("amazon_polarity", SplitSizes(A=50, B=50, dev=50, test=50))
    assert calls == [("fancyzhx/amazon_polarity", None, f"train[:{data.HUB_POOL_LIMIT}]")]
    assert {len(s) for s in ds.splits.values()} == {50}
    assert set(ds.dev.labels.tolist()) == {0, 1}


def test_an_unreachable_hub_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    def load_dataset(*args: object, **kw: object) -> None:
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    with pytest.raises(data.UnavailableError, match="needs network access to huggingface.co"):
        get_dataset("boolq")


@pytest.mark.network
def test_sciq_from_the_hub() -> None:
    pytest.importorskip("datasets", reason="the hub datasets need `pip install datasets`")
    ds = get_dataset("sciq", SplitSizes(A=100, B=100, dev=100, test=100))
    assert len(ds.test) == 100 and set(ds.A.labels.tolist()) == {0, 1}
