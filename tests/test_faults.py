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
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.boundary.job_outputs import JobOutputs
from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
from llama_stack_provider_kfp.core.locations import parse
from llama_stack_provider_kfp.core.spec import (
    DataSpec,
    EngineChoice,
    JobSpec,
    OptimSpec,
    TrainSpec,
)
from llama_stack_provider_kfp.training.prepare import prepare
from llama_stack_provider_kfp.training.steps import train_step


def _spec(
    model: Path, work: Path, out: Path, epochs: int, job: str = "disk", **train: object
) -> JobSpec:
    return JobSpec(
        job_uuid=job, engine=EngineChoice(name="huggingface", reason="test"),
        model=inspect_model_dir("qwen2", model),
        data=DataSpec(uri=str(write_jsonl(instruct_rows(8), work / "rows.jsonl")),
                      data_format="instruct"),
        train=TrainSpec(epochs=epochs, max_steps_per_epoch=None, gradient_accumulation_steps=1,
                        shuffle=False, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=256, seed=1, device="cpu",
                        **{"batch_size": 4, **train}),
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


def test_train_step_killed_from_outside_says_so_and_resumes(pauses, tmp_path):
    """The OOM killer's way (SIGKILL, no error.json): the job's reason comes from the task's
    exit status, with its peak memory; the step checkpoint before the kill resumes."""
    import os
    import signal
    import sys
    from datetime import UTC, datetime

    from llama_stack_provider_kfp.jobs.record import JobRecord
    from llama_stack_provider_kfp.jobs.store import JobStore, read_worker_state

    model = make("qwen2", tmp_path / "qwen2")
    store = JobStore(tmp_path / "work")
    job = "oom-kill"
    job_dir = store.reserve(job)
    # 4 steps, each saved
    spec = _spec(
        model, tmp_path, job_dir / "output", 1, job, batch_size=2, checkpoint_every_steps=1
    )
    store.save(JobRecord(job_uuid=job, spec=spec, scheduled_at=datetime.now(UTC)))
    pauses.arm(job, "train.step:2")
    worker = subprocess.Popen(
        [sys.executable, "-m", "llama_stack_provider_kfp.backends.local.worker", str(job_dir)],
        cwd=job_dir, env={**os.environ, **pauses.env}, stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        pid = pauses.wait(job, "train.step:2", going=lambda: worker.poll() is None)
        os.kill(pid, signal.SIGKILL)
        assert worker.wait(120) == 1
    finally:
        if worker.poll() is None:
            worker.kill()
    assert not (job_dir / "output" / "error.json").exists()  # nothing written by the step
    state = read_worker_state(job_dir)
    assert state is not None and state.status == "failed" and state.error is not None
    message = state.error.message
    assert state.error.step == "train"
    assert "the train step was killed (signal 9, likely out of memory)" in message
    peak = float(message.split("peak memory was ")[1].split(" MB")[0])
    assert peak > 100  # a python with torch and a model: far more than the shell around it
    step_1 = str(job_dir / "output" / "checkpoints" / "step_1")
    assert f"checkpoint_dir is {step_1!r} (optimizer step 1)" in message

    # What was saved before the kill resumes: a new job continues from it to the end.
    again = _spec(model, tmp_path, tmp_path / "again", 1, "resumed", batch_size=2,
                  checkpoint_every_steps=1).model_copy(update={"resume_from": step_1})  # fmt: skip
    result = _train(again, model, tmp_path)
    assert result["global_step"] == 4 and result["resumed_from"]["step"] == 1
