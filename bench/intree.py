#!/usr/bin/env python3
"""This provider vs llama-stack 0.6.1's in-tree `inline::torchtune` recipe, same job.

    python bench/intree.py [--repeats 3]

The in-tree recipe accepts only two descriptors (Llama3.2-3B-Instruct, Llama3.1-8B-Instruct)
with their full-size builders. To run it here the benchmark registers a tiny model definition
under `Llama3.2-3B-Instruct`: it replaces that entry of
`llama_stack.providers.inline.post_training.torchtune.common.utils.MODEL_CONFIGS` with
`functools.partial(torchtune.models.llama3_2.lora_llama3_2, <the tiny model's dimensions>)`
(tokenizer and checkpoint type unchanged), points `checkpoint_dir` at the tiny model's Meta
layout, and redirects its output folder (DEFAULT_CHECKPOINT_DIR) to a temp dir. Its rows come
from an in-process stand-in for the datasetio API that returns them in one `iterrows` page, as
the real router would. The recipe runs in a fresh process: wall time of setup + train (imports
excluded), and of the whole process (imports included).

This provider runs the same job through a real `llama stack run` (submit -> completed).
Reported for both: wall time, label tokens/s (median of steps 2..N, torchtune's metric),
peak RSS of the training process, final loss.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import make_tiny, save, summary

from harness.demo_data import DEMO_LORA, instruct_rows
from harness.server import Server
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.client import job_status, register_jsonl

ROWS, EPOCHS, LR = 64, 2, 2e-2

INTREE = r"""
import asyncio, json, re, resource, sys, time
from functools import partial
from pathlib import Path
t_start = time.perf_counter()
from torchtune.models.llama3 import llama3_tokenizer
from torchtune.models.llama3_2 import lora_llama3_2
from llama_stack.providers.inline.post_training.torchtune.common import utils
from llama_stack.providers.inline.post_training.torchtune.config import TorchtunePostTrainingConfig
from llama_stack.providers.inline.post_training.torchtune.recipes import (
    lora_finetuning_single_device as rec)
from llama_stack_api import LoraFinetuningConfig, TrainingConfig, PaginatedResponse

meta_dir, rows_file, out_dir = sys.argv[1:4]
tiny = partial(lora_llama3_2, vocab_size=128256, num_layers=2, num_heads=4, num_kv_heads=2,
               embed_dim=64, max_seq_len=2048, intermediate_dim=256, scale_factor=32)
utils.MODEL_CONFIGS["Llama3.2-3B-Instruct"] = utils.ModelConfig(
    model_definition=tiny, tokenizer_type=llama3_tokenizer, checkpoint_type="LLAMA3_2")
rec.DEFAULT_CHECKPOINT_DIR = Path(out_dir)
rows = [json.loads(l) for l in open(rows_file)]

class RowsOnlyDatasetIO:  # stand-in for the datasetio router: one page with every row
    async def iterrows(self, request):
        return PaginatedResponse(data=rows, has_more=False)

tc = TrainingConfig(n_epochs=int(sys.argv[4]), max_steps_per_epoch=1000, dtype="fp32",
    gradient_accumulation_steps=1, max_validation_steps=1,
    data_config={"dataset_id": "toy", "batch_size": 4, "shuffle": True, "data_format": "instruct"},
    optimizer_config={"optimizer_type": "adamw", "lr": float(sys.argv[5]), "weight_decay": 0.0,
                      "num_warmup_steps": 2})
algo = LoraFinetuningConfig(**json.loads(sys.argv[6]))

async def main():
    recipe = rec.LoraFinetuningSingleDevice(
        TorchtunePostTrainingConfig(torch_seed=42, checkpoint_format="meta"), "intree", tc, {},
        {}, "Llama3.2-3B-Instruct", meta_dir, algo, RowsOnlyDatasetIO(), None)
    t0 = time.perf_counter()
    await recipe.setup()
    await recipe.train()
    return time.perf_counter() - t0

train_s = asyncio.run(main())
logs = "".join(p.read_text() for p in sorted(Path(out_dir).rglob("log_*.txt")))
tps = [float(x) for x in re.findall(r"tokens_per_second_per_gpu:([0-9.]+)", logs)]
losses = [float(x) for x in re.findall(r"loss:([0-9.]+)", logs)]
window = sorted(tps[1:])
print("RESULT", json.dumps({"train_seconds": train_s,
    "process_seconds": time.perf_counter() - t_start,
    "tokens_per_second": window[len(window) // 2], "final_loss": losses[-1], "steps": len(tps),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_intree(tiny: Path, rows: Path, tmp: Path, r: int) -> dict:
    out = tmp / f"intree-{r}"
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", INTREE, str(tiny / "meta"), str(rows), str(out), str(EPOCHS),
         str(LR), json.dumps(DEMO_LORA)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    wall = time.perf_counter() - start
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return {**json.loads(line[len("RESULT ") :]), "wall_seconds": wall}


def run_ours(client, tiny: Path, job: str) -> dict:
    start = time.perf_counter()
    client.alpha.post_training.supervised_fine_tune(
        job_uuid=job, model=str(tiny / "meta"), algorithm_config=DEMO_LORA,
        training_config={"n_epochs": EPOCHS, "max_steps_per_epoch": 1000, "dtype": "fp32",
                         "data_config": {"dataset_id": "toy", "batch_size": 4, "shuffle": True,
                                         "data_format": "instruct"},
                         "optimizer_config": {"optimizer_type": "adamw", "lr": LR,
                                              "weight_decay": 0.0, "num_warmup_steps": 2}},
        hyperparam_search_config={}, logger_config={},
    )  # fmt: skip
    while (st := job_status(client, job))["status"] not in ("completed", "failed"):
        time.sleep(0.1)
    wall = time.perf_counter() - start
    assert st["status"] == "completed", st
    res = st["resources_allocated"]["result"]
    return {
        "wall_seconds": wall,
        "train_seconds": res["train_seconds"],
        "tokens_per_second": res["trained_tokens_per_second"],
        "final_loss": res["final_loss"],
        "steps": res["global_step"],
        "peak_rss_mb": res["peak_memory_mb"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-intree-"))
    tiny = make_tiny(tmp / "tiny").parent
    rows = write_jsonl(instruct_rows(ROWS), tmp / "rows.jsonl")
    (tmp / "srv").mkdir()
    server = Server(tmp / "srv").start()
    client = server.client()
    register_jsonl(client, "toy", str(rows))
    runs: dict[str, list[dict]] = {"in-tree inline::torchtune": [], "this provider (server)": []}
    try:
        for r in range(args.repeats):
            runs["in-tree inline::torchtune"].append(run_intree(tiny, rows, tmp, r))
            runs["this provider (server)"].append(run_ours(client, tiny, f"ours-{r}"))
            print({k: round(v[-1]["wall_seconds"], 2) for k, v in runs.items()})
    finally:
        server.stop()
    result = {"rows": ROWS, "epochs": EPOCHS, "repeats": args.repeats, "runs": {}}
    for name, items in runs.items():
        last = items[-1]
        result["runs"][name] = {
            "wall_seconds": summary([i["wall_seconds"] for i in items]),
            "train_seconds": summary([i["train_seconds"] for i in items]),
            "tokens_per_second": summary([i["tokens_per_second"] for i in items])["median"],
            "peak_rss_mb": round(max(i["peak_rss_mb"] for i in items), 1),
            "final_loss": round(last["final_loss"], 4),
            "steps": last["steps"],
        }
    save("intree", result)


if __name__ == "__main__":
    main()
