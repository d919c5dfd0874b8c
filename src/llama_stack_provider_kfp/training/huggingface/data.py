"""Chat rows -> token ids and labels with the model's own chat template.

The prompt is masked out of the labels (train_on_input=false) by rendering the conversation up
to each assistant turn with the generation prompt: the tokens between that prefix and the end
of the turn are the answer. Models without a chat template (the GPT-2 family) get
FALLBACK_CHAT_TEMPLATE.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...core.errors import InvalidRequest

IGNORE = -100
# "role: content" lines; the answer ends with the end-of-sequence token so a model learns to stop.
FALLBACK_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
    "{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


@dataclass
class Sample:
    ids: list[int]
    labels: list[int]


def _render(tokenizer: Any, messages: list[dict], generation_prompt: bool = False) -> list[int]:
    if not messages and not generation_prompt:
        return []
    ids = tokenizer.apply_chat_template(
        messages, add_generation_prompt=generation_prompt, tokenize=True, return_dict=False
    )
    return list(ids)


def encode(tokenizer: Any, messages: list[dict], max_len: int, train_on_input: bool) -> Sample:
    ids = _render(tokenizer, messages)
    if train_on_input:
        labels = list(ids)
    else:
        labels = [IGNORE] * len(ids)
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = len(_render(tokenizer, messages[:i], generation_prompt=True))
            end = len(_render(tokenizer, messages[: i + 1]))
            labels[start:end] = ids[start:end]
    return Sample(ids[:max_len], labels[:max_len])


def load(
    path: str | None, tokenizer: Any, max_len: int, train_on_input: bool, split: str = "training"
) -> list[Sample]:
    if not path or not Path(path).is_file():
        return []
    with open(path, encoding="utf-8") as fh:
        rows = [json.loads(line)["messages"] for line in fh if line.strip()]
    samples = [encode(tokenizer, m, max_len, train_on_input) for m in rows]
    check_learnable(samples, split, max_len)
    return samples


def learns_nothing(sample: Sample) -> bool:
    """No token to predict: fewer than two tokens, or every answer token truncated away (a
    label at position 0 is never predicted)."""
    return len(sample.ids) < 2 or all(label == IGNORE for label in sample.labels[1:])


def check_learnable(samples: list[Sample], split: str, max_len: int) -> None:
    """Refuse rows that leave nothing to learn, naming them, before the first step: a DPO
    pair of them crashes the log-likelihood, an SFT one trains on nothing."""
    bad = [i for i, s in enumerate(samples, 1) if learns_nothing(s)]
    if bad:
        first = samples[bad[0] - 1]
        raise InvalidRequest(
            f"{split} row(s) {', '.join(map(str, bad[:10]))}{' ...' if len(bad) > 10 else ''} "
            f"leave no token to learn (row {bad[0]} encodes to {len(first.ids)} token(s) with "
            f"max_seq_len {max_len}: too short, or its answer was truncated away); drop or "
            "shorten them, or raise max_seq_len"
        )


def collate(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(s.ids) for s in samples)
    ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(samples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(samples), width), dtype=torch.long)
    for row, s in enumerate(samples):
        ids[row, : len(s.ids)] = torch.tensor(s.ids)
        labels[row, : len(s.labels)] = torch.tensor(s.labels)
        mask[row, : len(s.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


@dataclass
class Packed:
    """Several samples in one row: each restarts its positions and attends only to itself."""

    parts: list[Sample]


def pack(samples: list[Sample], max_len: int) -> list[Packed]:
    """Samples in order, greedily filling rows of at most `max_len` tokens."""
    rows: list[Packed] = []
    used = max_len
    for s in samples:
        if used + len(s.ids) > max_len:
            rows.append(Packed([]))
            used = 0
        rows[-1].parts.append(s)
        used += len(s.ids)
    return rows


def collate_packed(rows: list[Packed], pad_id: int) -> dict[str, torch.Tensor]:
    """Padded batch with position ids restarting per sample and a 4-D block-diagonal causal
    mask (transformers' custom-mask path: no attention across samples, checked per family)."""
    width = max(sum(len(p.ids) for p in r.parts) for r in rows)
    n = len(rows)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), IGNORE, dtype=torch.long)
    positions = torch.zeros((n, width), dtype=torch.long)
    segment = torch.full((n, width), -1, dtype=torch.long)
    for row, packed in enumerate(rows):
        at = 0
        for k, part in enumerate(packed.parts):
            end = at + len(part.ids)
            ids[row, at:end] = torch.tensor(part.ids)
            part_labels = torch.tensor(part.labels)
            part_labels[0] = IGNORE  # never predicted from the previous sample's last token
            labels[row, at:end] = part_labels
            positions[row, at:end] = torch.arange(len(part.ids))
            segment[row, at:end] = k
            at = end
    causal = torch.tril(torch.ones((width, width), dtype=torch.bool))
    same = segment[:, :, None] == segment[:, None, :]
    real = (segment >= 0)[:, :, None]
    # Padding attends to itself only, so no row of the mask is empty.
    mask = (causal & same & real) | torch.eye(width, dtype=torch.bool)
    return {
        "input_ids": ids,
        "attention_mask": mask[:, None],
        "position_ids": positions,
        "labels": labels,
        "tokens": (segment >= 0).sum(),
    }
