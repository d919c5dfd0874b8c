"""Faults injected into the train step (no server): what the job says, and that nothing
already stored is lost.

The disk-full test mounts a small tmpfs (CI runs as root here); a refused mount fails the
test rather than skipping it, so the fault is always tried."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from harness.demo_data import instruct_rows
from harness.tiny_families import make
from llama_stack_provider_kfp.core.data_uri import write_jsonl
from llama_stack_provider_kfp.core.locations import parse
from llama_stack_provider_kfp.core.model_source import inspect_model_dir
from llama_stack_provider_kfp.core.outputs import JobOutputs
from llama_stack_provider_kfp.core.spec import (
    DataSpec,
    EngineChoice,
    JobSpec,
    OptimSpec,
    TrainSpec,
)
from llama_stack_provider_kfp.training.prepare import prepare
from llama_stack_provider_kfp.training.steps import train_step


def _spec(model: Path, work: Path, out: Path, epochs: int) -> JobSpec:
    return JobSpec(
        job_uuid="disk", engine=EngineChoice(name="huggingface", reason="test"),
        model=inspect_model_dir("qwen2", model),
        data=DataSpec(uri=str(write_jsonl(instruct_rows(8), work / "rows.jsonl")),
                      data_format="instruct"),
        train=TrainSpec(epochs=epochs, max_steps_per_epoch=None, gradient_accumulation_steps=1,
                        batch_size=4, shuffle=False, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=256, seed=1, device="cpu"),
        lora=None, optim=OptimSpec(type="adamw", lr=1e-3, weight_decay=0.0, warmup_steps=0),
        output_format="huggingface", output_uri=str(out),
    )  # fmt: skip


def _train(spec: JobSpec, model: Path, work: Path) -> dict:
    train, val = str(work / "t.jsonl"), str(work / "v.jsonl")
    prepare(spec, train, val)
    return train_step(spec.model_dump_json(), str(model), spec.output_uri, train, val)


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


@pytest.fixture
def small_disk(tmp_path):
    """Mount a tmpfs of a given size; unmounted at the end."""
    mounted: list[Path] = []

    def mount(size: int) -> Path:
        where = tmp_path / "disk"
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       check=True)  # fmt: skip
        mounted.append(where)
        return where

    yield mount
    for where in mounted:
        subprocess.run(["umount", str(where)], check=False)


def test_disk_full_while_writing_a_checkpoint(small_disk, tmp_path):
    model = make("qwen2", tmp_path / "qwen2")
    # One epoch on a roomy disk: what one checkpoint (and everything beside it) takes.
    roomy = _spec(model, tmp_path, tmp_path / "roomy", epochs=1)
    _train(roomy, model, tmp_path)
    one = _size(tmp_path / "roomy")
    checkpoint = _size(tmp_path / "roomy" / "checkpoints" / "epoch_1")
    # A disk with room for the first epoch's checkpoint and half of the second's.
    disk = small_disk(one + checkpoint // 2)
    spec = _spec(model, tmp_path, disk / "out", epochs=2)
    with pytest.raises(OSError, match="is full"):
        _train(spec, model, tmp_path)

    error = json.loads((disk / "out" / "error.json").read_text())["message"]
    assert f"the disk holding {disk / 'out'} is full: checkpoint epoch_2 needs about" in error
    assert "MiB is free" in error and "earlier checkpoints are intact" in error
    # What was stored before is intact; nothing half-written is listed or left.
    names = {c.name for c in JobOutputs(parse(str(disk / "out"))).checkpoints()}
    assert names == {"epoch_1"}
    assert sorted(p.name for p in (disk / "out" / "checkpoints").iterdir()) == ["epoch_1"]
    epoch = disk / "out" / "checkpoints" / "epoch_1"
    assert abs(_size(epoch) - checkpoint) < 1024  # the same files (metrics.json's numbers aside)
    assert json.loads((epoch / "metrics.json").read_text())["epoch"] == 1
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(epoch / "merged")  # loads: not damaged
