"""Load a model to evaluate: weights, tokenizer and device, the same way for base and tuned.

A checkpoint's `merged/` weights are what is evaluated, for every algorithm: they are what the
register stage registers and what a server would load, every engine writes them, and for LoRA
they equal base + adapter (FACTS.md: logits within 1e-6). A checkpoint without `merged/` (an
adapter-only folder) is evaluated as the base model with its PEFT adapter, merged in memory.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..device import resolve_device
from .checkpoint import Checkpoint, ModelFiles, as_hf
from .tokenizer import load_tokenizer

_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


@dataclass
class Loaded:
    model: Any
    tokenizer: Any
    device: torch.device


def eval_dtype(device: str, train_dtype: str) -> torch.dtype:
    """float32 on the CPU (exact, and bf16 matmuls there are slow); the job's training dtype on
    an accelerator. Base and tuned always get the same one."""
    return torch.float32 if device == "cpu" else _DTYPES.get(train_dtype, torch.bfloat16)


def load(files: ModelFiles, device: str, dtype: torch.dtype, adapter: Path | None = None) -> Loaded:
    from transformers import AutoModelForCausalLM

    with tempfile.TemporaryDirectory(prefix="tokenizer-") as scratch:
        tokenizer = load_tokenizer(files.tokenizer, Path(scratch), files.vocab_size)
    model: Any = AutoModelForCausalLM.from_pretrained(files.weights, dtype=dtype)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    target = torch.device(resolve_device(device))
    model = model.to(target).eval().requires_grad_(False)
    return Loaded(model, tokenizer, target)


def load_checkpoint(
    checkpoint: Checkpoint, base: ModelFiles, scratch: Path, device: str, dtype: torch.dtype
) -> Loaded:
    """The tuned model: the checkpoint's merged weights, else the base with its adapter."""
    if checkpoint.merged is not None:
        return load(as_hf(checkpoint.merged, scratch), device, dtype)
    if checkpoint.adapter is not None:
        return load(base, device, dtype, adapter=checkpoint.adapter)
    raise ValueError(
        f"{checkpoint.location} holds neither merged/ weights nor an adapter/ to evaluate"
    )


def release(loaded: Loaded | None) -> None:
    """Free a model's memory before the next one loads (one model in memory at a time)."""
    if loaded is None:
        return
    device = loaded.device
    loaded.model = None
    if device.type == "cuda":
        torch.cuda.empty_cache()
