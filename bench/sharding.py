"""DDP versus FSDP2 on the Hugging Face engine, 2 CPU ranks (gloo), the same job.

A small Qwen2-architecture model (the tiny family's tokenizer, 4 layers, width 256) trains
full fine-tuning and LoRA through the train step (`training.steps.train_step`, which starts
torchrun), once with a whole copy per rank (DDP, the default on a CPU) and once sharded
(`memory_efficient_fsdp_wrap`), alternating which goes first. Reported per strategy: label
tokens/s (median of steps 2..N), rank 0's peak RSS, the parameter bytes each rank holds, the
final loss; and the paired ratio FSDP / DDP of tokens/s. This measures the sharding's cost
where it saves nothing (one host memory): it decides the default on a CPU, not on GPUs.

    python bench/sharding.py [--repeats 2] [--rows 48]
"""

from __future__ import annotations

import argparse
import json
import tempfile
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
from llama_stack_provider_kfp.training.prepare import prepare
from llama_stack_provider_kfp.training.steps import train_step

SHAPE = {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip
BATCH, SEQ_LEN = 4, 128


def model(dest: Path) -> Path:
    """The tiny Qwen2 family model, widened: its tokenizer, random weights of SHAPE."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    base = make("qwen2", dest / "tiny")
    config = AutoConfig.from_pretrained(base)
    keys = {**config.to_dict(), **SHAPE}
    keys.pop("layer_types", None)  # derived from the layer count
    config = type(config)(**keys)
    torch.manual_seed(0)
    out = dest / "qwen2-256"
    AutoModelForCausalLM.from_config(config).save_pretrained(out)
    for f in base.iterdir():
        if f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            (out / f.name).write_bytes(f.read_bytes())
    return out


def spec(model_dir: Path, data: Path, out: Path, fsdp: bool, lora: bool) -> JobSpec:
    info = inspect_model_dir("qwen2-256", model_dir)
    return JobSpec(
        job_uuid="bench", engine=EngineChoice(name="huggingface", reason="bench"), model=info,
        data=DataSpec(uri=str(data), data_format="instruct"),
        train=TrainSpec(epochs=1, max_steps_per_epoch=None, gradient_accumulation_steps=1,
                        batch_size=BATCH, shuffle=True, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=SEQ_LEN, seed=42, device="cpu",
                        ranks=2, memory_efficient_fsdp_wrap=fsdp, sharding="auto"),
        lora=LoraSpec(rank=8, alpha=16, attn_modules=["q_proj", "v_proj"], apply_to_mlp=True,
                      apply_to_output=False) if lora else None,
        optim=OptimSpec(type="adamw", lr=1e-3, weight_decay=0.0, warmup_steps=2),
        output_format="huggingface", output_uri=str(out),
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--rows", type=int, default=48)
    args = parser.parse_args()
    runs: dict[str, dict[str, list]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-sharding-") as tmp:
        work = Path(tmp)
        model_dir = model(work)
        data = write_jsonl(instruct_rows(args.rows, seed=1), work / "rows.jsonl")
        for algo in ("full", "lora"):
            for repeat in range(args.repeats):
                order = [False, True] if repeat % 2 == 0 else [True, False]
                for fsdp in order:
                    name = f"{algo}-{'fsdp' if fsdp else 'ddp'}"
                    out = work / f"{name}-{repeat}"
                    s = spec(model_dir, data, out, fsdp, algo == "lora")
                    train, val = str(work / "t.jsonl"), str(work / "v.jsonl")
                    if not Path(train).exists():
                        prepare(s, train, val)
                    r = train_step(s.model_dump_json(), str(model_dir), s.output_uri, train, val)
                    row = runs.setdefault(name, {"tps": [], "rss": [], "loss": [], "bytes": []})
                    row["tps"].append(r["trained_tokens_per_second"])
                    row["rss"].append(r["peak_memory_mb"])
                    row["loss"].append(r["final_loss"])
                    row["bytes"] = r["sharding"]["parameter_bytes_per_rank"]
                    print(name, repeat, json.dumps({k: v[-1] for k, v in row.items()
                                                    if k != "bytes"}), flush=True)  # fmt: skip
    result: dict = {"ranks": 2, "shape": SHAPE, "rows": args.rows, "strategies": {}}
    for name, row in runs.items():
        result["strategies"][name] = {
            "trained_tokens_per_second": summary(row["tps"]),
            "peak_rss_mb_rank0": summary(row["rss"]),
            "final_loss": row["loss"][0],
            "parameter_bytes_per_rank": row["bytes"],
        }
    for algo in ("full", "lora"):
        ddp, fsdp = runs[f"{algo}-ddp"]["tps"], runs[f"{algo}-fsdp"]["tps"]
        result[f"{algo}_fsdp_over_ddp"] = summary([f / d for f, d in zip(fsdp, ddp, strict=True)])
    print(json.dumps(result, indent=2))
    save("sharding", result)


if __name__ == "__main__":
    main()
