"""A small learnable toy task, generated on the fly (nothing is downloaded).

Each row asks to greet a name; the answer is a fixed sentence around that name, so a tiny
model can learn most of it within a few dozen steps.
"""

from __future__ import annotations

import json
import random

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
