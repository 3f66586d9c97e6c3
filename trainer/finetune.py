"""GPU regime: fine-tune the whole strong model (or LoRA adapters) on weak soft labels.

The CPU regime trains heads on frozen features; this module trains the backbone itself
with a 2-way classification head, as in Burns et al. (their released code fine-tunes the
full model, Adam, batch 32, lr ~1e-5, cosine schedule, dropout off, 2 epochs for the
student). Importable without a GPU (torch and transformers are imported inside the
functions); it runs on CPU for tiny models (the tests) and is meant for CUDA.

LoRA (``peft``) is used when ``config.lora`` is True, or when it is None and ``peft`` is
installed; ``peft`` is never required. Losses are those of :mod:`trainer.methods.losses`
(soft CE, auxiliary confidence, product), computed once per batch over the concatenated
micro-batch logits, so the aux loss's batch quantile sees the whole batch, as in the paper.

Typical use (the paper pair)::

    probs = finetune("qwen3-4b-base", B.texts, weak_soft_labels, dev.texts, seed=0)
    summary = w2s_finetune_run("sciq", weak="qwen1.5-0.5b-chat", strong="qwen3-4b-base")
"""

from __future__ import annotations

import importlib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from core.paths import AarHome
from trainer import models
from trainer.errors import MissingDependencyError

if TYPE_CHECKING:
    from trainer.methods.losses import LossFn


@dataclass(slots=True)
class FinetuneConfig:
    epochs: int = 2
    lr: float = 1e-5  # the released code uses ~1e-5 for mid-size models; LoRA wants ~1e-4
    batch_size: int = 32  # rows per optimizer step (and per aux-loss quantile)
    micro_batch_size: int = 8  # rows per forward pass (gradient accumulation)
    eval_batch_size: int = 32
    max_length: int = 512
    loss: str = "soft_ce"  # soft_ce | aux_conf | product
    loss_params: dict[str, Any] = field(default_factory=dict)  # e.g. {"aux_coef": 0.75, "warmup": "fixed"}
    lora: bool | None = None  # None: LoRA when peft is installed
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.0
    dtype: str = "bfloat16"  # on CUDA; float32 on CPU
    gradient_checkpointing: bool = False
    weight_decay: float = 0.0


def _loss_fn(config: FinetuneConfig) -> LossFn:
    from trainer.methods import losses

    p = dict(config.loss_params)
    if config.loss == "soft_ce":
        return losses.soft_ce
    if config.loss == "aux_conf":
        return losses.logconf(
            float(p.get("aux_coef", 0.5)), float(p.get("warmup_frac", 0.1)), p.get("warmup", "faithful")
        )
    if config.loss == "product":
        return losses.product(float(p.get("alpha", 1.0)), float(p.get("beta", 1.0)))
    raise ValueError(f"unknown loss {config.loss!r}; known: soft_ce, aux_conf, product")


def _peft_available() -> bool:
    try:
        importlib.import_module("peft")  # optional, not a declared dependency: only whether it imports
    except ImportError:
        return False
    return True


def _resolve(backbone: str | Path, home: AarHome | None) -> Path:
    if isinstance(backbone, Path) or (isinstance(backbone, str) and Path(backbone).is_dir()):
        return Path(backbone)
    return models.model_path(str(backbone), home, fetch_missing=True)


def load_classifier(
    backbone: str | Path, *, device: str, config: FinetuneConfig, home: AarHome | None = None
) -> tuple[Any, Any]:
    """``(tokenizer, model)``: the backbone with a fresh 2-way classification head (LoRA-wrapped if asked)."""
    import torch

    transformers = models._transformers()
    path = _resolve(backbone, home)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    dtype = getattr(torch, config.dtype) if device.startswith("cuda") else torch.float32
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(path), num_labels=2, local_files_only=True, **{models.dtype_kwarg(): dtype}
    )
    model.config.pad_token_id = tokenizer.pad_token_id
    use_lora = _peft_available() if config.lora is None else config.lora
    if use_lora:
        try:
            import peft  # type: ignore[import-not-found]  # optional (LoRA), not a declared dependency
        except ImportError:
            raise MissingDependencyError("peft", "LoRA fine-tuning (config.lora=True)") from None
        lora = peft.LoraConfig(
            task_type=peft.TaskType.SEQ_CLS,
            r=config.lora_r,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules="all-linear",
        )
        model = peft.get_peft_model(model, lora)
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.to(device)
    return tokenizer, model


