"""A train step restarted in place (the pod restarted after preemption, a KFP retry) continues
from the newest complete checkpoint in its own output location instead of step 0.

The step runs as in a pod: its output is an S3 prefix on an S3-compatible server on loopback
(moto: the stand-in for MinIO/ODF/Ceph, through real boto3). The first run is killed with
SIGKILL at a pause point (boundary.pause_points) one step after a periodic checkpoint was
uploaded; the second run of the very same call resumes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from fake_backend import spec as any_spec
from s3_server import s3_server

from harness.demo_data import instruct_rows
from harness.tiny_families import make
from llama_stack_provider_kfp.backends.kfp.placement import remote_placement
from llama_stack_provider_kfp.boundary import storage
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.boundary.job_outputs import JobOutputs
from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
from llama_stack_provider_kfp.config import RemoteConfig
from llama_stack_provider_kfp.core.locations import parse
from llama_stack_provider_kfp.core.spec import (
    DataSpec,
    EngineChoice,
    JobSpec,
    LoraSpec,
    OptimSpec,
    TrainSpec,
)
from llama_stack_provider_kfp.pipeline.definition import ComponentBuild, build_pipeline
from llama_stack_provider_kfp.training.prepare import prepare
from llama_stack_provider_kfp.training.steps import train_step

EVERY, ROWS = 4, 16  # batch 1, 2 epochs: 32 steps, a checkpoint every 4


@pytest.fixture(scope="module")
def s3():
    with s3_server() as env:
        storage.client().create_bucket(Bucket="kfp")
        yield env


def _spec(model: Path, data: Path, output_uri: str) -> JobSpec:
    return JobSpec(
        job_uuid="restart",
        engine=EngineChoice(name="huggingface", reason="test"),
        model=inspect_model_dir("tiny", model),
        data=DataSpec(uri=str(data), data_format="instruct"),
        train=TrainSpec(epochs=2, max_steps_per_epoch=None, gradient_accumulation_steps=1,
                        batch_size=1, shuffle=True, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=256, seed=3, device="cpu",
                        checkpoint_every_steps=EVERY, keep_step_checkpoints=2),
        lora=LoraSpec(rank=4, alpha=8, attn_modules=["q_proj", "v_proj"], apply_to_mlp=False,
                      apply_to_output=False),
        optim=OptimSpec(type="adamw", lr=5e-3, weight_decay=0.0, warmup_steps=1),
        output_format="huggingface",
        output_uri=output_uri,
    )  # fmt: skip


def _step_keys(prefix: str) -> list[str]:
    keys = storage.list_keys(parse(prefix))
    return sorted(
        k for k in keys if k.startswith("checkpoints/step_") and k.endswith("metrics.json")
    )


def test_restarted_step_continues_from_its_own_checkpoint(s3, pauses, tmp_path):
    base = make("qwen2", tmp_path / "qwen2")
    data = write_jsonl(instruct_rows(ROWS, seed=2), tmp_path / "rows.jsonl")
    output = "s3://kfp/jobs/restart/output"
    spec = _spec(base, data, output)
    train, val = str(tmp_path / "train.jsonl"), str(tmp_path / "val.jsonl")
    prepare(spec, train, val)
    args = [spec.model_dump_json(), str(base), output, train, val]

    # First run: the pod is killed one step after its first periodic checkpoint was uploaded.
    code = "import sys; from llama_stack_provider_kfp.training.steps import train_step; " \
           "train_step(*sys.argv[1:])"  # fmt: skip
    point = f"train.step:{EVERY + 1}"
    pauses.arm(spec.job_uuid, point)
    first = subprocess.Popen([sys.executable, "-c", code, *args], env={**os.environ, **pauses.env},
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    assert pauses.wait(spec.job_uuid, point, going=lambda: first.poll() is None) == first.pid
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert _step_keys(output) == [f"checkpoints/step_{EVERY}/metrics.json"]
    saved = JobOutputs(parse(output)).newest_resumable()
    assert saved is not None and saved.step == saved.global_step == EVERY
    assert storage.read_json(parse(f"{output}/result.json")) is None  # it never finished

    # Second run: the same call, as a restarted pod or a KFP retry makes it.
    result = train_step(*args)
    assert result["resumed_from"] == {"checkpoint": saved.path, "step": saved.step,
                                      "in_place": True}  # fmt: skip
    assert result["steps_run"] == 2 * ROWS - saved.step
    progress = JobOutputs(parse(output)).progress()
    history = [int(s) for s, _ in progress["loss_history"]]
    assert history == list(range(1, 2 * ROWS + 1))  # the curve continues, no gap or repeat

    # The same as a run never interrupted (LOSS_TOLERANCE as in tests/e2e/test_resume.py).
    whole = train_step(spec.model_dump_json(), str(base), str(tmp_path / "whole"), train, val)
    assert abs(result["final_loss"] - whole["final_loss"]) <= 1e-5
    # Pruned in S3 too: the newest two step checkpoints, every epoch checkpoint.
    names = {c.name for c in JobOutputs(parse(output)).checkpoints()}
    assert names == {"epoch_1", "epoch_2", f"step_{2 * ROWS - 2 * EVERY}",
                     f"step_{2 * ROWS - EVERY}"}  # fmt: skip
    state = json.loads(
        storage.client().get_object(Bucket="kfp", Key="jobs/restart/output/checkpoints/epoch_2/"
                                    "training_state.json")["Body"].read()
    )  # fmt: skip
    assert state["global_step"] == 2 * ROWS and state["resume_epoch"] == 3


def test_train_retries_compile_into_the_train_task(tmp_path):
    from kfp import compiler

    cfg = RemoteConfig(url="https://kfp.example", s3_bucket="kfp", train_retries=3)
    path = tmp_path / "p.yaml"
    build = ComponentBuild(base_image=cfg.image, install_kfp_package=False)
    job = any_spec("retried")
    compiler.Compiler().compile(build_pipeline(build, job, remote_placement(cfg)(None)), str(path))
    import yaml

    pipeline, _ = yaml.safe_load_all(path.read_text())
    tasks = pipeline["root"]["dag"]["tasks"]
    assert tasks["train"]["retryPolicy"]["maxRetryCount"] == 3
    assert "retryPolicy" not in tasks["prepare-data"]
