"""A small learnable toy task, generated on the fly (nothing is downloaded).

Each row asks to greet a name; the answer is a fixed sentence around that name, so a tiny
model can learn most of it within a few dozen steps.
"""

from __future__ import annotations

import json
import random
from typing import Any

NAMES = (
    "Ada", "Alan", "Grace", "Linus", "Guido", "Barbara", "Ken", "Dennis", "Margaret", "Edsger",
    "Donald", "Frances", "John", "Radia", "Tim", "Vint", "Bjarne", "James", "Anita", "Sophie",
    "Hedy", "Katherine", "Niklaus", "Leslie", "Shafi", "Yukihiro", "Rasmus",
)  # fmt: skip


# A LoRA algorithm_config for the demo, tests and benchmarks.
DEMO_LORA = {
    "type": "LoRA",
    "lora_attn_modules": ["q_proj", "v_proj"],
    "apply_lora_to_mlp": True,
    "apply_lora_to_output": False,
    "rank": 8,
    "alpha": 16,
}


def instruct_rows(n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        name = rng.choice(NAMES)
        rows.append(
            {
                "chat_completion_input": json.dumps(
                    [{"role": "user", "content": f"Greet {name}."}]
                ),
                "expected_answer": f"Hello, {name}! Nice to meet you.",
            }
        )
    return rows


def training_config(dataset_id: str, **over: Any) -> dict[str, Any]:
    """A training_config for the toy task (2 epochs, batch 4); `over` replaces keys, and
    merges into data_config / optimizer_config."""
    cfg = {
        "n_epochs": 2,
        "max_steps_per_epoch": 1000,
        "gradient_accumulation_steps": 1,
        "dtype": "fp32",
        "data_config": {
            "dataset_id": dataset_id,
            "batch_size": 4,
            "shuffle": True,
            "data_format": "instruct",
        },
        "optimizer_config": {
            "optimizer_type": "adamw",
            "lr": 2e-2,
            "weight_decay": 0.0,
            "num_warmup_steps": 2,
        },
    }
    for key, value in over.items():
        if key in ("data_config", "optimizer_config"):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg
