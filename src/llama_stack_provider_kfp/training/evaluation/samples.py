"""A few held-out prompts answered greedily, for a person to read the difference."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .models import Loaded


@dataclass(frozen=True)
class Prompt:
    messages: list[dict]  # the conversation up to the answer
    shown: str  # what the report shows as the prompt: the last user message
    reference: str | None  # the row's answer


def prompts(rows: list[list[dict]], n: int) -> list[Prompt]:
    """The first `n` rows that end with an answer: the messages before the last assistant
    message, and that answer as the reference."""
    out: list[Prompt] = []
    for messages in rows:
        if len(out) >= n:
            break
        last = max((i for i, m in enumerate(messages) if m.get("role") == "assistant"),
                   default=None)  # fmt: skip
        if not last:
            continue
        before = messages[:last]
        users = [m for m in before if m.get("role") == "user"]
        shown = str(users[-1]["content"]) if users else str(before[-1]["content"])
        out.append(Prompt(before, shown, str(messages[last]["content"])))
    return out


@torch.no_grad()
def answer(loaded: Loaded, prompt: Prompt, max_new_tokens: int) -> str:
    tokenizer = loaded.tokenizer
    ids = tokenizer.apply_chat_template(
        prompt.messages, add_generation_prompt=True, tokenize=True, return_dict=False
    )
    inputs = torch.tensor([list(ids)], device=loaded.device)
    out = loaded.model.generate(
        input_ids=inputs,
        attention_mask=torch.ones_like(inputs),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    return str(tokenizer.decode(out[0, inputs.shape[1] :], skip_special_tokens=True))
