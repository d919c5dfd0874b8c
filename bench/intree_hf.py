#!/usr/bin/env python3
"""This provider's Hugging Face engine vs llama-stack 0.6.1's `inline::huggingface` SFT recipe,
same model and job. Runs OUTSIDE CI, in a scratch environment for the in-tree recipe:

    python3.12 -m venv /tmp/hfintree
    /tmp/hfintree/bin/pip install "llama-stack==0.6.1" "llama-stack-api==0.6.1" "mcp<2" \\
        "transformers>=4.57,<5" trl peft "torch==2.14.1" datasets pandas
    python bench/intree_hf.py --scratch-python /tmp/hfintree/bin/python [--repeats 3]

Why a scratch environment: 0.6.1's inline::huggingface does not import with transformers 5 (its
utils.py names `PretrainedConfig` in a class annotation but imports it only for type checking,
FACTS.md). The benchmark patches exactly that in memory, by putting transformers'
`PretrainedConfig` in builtins before importing the recipe; no file is changed.

Same job on both sides: a tiny SmolLM2 (harness/tiny_families.py), 400 instruct rows, LoRA
rank 8 / alpha 16 on q_proj and v_proj, batch 4, 90 optimizer steps, lr 2e-4, fp32 on the CPU.
The in-tree recipe formats rows with its own template and trains on every token (padding
included: it pads the whole dataset to one length); ours uses the model's chat template and
(train_on_input=true here, to match) trains on every real token. So tokens/s are not
comparable one to one: compared are the wall time of the training call (model loading,
tokenizing and the 90 steps), of the whole process (imports included), and the peak RSS of the
process that trains (the in-tree recipe trains in a child process: its RUSAGE_CHILDREN).
The in-tree recipe holds out 10% of the rows for evaluation (and evaluates them); ours does not.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import save, summary

from harness.demo_data import instruct_rows
from harness.tiny_families import make
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
from llama_stack_provider_kfp.core.spec import (
    DataSpec,
    EngineChoice,
    JobSpec,
    LoraSpec,
    OptimSpec,
    TrainSpec,
)

# The in-tree recipe holds out 10% of the rows and caps the whole run at max_steps_per_epoch:
# 400 rows -> 360 // 4 = 90 steps there; 90 of our 100 batches here.
ROWS, BATCH, STEPS, LR = 400, 4, 90, 2e-4

THEIRS = r"""
import asyncio, builtins, json, resource, sys, time
t_start = time.perf_counter()
import transformers
builtins.PretrainedConfig = transformers.PretrainedConfig  # the one 0.6.1 import-time NameError
from llama_stack.providers.inline.post_training.huggingface.config import (
    HuggingFacePostTrainingConfig)
from llama_stack.providers.inline.post_training.huggingface.recipes.finetune_single_device import (
    HFFinetuningSingleDevice)
from llama_stack_api import LoraFinetuningConfig, PaginatedResponse, TrainingConfig

model_dir, rows_file, out_dir = sys.argv[1:4]
steps, lr = int(sys.argv[4]), float(sys.argv[5])
rows = [json.loads(l) for l in open(rows_file)]

class RowsOnlyDatasetIO:  # stand-in for the datasetio router: one page with every row
    async def iterrows(self, request):
        return PaginatedResponse(data=rows, has_more=False)

tc = TrainingConfig(n_epochs=1, max_steps_per_epoch=steps, gradient_accumulation_steps=1,
    data_config={"dataset_id": "toy", "batch_size": 4, "shuffle": True, "data_format": "instruct"},
    optimizer_config={"optimizer_type": "adamw", "lr": lr, "weight_decay": 0.0,
                      "num_warmup_steps": 0})
algo = LoraFinetuningConfig(type="LoRA", lora_attn_modules=["q_proj", "v_proj"],
                            apply_lora_to_mlp=False, apply_lora_to_output=False, rank=8, alpha=16)
config = HuggingFacePostTrainingConfig(device="cpu", dpo_output_dir=out_dir,
                                       dataloader_num_workers=0, dataloader_pin_memory=False)

async def main():
    recipe = HFFinetuningSingleDevice("intree-hf", RowsOnlyDatasetIO(), None)
    t0 = time.perf_counter()
    await recipe.train(model=model_dir, output_dir=None, job_uuid="intree-hf", lora_config=algo,
                       config=tc, provider_config=config)
    return time.perf_counter() - t0