def _batches(tokenizer: Any, texts: Sequence[str], rows: Sequence[int] | np.ndarray, max_length: int, device: str) -> dict[str, Any]:
    enc = tokenizer([texts[i] for i in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    # Only what every architecture accepts (decoders reject token_type_ids).
    return {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}


def predict(
    model: Any, tokenizer: Any, texts: Sequence[str], *, device: str, config: FinetuneConfig, progress: bool = False
) -> np.ndarray:
    """P(class 1) per text (length-sorted batches, inference mode)."""
    import torch
    from tqdm.auto import tqdm

    if len(texts) == 0:
        return np.empty(0)
    lengths = [len(t) for t in texts]
    order = np.argsort(-np.asarray(lengths), kind="stable")
    out = np.empty(len(texts))
    model.eval()
    with torch.inference_mode(), tqdm(total=len(texts), desc="predict", disable=not progress, leave=False) as bar:
        for start in range(0, len(order), config.eval_batch_size):
            rows = order[start : start + config.eval_batch_size]
            logits = model(**_batches(tokenizer, texts, rows, config.max_length, device)).logits.float()
            out[rows] = torch.softmax(logits, dim=-1)[:, 1].cpu().numpy()
            bar.update(len(rows))
    return out


def finetune(
    backbone: str | Path,
    train_texts: Sequence[str],
    soft_labels: np.ndarray,
    eval_texts: Sequence[str],
    *,
    seed: int = 0,
    config: FinetuneConfig | None = None,
    device: str | None = None,
    home: AarHome | None = None,
    progress: bool = True,
) -> np.ndarray:
    """Fine-tune ``backbone`` (registry name or local folder) on ``soft_labels`` (P(class 1)
    per training text; gold 0/1 labels for the teacher and the ceiling) and return
    P(class 1) on ``eval_texts``."""
    import torch
    from tqdm.auto import tqdm

    cfg = config or FinetuneConfig()
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.batch_size % cfg.micro_batch_size:
        raise ValueError("batch_size must be a multiple of micro_batch_size")
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    tokenizer, model = load_classifier(backbone, device=device, config=cfg, home=home)
    loss_fn = _loss_fn(cfg)
    labels = torch.as_tensor(np.asarray(soft_labels, dtype=np.float32)).clamp(0, 1)
    targets = torch.stack([1 - labels, labels], dim=1)
    n = len(train_texts)
    steps_per_epoch = max(1, n // cfg.batch_size) if n >= cfg.batch_size else 1
    total = cfg.epochs * steps_per_epoch
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    generator = torch.Generator().manual_seed(seed)
    model.eval()  # dropout off, as in the released code (determinism; helps 1-2 epoch runs)
    step = 0
    with tqdm(total=total, desc="finetune", disable=not progress, leave=False) as bar:
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=generator).tolist()
            for b in range(steps_per_epoch):
                rows = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                logits = []
                for m in range(0, len(rows), cfg.micro_batch_size):
                    micro = rows[m : m + cfg.micro_batch_size]
                    with torch.autocast(
                        device_type="cuda", dtype=getattr(torch, cfg.dtype), enabled=device.startswith("cuda")
                    ):
                        logits.append(
                            model(**_batches(tokenizer, train_texts, micro, cfg.max_length, device)).logits.float()
                        )
                loss = loss_fn(torch.cat(logits), targets[rows].to(device), step / total)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
                step += 1
                bar.update(1)
                bar.set_postfix(loss=float(loss.detach()))
    probs = predict(model, tokenizer, eval_texts, device=device, config=cfg, progress=progress)
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return probs


def w2s_finetune_run(
    dataset: str,
    *,
    weak: str | Path = "qwen1.5-0.5b-chat",
    strong: str | Path = "qwen3-4b-base",
    seed: int = 0,
    sizes: Any = None,
    eval_split: str = "dev",
    teacher_config: FinetuneConfig | None = None,
    student_config: FinetuneConfig | None = None,
    home: AarHome | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """One seed of the full GPU protocol: weak teacher on A -> soft labels on B; ceiling
    (strong on B's gold); student (strong on the weak labels). Returns accuracies and PGR."""
    from trainer import w2s
    from trainer.data import get_dataset

    ds = get_dataset(dataset, sizes)
    ev = ds.split(eval_split)
    teacher_cfg = teacher_config or FinetuneConfig()
    student_cfg = student_config or FinetuneConfig()
    both = list(ds.B.texts) + list(ev.texts)
    weak_probs = finetune(
        weak,
        ds.A.texts,
        ds.A.labels.astype(np.float32),
        both,
        seed=seed,
        config=teacher_cfg,
        home=home,
        progress=progress,
    )
    soft_B, weak_eval = weak_probs[: len(ds.B)], weak_probs[len(ds.B) :]
    ceiling_eval = finetune(
        strong,
        ds.B.texts,
        ds.B.labels.astype(np.float32),
        ev.texts,
        seed=seed,
        config=student_cfg,
        home=home,
        progress=progress,
    )
    student_eval = finetune(
        strong, ds.B.texts, soft_B, ev.texts, seed=seed, config=student_cfg, home=home, progress=progress
    )
    accs = {
        "weak": w2s.accuracy(weak_eval, ev.labels),
        "ceiling": w2s.accuracy(ceiling_eval, ev.labels),
        "student": w2s.accuracy(student_eval, ev.labels),
    }
    result = w2s.pgr(accs["student"], accs["weak"], accs["ceiling"], n_eval=len(ev))
    return {"dataset": dataset, "seed": seed, "eval_split": eval_split, **accs, "pgr": result.as_dict()}
