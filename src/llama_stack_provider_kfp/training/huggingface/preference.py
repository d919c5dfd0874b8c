"""DPO on preference rows: the policy's log-likelihood margin between the chosen and the
rejected answer, measured against a reference model (Rafailov et al. 2023).

    sigmoid  -log sigmoid(beta * d)        (the DPO paper)
    hinge    max(0, 1 - beta * d)          (SLiC)
    ipo      (d_avg - 1 / (2 * beta))^2    (IPO; d_avg from per-token average log-probabilities)

with d = (log p(chosen) - log p_ref(chosen)) - (log p(rejected) - log p_ref(rejected)), summed
over the answer's tokens only (the prompt is masked, as TRL's DPOTrainer does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from . import data


@dataclass
class Pair:
    chosen: data.Sample
    rejected: data.Sample


def encode(tokenizer: Any, row: dict, max_len: int) -> Pair:
    prompt = row["prompt"]
    return Pair(
        data.encode(tokenizer, prompt + row["chosen"], max_len, train_on_input=False),
        data.encode(tokenizer, prompt + row["rejected"], max_len, train_on_input=False),
    )


def load(path: str | None, tokenizer: Any, max_len: int, split: str = "training") -> list[Pair]:
    if not path or not Path(path).is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        pairs = [encode(tokenizer, json.loads(line), max_len) for line in fh if line.strip()]
    data.check_learnable([p.chosen for p in pairs], f"{split} (chosen answer)", max_len)
    data.check_learnable([p.rejected for p in pairs], f"{split} (rejected answer)", max_len)
    return pairs


def loss(
    policy: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    reference: tuple[torch.Tensor, torch.Tensor],
    beta: float,
    loss_type: str,
) -> tuple[torch.Tensor, dict[str, float]]:
    """`policy` = (chosen logp, rejected logp, chosen tokens, rejected tokens); `reference` =
    (chosen logp, rejected logp). Returns the mean loss and the batch's reward metrics."""
    pc, pr, nc, nr = policy
    rc, rr = reference
    chosen_reward, rejected_reward = pc - rc, pr - rr
    if loss_type == "ipo":
        delta = chosen_reward / nc.clamp(min=1) - rejected_reward / nr.clamp(min=1)
        losses = (delta - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * (chosen_reward - rejected_reward))
    else:
        losses = -F.logsigmoid(beta * (chosen_reward - rejected_reward))
    chosen_r, rejected_r = beta * chosen_reward.detach(), beta * rejected_reward.detach()
    metrics = {
        "rewards_chosen": float(chosen_r.mean()),
        "rewards_rejected": float(rejected_r.mean()),
        "reward_margin": float((chosen_r - rejected_r).mean()),
        "reward_accuracy": float((chosen_r > rejected_r).float().mean()),
    }
    return losses.mean(), metrics