train_s = asyncio.run(main())
print("RESULT", json.dumps({"train_seconds": train_s,
    "process_seconds": time.perf_counter() - t_start,
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""

OURS = r"""
import json, resource, sys, time
t_start = time.perf_counter()
from pathlib import Path
from llama_stack_provider_kfp.core.spec import JobSpec
from llama_stack_provider_kfp.training.prepare import prepare
from llama_stack_provider_kfp.training.steps import train_step
import torch, transformers, peft  # imported before the clock, as the in-tree side's are
spec = JobSpec.model_validate_json(sys.argv[1])
work = Path(sys.argv[2])
t0 = time.perf_counter()
js = spec.model_dump_json()
prepare(spec, str(work / "t.jsonl"), str(work / "v.jsonl"))
r = train_step(js, spec.model.path, spec.output_uri, str(work / "t.jsonl"), str(work / "v.jsonl"))
print("RESULT", json.dumps({"train_seconds": time.perf_counter() - t0,
    "process_seconds": time.perf_counter() - t_start, "steps": r["global_step"],
    "final_loss": r["final_loss"], "tokens_per_second": r["tokens_per_second"],
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def _run(python: str, code: str, *args: str) -> dict:
    start = time.perf_counter()
    proc = subprocess.run([python, "-c", code, *args], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return {**json.loads(line[len("RESULT ") :]), "wall_seconds": time.perf_counter() - start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scratch-python", required=True, help="python of the scratch environment")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-intree-hf-"))
    model_dir = make("smollm2", tmp / "smollm2")
    rows = [{**r, "input_query": json.loads(r["chat_completion_input"])[0]["content"]}
            for r in instruct_rows(ROWS)]  # fmt: skip
    rows_file = write_jsonl(rows, tmp / "rows.jsonl")
    model = inspect_model_dir("smollm2", model_dir)
    runs: dict[str, list[dict]] = {
        "in-tree inline::huggingface": [],
        "this provider (HF engine)": [],
    }
    for r in range(args.repeats):
        work = tmp / f"ours-{r}"
        work.mkdir()
        spec = JobSpec(
            job_uuid="bench", engine=EngineChoice(name="huggingface", reason="bench"), model=model,
            data=DataSpec(uri=str(rows_file), data_format="instruct"),
            train=TrainSpec(epochs=1, max_steps_per_epoch=STEPS, gradient_accumulation_steps=1,
                            batch_size=BATCH, shuffle=True, train_on_input=True, dtype="fp32",
                            max_validation_steps=None, max_seq_len=2048, seed=42, device="cpu"),
            lora=LoraSpec(rank=8, alpha=16, attn_modules=[], apply_to_mlp=False,
                          apply_to_output=False, requested_modules=["q_proj", "v_proj"]),
            optim=OptimSpec(type="adamw", lr=LR, weight_decay=0.0, warmup_steps=0),
            output_format="huggingface", output_uri=str(work / "out"),
        )  # fmt: skip
        theirs = (args.scratch_python, THEIRS, str(model_dir), str(rows_file),
                  str(tmp / f"theirs-{r}"), str(STEPS), str(LR))  # fmt: skip
        ours = (sys.executable, OURS, spec.model_dump_json(), str(work))
        sides = [("in-tree inline::huggingface", theirs), ("this provider (HF engine)", ours)]
        for name, call in sides if r % 2 == 0 else sides[::-1]:
            runs[name].append(_run(*call))
        print({k: round(v[-1]["train_seconds"], 2) for k, v in runs.items()})
    result: dict = {"rows": ROWS, "steps": STEPS, "repeats": args.repeats, "runs": {}}
    for name, items in runs.items():
        result["runs"][name] = {
            "train_seconds": summary([i["train_seconds"] for i in items]),
            "process_seconds": summary([i["process_seconds"] for i in items]),
            "peak_rss_mb": summary([i["peak_rss_mb"] for i in items]),
        }
    ours, theirs = runs["this provider (HF engine)"], runs["in-tree inline::huggingface"]
    result["paired_train_seconds_ratio_ours_over_intree"] = summary(
        [o["train_seconds"] / t["train_seconds"] for o, t in zip(ours, theirs, strict=True)]
    )
    save("intree_hf", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
