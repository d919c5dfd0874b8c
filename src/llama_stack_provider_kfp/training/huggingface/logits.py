"""Logits only where a label is learned, and never all of them at once.

The output projection over a large vocabulary dominates a small model's step; computing it
only at the positions whose next token is labelled (transformers' `logits_to_keep`) halves the
step when half the tokens are prompt (measured on the benchmarks' tiny Llama: 213 -> 114 ms).

Over a 128k-152k vocabulary the fp32 logits of a long batch take gigabytes, and autograd keeps
them (and their log-softmax) until the backward. When they would exceed CHUNK_ELEMENTS the
loss is chunked (head.py): the model body runs once, then the output projection, the family's
own logit transforms and the cross-entropy run a chunk of positions at a time, so one chunk's
logits exist at a time. SFT's summed loss takes each chunk's gradients in the forward (on CUDA
with liger-kernel installed: Liger's fused linear cross-entropy); DPO's per-row
log-probabilities recompute each chunk in the backward (activation checkpointing).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from . import head
from .data import IGNORE

# Logits (batch x kept positions x vocabulary) above which the loss is chunked, and the size of
# a chunk: 2^26 fp32 values are 256 MiB (a 2048-token row over 128k tokens is 1 GiB).
CHUNK_ELEMENTS = 2**26
NEVER = 2**62  # a chunk_elements no batch exceeds: the whole logits


def _keep(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(the positions some row learns from, targets [B, K] there); a position kept for one
    row is ignored for the rows that do not learn there."""
    targets = batch["labels"][:, 1:]
    keep = (targets != IGNORE).any(0).nonzero().squeeze(-1)
    if keep.numel() == 0:  # nothing learned in this batch (all truncated away)
        keep = torch.zeros(1, dtype=torch.long, device=targets.device)
    return keep, targets[:, keep]


def labelled(model: Any, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(float logits [B, K, V], targets [B, K]) at the K positions some row learns from."""
    keep, targets = _keep(batch)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, logits_to_keep=keep).logits
    return logits.float(), targets


def _plan(
    model: Any, batch: dict[str, torch.Tensor], chunk_elements: int | None
) -> tuple[torch.Tensor, torch.Tensor, tuple[head.Head, int] | None]:
    """(the kept positions, their targets [B, K], and the chunked head with the positions a
    chunk takes, or None for the whole logits). `chunk_elements`: CHUNK_ELEMENTS unless given."""
    chunk_elements = chunk_elements or CHUNK_ELEMENTS
    keep, targets = _keep(batch)
    vocab = head.vocab_size(model)
    if targets.numel() * vocab <= chunk_elements:
        return keep, targets, None
    found = head.find(model, batch, keep)
    if found is None:
        return keep, targets, None
    return keep, targets, (found, max(1, chunk_elements // (targets.shape[0] * vocab)))


def _inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in batch.items() if k != "labels"}


def _whole_nll(model: Any, batch: dict[str, torch.Tensor], targets: torch.Tensor) -> torch.Tensor:
    logits, _ = labelled(model, batch)
    nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                          reduction="none")  # fmt: skip
    return nll.view(targets.shape)


def token_nll(
    model: Any, batch: dict[str, torch.Tensor], chunk_elements: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(negative log-likelihood of each kept position's target [B, K] in fp32, 0 where it is
    not learned; the targets [B, K]). `chunk_elements`: CHUNK_ELEMENTS unless given."""
    keep, targets, plan = _plan(model, batch, chunk_elements)
    if plan is not None:
        found, positions = plan
        return found.nll(model, _inputs(batch), keep, targets, positions), targets
    return _whole_nll(model, batch, targets), targets


def mean_nll(
    model: Any, batch: dict[str, torch.Tensor], chunk_elements: int | None = None
) -> torch.Tensor:
    """Mean negative log-likelihood over the labelled tokens (what the model's own loss is)."""
    keep, targets, plan = _plan(model, batch, chunk_elements)
    count = (targets != IGNORE).sum().clamp(min=1)
    if plan is not None:
        found, positions = plan
        return found.summed_nll(model, _inputs(batch), keep, targets, positions) / count
    return _whole_nll(model, batch, targets).sum() / count


def sequence_logps(
    model: Any, batch: dict[str, torch.Tensor], chunk_elements: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: the summed log-probability of its labelled tokens, and how many there are."""
    nll, targets = token_nll(model, batch, chunk_elements)
    return -nll.sum(-1), (targets != IGNORE).sum(-1)
