"""What the tests ask of trained weights: their logits on one fixed prompt, with or without a
PEFT adapter on top (fp32, no gradients)."""

from __future__ import annotations

from pathlib import Path

import torch

PROMPT = [[5, 17, 42, 99, 120, 7, 3]]


def logits(model_dir: Path, adapter: Path | None = None) -> torch.Tensor:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    with torch.no_grad():
        return model(torch.tensor(PROMPT)).logits
