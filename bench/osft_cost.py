"""What OSFT costs next to full fine-tuning on one model: the SVD's time, peak memory, the
seconds per optimizer step, and the bytes of a resumable checkpoint (merged weights, and the
training state that holds the optimizer and, for OSFT, the factors).

The model has Qwen2.5-0.5B's shape (24 layers, hidden 896, MLP 4864, 14 heads, 2 KV heads),
random weights made here, with the vocabulary of the tiny tokenizer of harness/tiny_families
(a few hundred tokens: the embeddings, which OSFT does not decompose, are nearly nothing, so
the figures are those of the 168 decomposed matrices and their optimizer). Each method runs in
a fresh process through the train step (`training.steps.train_step`), fp32 on the CPU, for a
few optimizer steps.

    python bench/osft_cost.py [--layers 24] [--steps 2]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import save

from harness.demo_data import instruct_rows
from harness.tiny_families import make
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
from llama_stack_provider_kfp.core.osft_targets import resolve_osft
from llama_stack_provider_kfp.core.spec import (
    DataSpec,
    EngineChoice,
    JobSpec,
    OptimSpec,
    OSFTSpec,
    TrainSpec,
)

SHAPE = {"hidden_size": 896, "intermediate_size": 4864, "num_attention_heads": 14,
         "num_key_value_heads": 2}  # fmt: skip

RUN = """
import json, sys
from pathlib import Path
from llama_stack_provider_kfp.core.spec import JobSpec
from llama_stack_provider_kfp.training.prepare import prepare
from llama_stack_provider_kfp.training.steps import train_step
spec = JobSpec.model_validate_json(sys.argv[1])
work = Path(sys.argv[2])
prepare(spec, str(work / "t.jsonl"), str(work / "v.jsonl"))
r = train_step(spec.model_dump_json(), spec.model.path, spec.output_uri, str(work / "t.jsonl"),
               str(work / "v.jsonl"))
print(json.dumps({k: r.get(k) for k in ("peak_memory_mb", "train_seconds", "global_step",
                                        "final_loss", "osft")}))
"""


def make_model(root: Path, layers: int) -> Path:
    from transformers import AutoConfig, AutoModelForCausalLM

    path = make("qwen2", root / "qwen2-0.5b-shape")
    config = AutoConfig.from_pretrained(path)
    for key, value in {**SHAPE, "num_hidden_layers": layers}.items():
        setattr(config, key, value)
    if getattr(config, "layer_types", None):  # one per layer
        config.layer_types = [config.layer_types[0]] * layers
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    return path


def spec(model: Path, work: Path, ratio: float | None, steps: int) -> JobSpec:
    info = inspect_model_dir(model.name, model)
    osft = None
    if ratio is not None:
        targets = resolve_osft([], info.modules, info.is_tied).modules
        osft = OSFTSpec(unfreeze_rank_ratio=ratio, target_modules=targets)
    return JobSpec(
        job_uuid="osft-cost", engine=EngineChoice(name="huggingface", reason="bench"),
        model=info, data=DataSpec(uri=str(work / "rows.jsonl"), data_format="instruct"),
        train=TrainSpec(epochs=1, max_steps_per_epoch=steps, gradient_accumulation_steps=1,
                        batch_size=2, shuffle=False, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=64, seed=1, device="cpu"),
        lora=None, osft=osft,
        optim=OptimSpec(type="adamw", lr=1e-5, weight_decay=0.0, warmup_steps=0),
        output_format="huggingface", output_uri=str(work / "out"),
    )  # fmt: skip


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def measure(model: Path, ratio: float | None, steps: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="osft-cost-") as tmp:
        work = Path(tmp)
        write_jsonl(instruct_rows(2 * steps, seed=1), work / "rows.jsonl")
        job = spec(model, work, ratio, steps)
        out = subprocess.run([sys.executable, "-c", RUN, job.model_dump_json(), str(work)],
                             capture_output=True, text=True, check=True)  # fmt: skip
        result = json.loads(out.stdout.strip().splitlines()[-1])
        epoch = work / "out" / "checkpoints" / "epoch_1"
        result["merged_bytes"] = size(epoch / "merged")
        result["training_state_bytes"] = (epoch / "training_state.pt").stat().st_size
        result["method"] = "full" if ratio is None else f"osft {ratio}"
        return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=24)
    ap.add_argument("--steps", type=int, default=2)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="osft-model-") as tmp:
        model = make_model(Path(tmp), args.layers)
        rows = [measure(model, ratio, args.steps) for ratio in (None, 0.25, 0.5)]
    full = rows[0]
    for r in rows:
        mb = 2**20
        svd = (r.get("osft") or {}).get("svd_seconds")
        print(f"{r['method']:>9}: SVD {svd if svd is not None else '-':>6} s, "
              f"{r['train_seconds'] / args.steps:6.1f} s/step, peak {r['peak_memory_mb']:7.0f} MB"
              f" ({r['peak_memory_mb'] / full['peak_memory_mb']:.2f}x full), merged "
              f"{r['merged_bytes'] / mb:6.0f} MiB, training state "
              f"{r['training_state_bytes'] / mb:6.0f} MiB")  # fmt: skip
    save("osft_cost", {"model": {"shape": "Qwen2.5-0.5B", **SHAPE, "layers": args.layers},
                       "batch_size": 2, "max_seq_len": 64, "steps": args.steps,
                       "runs": rows})  # fmt: skip


if __name__ == "__main__":
    main()
