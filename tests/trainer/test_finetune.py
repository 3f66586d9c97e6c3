"""The GPU regime: full fine-tuning (or LoRA) with a classification head, on tiny random
models built here (an encoder and a Qwen2-style decoder), so no download is needed."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trainer.finetune import FinetuneConfig, finetune

TEXTS = ["good great fine lovely"] * 32 + ["bad awful terrible dull"] * 32
LABELS = np.array([0.9] * 32 + [0.1] * 32)
PROBE = ["good great fine lovely", "bad awful terrible dull"]


def _tiny_model(folder: Path, arch: str) -> Path:
    """A 2-layer random model and a byte-level BPE tokenizer trained on the few words used here."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    folder.mkdir(parents=True, exist_ok=True)
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(
        TEXTS, vocab_size=300, min_frequency=1, special_tokens=["<pad>", "<unk>"], show_progress=False
    )
    bpe.save_model(str(folder))  # vocab.json + merges.txt, what Qwen2's tokenizer class reads
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer, pad_token="<pad>", unk_token="<unk>"
    )
    tokenizer.save_pretrained(folder)
    size = {
        "hidden_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "max_position_embeddings": 64,
    }
    if arch == "bert":
        model = transformers.BertModel(transformers.BertConfig(vocab_size=len(tokenizer), pad_token_id=0, **size))
    else:
        config = transformers.Qwen2Config(vocab_size=len(tokenizer), num_key_value_heads=2, pad_token_id=0, **size)
        model = transformers.Qwen2Model(config)
    model.save_pretrained(folder)
    return folder


def _run(folder: Path, device: str, loss: str, lora: bool = False) -> np.ndarray:
    cfg = FinetuneConfig(epochs=8, lr=2e-3, batch_size=16, micro_batch_size=8, max_length=16, loss=loss, lora=lora)
    return finetune(folder, TEXTS, LABELS, PROBE, seed=0, config=cfg, device=device, progress=False)


@pytest.mark.parametrize("arch", ["bert", "qwen2"])
def test_finetune_runs_on_cpu(tmp_path: Path, arch: str) -> None:
    probs = _run(_tiny_model(tmp_path / arch, arch), "cpu", "aux_conf")
    assert probs.shape == (2,) and np.isfinite(probs).all()
    assert probs[0] > probs[1]


@pytest.mark.gpu
@pytest.mark.parametrize("arch", ["bert", "qwen2"])
@pytest.mark.parametrize("loss", ["soft_ce", "aux_conf", "product"])
def test_finetune_learns_on_gpu(tmp_path: Path, arch: str, loss: str) -> None:
    probs = _run(_tiny_model(tmp_path / arch, arch), "cuda", loss)
    assert probs[0] > 0.6 and probs[1] < 0.4, probs


@pytest.mark.gpu
def test_finetune_lora_on_gpu(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    cfg = FinetuneConfig(epochs=8, lr=1e-2, batch_size=16, micro_batch_size=8, max_length=16, lora=True, lora_r=4)
    probs = finetune(
        _tiny_model(tmp_path / "qwen2", "qwen2"),
        TEXTS,
        LABELS,
        PROBE,
        seed=0,
        config=cfg,
        device="cuda",
        progress=False,
    )
    assert probs[0] > probs[1], probs
