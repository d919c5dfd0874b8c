"""Liger-Kernel's Triton kernels (RMSNorm, RoPE, SwiGLU) for a model trained on CUDA, when the
optional `liger-kernel` package is installed; without it, or on the CPU, nothing changes.

Its loss kernel is not patched into the model's forward: the loss is computed by head.py,
which uses Liger's fused linear cross-entropy itself where it computes the same thing.
"""

from __future__ import annotations

from typing import Any

import torch


def apply_liger(model: Any, device: torch.device) -> str | None:
    """Patch Liger's kernels into `model` (its own modules, in place; before PEFT wraps it).
    What was done, for the log; None when nothing was."""
    if device.type != "cuda":
        return None
    try:
        from liger_kernel.transformers import (  # type: ignore[import-not-found, unused-ignore]
            _apply_liger_kernel_to_instance,
        )
    except ImportError:
        return None
    model_type = getattr(model.config, "model_type", "?")
    _apply_liger_kernel_to_instance(
        model=model, rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
        fused_linear_cross_entropy=False,
    )  # fmt: skip
    return (f"efficiency: Liger-Kernel's RMSNorm/RoPE/SwiGLU kernels, where it has them for "
            f"{model_type!r}")  # fmt: skip
