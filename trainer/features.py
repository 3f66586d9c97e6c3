"""Frozen backbone features, computed once and cached by content.

A feature matrix is ``float32[n, hidden]``: the backbone's last hidden state pooled over
each text's tokens. It is stored as ``AAR_HOME/cache/features/<key>.npy`` with a
``<key>.json`` sidecar (what it is, for people), where::

    key = sha256(FEATURES_VERSION, weights_id(backbone), split.fingerprint, pooling, max_length)

(``max_length``: the backbone's token limit, or the dataset's ``max_tokens`` when lower.)

so a new split, other weights (pinned by sha256) or another pooling never reuse a stale
file. Files are written atomically (temp file + rename): concurrent writers of the same key
both produce the same bytes and the last rename wins.

Speed: texts are sorted by token length and batched (little padding), run under
``torch.inference_mode()`` with ``torch.set_num_threads(<usable cores>)``. On 2 CPU cores
MiniLM embeds a few hundred short sentences per second, mpnet ~15/s on long ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from core.paths import AarHome
from trainer import models
from trainer._util import load_npy, save_npy_atomic, sha256_text, usable_cpus, write_text_atomic
from trainer.data import DATASETS, Split
from trainer.errors import UnknownNameError

FEATURES_VERSION = "aar-features-v1"
Pooling = Literal["mean", "mean_l2", "cls", "last"]
POOLINGS: tuple[str, ...] = ("mean", "mean_l2", "cls", "last")
DEFAULT_POOLING: Pooling = "mean"

_loaded: dict[tuple[str, str, str], tuple[Any, Any]] = {}


def _check_pooling(pooling: str) -> None:
    if pooling not in POOLINGS:
        raise UnknownNameError("pooling", pooling, POOLINGS)


def cache_key(weights_id: str, content_fingerprint: str, pooling: str, max_length: int) -> str:
    return sha256_text(FEATURES_VERSION, weights_id, content_fingerprint, pooling, str(max_length))


def token_limit(backbone: str, dataset: str | None, path: Path | None) -> int:
    """Tokens per text: the backbone's limit, capped by the dataset's ``max_tokens`` (if any)."""
    length = models.max_length(backbone, path)
    cap = None
    if dataset is not None and dataset in DATASETS:
        cap = DATASETS[dataset].max_tokens
    return min(length, cap) if cap else length


def features_path(backbone: str, split: Split, pooling: str = DEFAULT_POOLING, home: AarHome | None = None) -> Path:
    """Where the features of ``split`` under ``backbone`` live (or will live)."""
    _check_pooling(pooling)
    home = home or AarHome.from_env()
    length = token_limit(backbone, split.dataset, models.model_path(backbone, home, fetch_missing=False))
    key = cache_key(models.weights_id(backbone, home), split.fingerprint, pooling, length)
    return home.features / f"{key}.npy"


def split_features(
    backbone: str,
    split: Split,
    *,
    pooling: str = DEFAULT_POOLING,
    home: AarHome | None = None,
    progress: bool = True,
    batch_size: int = 32,
    device: str | None = None,
    fetch_missing: bool = True,
) -> np.ndarray:
    """Features of every text in ``split`` (row ``i`` is ``split.texts[i]``), from the cache if present."""
    _check_pooling(pooling)
    home = home or AarHome.from_env()
    path = models.model_path(backbone, home, fetch_missing=fetch_missing, progress=progress)
    length = token_limit(backbone, split.dataset, path)
    key = cache_key(models.weights_id(backbone, home), split.fingerprint, pooling, length)
    dest = home.features / f"{key}.npy"
    if dest.is_file():
        cached = load_npy(dest)
        if cached.shape[0] == len(split) and cached.dtype == np.float32:
            return cached
    started = time.monotonic()
    feats = embed_texts(
        backbone,
        split.texts,
        pooling=pooling,
        batch_size=batch_size,
        device=device,
        progress=progress,
        home=home,
        desc=f"{backbone} {split.dataset}/{split.name}",
        max_length=length,
    )
    save_npy_atomic(dest, feats)
    meta = {
        "version": FEATURES_VERSION,
        "backbone": backbone,
        "weights_id": models.weights_id(backbone, home),
        "dataset": split.dataset,
        "split": split.name,
        "split_fingerprint": split.fingerprint,
        "pooling": pooling,
        "max_length": length,
        "shape": list(feats.shape),
        "dtype": "float32",
        "seconds": round(time.monotonic() - started, 2),
    }
    write_text_atomic(dest.with_suffix(".json"), json.dumps(meta, indent=1))
    return feats


def _model(backbone: str, device: str, home: AarHome) -> tuple[Any, Any]:
    key = (backbone, device, str(home.root))
    if key not in _loaded:
        _loaded[key] = models.load(backbone, device=device, home=home)
    return _loaded[key]


def embed_texts(
    backbone: str,
    texts: Sequence[str],
    *,
    pooling: str = DEFAULT_POOLING,
    batch_size: int = 32,
    device: str | None = None,
    progress: bool = True,
    home: AarHome | None = None,
    threads: int | None = None,
    desc: str = "embed",
    max_length: int | None = None,
) -> np.ndarray:
    """Pooled last hidden states of ``texts`` (no cache), float32[n, hidden]; each text
    truncated to ``max_length`` tokens (default: the backbone's limit)."""
    import torch
    from tqdm.auto import tqdm

    _check_pooling(pooling)
    home = home or AarHome.from_env()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        torch.set_num_threads(threads or usable_cpus())
    tokenizer, model = _model(backbone, device, home)
    length = max_length or models.max_length(backbone, models.model_path(backbone, home, fetch_missing=False))
    if tokenizer.pad_token is None:  # decoder tokenizers (Qwen) may lack one
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"

    lengths = [len(ids) for ids in tokenizer(list(texts), truncation=True, max_length=length)["input_ids"]]
    order = np.argsort(-np.asarray(lengths), kind="stable")  # longest first: peak memory up front
    out: np.ndarray | None = None
    with (
        torch.inference_mode(),
        tqdm(total=len(texts), desc=desc, unit="text", disable=not progress, leave=False) as bar,
    ):
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            batch = tokenizer(
                [texts[i] for i in rows], padding=True, truncation=True, max_length=length, return_tensors="pt"
            )
            batch = {k: v.to(device) for k, v in batch.items()}
            hidden = model(**batch).last_hidden_state
            pooled = pool(hidden, batch["attention_mask"], pooling).float().cpu().numpy()
            if out is None:
                out = np.empty((len(texts), pooled.shape[1]), dtype=np.float32)
            out[rows] = pooled
            bar.update(len(rows))
    if out is None:
        return np.empty((0, model.config.hidden_size), dtype=np.float32)
    return out


def pool(hidden: Any, mask: Any, pooling: str) -> Any:
    """Pool ``hidden[batch, tokens, dim]`` over the tokens where ``mask`` is 1 (right padding)."""
    import torch

    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "last":
        last = mask.sum(dim=1) - 1
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)
    if pooling == "mean_l2":
        mean = torch.nn.functional.normalize(mean, dim=-1)
    return mean
