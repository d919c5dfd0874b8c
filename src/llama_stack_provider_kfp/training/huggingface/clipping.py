"""Gradient clipping before the optimizer step (JobSpec.train.max_grad_norm).

The gradients are complete when this runs: accumulated over the step's micro-batches and, with
several ranks, already averaged by DDP (every rank then clips the same way); OSFT has projected
them out of its frozen subspace. Sharded parameters (FSDP2's DTensors) give a DTensor norm, made
whole here so that every rank logs the same number.
"""

from __future__ import annotations

from typing import Any

import torch


def clip(optimizer: torch.optim.Optimizer, max_norm: float | None) -> float | None:
    """Clip the gradients of `optimizer`'s parameters to total L2 norm `max_norm`; return the
    norm before clipping, or None (and touch nothing) when clipping is off."""
    if not max_norm:
        return None
    params = [p for group in optimizer.param_groups for p in group["params"]]
    norm: Any = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)
