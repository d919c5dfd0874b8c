"""A custom lm-eval task over a local JSONL (lm-eval's built-in tasks download their data)."""

from __future__ import annotations

from pathlib import Path

from llama_stack_provider_kfp.boundary.data_uri import write_jsonl

MC_ROWS = [
    {"question": q, "choices": [a, b], "answer": 0}
    for q, a, b in [("Say hello", "hello", "goodbye"), ("Capital of France?", "Paris", "Rome"),
                    ("2+2?", "4", "5"), ("Colour of the sky?", "blue", "green"),
                    ("Opposite of hot?", "cold", "warm"), ("First letter?", "a", "z")]
]  # fmt: skip
MC_TASK = """task: tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: tiny_mc.jsonl
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{question}}\\nAnswer:"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


def write_task(folder: Path) -> Path:
    """tiny_mc.yaml and its data (named relative to it) in `folder`."""
    write_jsonl(MC_ROWS, folder / "tiny_mc.jsonl")
    (folder / "tiny_mc.yaml").write_text(MC_TASK)
    return folder
