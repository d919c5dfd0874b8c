"""Shared pieces of the benchmarks: machine facts, the tiny model and job, statistics."""

from __future__ import annotations

import json
import logging
import os
import platform
import statistics
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import psutil

from harness.server import ROOT
from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
from llama_stack_provider_kfp.core.spec import DataSpec, JobSpec, LoraSpec, OptimSpec, TrainSpec

# bench/run.sh --quick writes to bench/results/quick/, never over the committed full run.
RESULTS = Path(os.environ.get("BENCH_RESULTS") or ROOT / "bench" / "results")
logging.getLogger("httpx").setLevel(logging.WARNING)
MODEL = {"layers": 2, "dim": 64, "heads": 4, "kv_heads": 2, "vocab": 128256}
BATCH, SEQ_LEN, LR = 4, 128, 2e-2


def machine() -> dict:
    return {
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB, no GPU",
        "python": platform.python_version(),
        "versions": {p: version(p) for p in ("torch", "torchtune", "kfp", "llama-stack")},
        "model": MODEL,
        "batch_size": BATCH,
        "max_seq_len": SEQ_LEN,
        "dtype": "fp32",
    }


def make_tiny(dest: Path) -> Path:
    if not (dest / "hf" / "config.json").is_file():
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "make-tiny-model.py"), "--out", str(dest)],
            check=True,
            capture_output=True,
        )
    return dest / "hf"


def job_spec(model_dir: Path, data: Path, out: Path, epochs: int) -> JobSpec:
    model = inspect_model_dir("tiny", model_dir)
    return JobSpec(
        job_uuid="bench",
        model=model,
        data=DataSpec(uri=str(data), data_format="instruct"),
        train=TrainSpec(epochs=epochs, max_steps_per_epoch=None, gradient_accumulation_steps=1,
                        batch_size=BATCH, shuffle=True, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=SEQ_LEN, seed=42, device="cpu"),
        lora=LoraSpec(rank=8, alpha=16, attn_modules=["q_proj", "v_proj"], apply_to_mlp=True,
                      apply_to_output=False),
        optim=OptimSpec(type="adamw", lr=LR, weight_decay=0.0, warmup_steps=2),
        output_format=model.layout,
        output_uri=str(out),
    )  # fmt: skip


def summary(values: list[float]) -> dict:
    values = sorted(values)
    return {
        "median": round(statistics.median(values), 3),
        "min": round(values[0], 3),
        "max": round(values[-1], 3),
        "n": len(values),
    }


def paired_verdict(paired: list[float], target: float) -> str:
    """What n paired ratios can tell: the target is met (or missed) only when every ratio is on
    the same side of it; otherwise the difference is inside this machine's noise."""
    if min(paired) >= target:
        return f"met: every paired ratio is at or above {target}"
    if max(paired) < target:
        return f"missed: every paired ratio is below {target}"
    return f"inconclusive: the paired ratios span {target} (inside the noise)"


def save(name: str, result: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({**machine(), **result}, indent=2))
    print(f"wrote {path}")
    return path
