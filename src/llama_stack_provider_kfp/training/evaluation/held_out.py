"""Held-out metrics computed by this project, so they mean the same for every engine's outputs:
loss (mean cross-entropy), perplexity (exp of it) and token accuracy (argmax == label) over the
tokens training learns from, i.e. the answers, as the Hugging Face engine masks them
(training.huggingface.data: the chat template, the prompt masked unless train_on_input).

Preference (DPO) rows are measured on prompt + chosen answer: what the tuned model should now
prefer to say.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from ..huggingface import data, logits
from .models import Loaded


def read_rows(path: str | None, max_rows: int | None) -> list[list[dict]]:
    """The first `max_rows` held-out rows as chat messages (DPO rows: prompt + chosen)."""
    if not path or not Path(path).is_file():
        return []
    rows: list[list[dict]] = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if max_rows is not None and len(rows) >= max_rows:
                break
            if not line.strip():
                continue
            row = json.loads(line)
            rows.append(row["messages"] if "messages" in row else row["prompt"] + row["chosen"])
    return rows


@dataclass(frozen=True)
class HeldOut:
    loss: float
    perplexity: float
    token_accuracy: float
    tokens: int  # the learned tokens the means are over


@torch.no_grad()
def measure(
    loaded: Loaded, rows: list[list[dict]], max_len: int, train_on_input: bool, batch_size: int
) -> HeldOut | None:
    """None when no row has a token to learn (all prompt, or truncated away)."""
    samples = [data.encode(loaded.tokenizer, m, max_len, train_on_input) for m in rows]
    nll, correct, count = 0.0, 0, 0
    for i in range(0, len(samples), batch_size):
        batch = data.collate(samples[i : i + batch_size], loaded.tokenizer.pad_token_id)
        batch = {k: v.to(loaded.device) for k, v in batch.items()}
        out, targets = logits.labelled(loaded.model, batch)
        mask = targets != data.IGNORE
        nll += float(F.cross_entropy(out.flatten(0, 1), targets.flatten(),
                                     ignore_index=data.IGNORE, reduction="sum"))  # fmt: skip
        correct += int(((out.argmax(-1) == targets) & mask).sum())
        count += int(mask.sum())
    if not count:
        return None
    loss = nll / count
    return HeldOut(loss, math.exp(min(loss, 50.0)), correct / count, count)
