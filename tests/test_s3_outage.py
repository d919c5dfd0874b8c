"""S3 going away while a step uploads (RestartableS3: the in-process loopback S3 stopped and
started again on its port, objects kept): uploads are tried again with backoff within the
bound (KFP_S3_RETRY_SECONDS), then the step fails naming the endpoint; what was uploaded
before is intact."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from s3_server import RestartableS3

from harness.demo_data import instruct_rows
from harness.tiny_families import make
from llama_stack_provider_kfp.boundary import storage
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.boundary.job_outputs import JobOutputs
from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
from llama_stack_provider_kfp.core.errors import Unavailable
from llama_stack_provider_kfp.core.locations import parse
from llama_stack_provider_kfp.core.spec import DataSpec, EngineChoice, JobSpec, OptimSpec, TrainSpec
from llama_stack_provider_kfp.training.io import Output
from llama_stack_provider_kfp.training.prepare import prepare


@pytest.fixture
def s3(monkeypatch):
    server = RestartableS3()
    server.start()
    env = {"AWS_ENDPOINT_URL": server.endpoint, "AWS_ACCESS_KEY_ID": "test-access-key",
           "AWS_SECRET_ACCESS_KEY": "test-secret", "AWS_DEFAULT_REGION": "us-east-1"}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    storage.client().create_bucket(Bucket="kfp")
    yield server
    server.stop()


def test_an_upload_waits_for_s3_to_come_back(s3, tmp_path, monkeypatch):
    monkeypatch.setenv(storage.RETRY_ENV, "60")
    out = Output("s3://kfp/jobs/a/output")
    (out.local / "before.json").write_text("{}")
    out.push("before.json")
    s3.stop()
    (out.local / "after.json").write_text('{"n": 1}')
    back = threading.Timer(1.5, s3.start)  # comes back while the upload is being retried
    back.start()
    try:
        out.push("after.json")
    finally:
        back.join()
    keys = storage.list_keys(parse("s3://kfp/jobs/a/output"))
    assert sorted(keys) == ["after.json", "before.json"]
    assert storage.read_json(parse("s3://kfp/jobs/a/output/after.json")) == {"n": 1}


def test_an_upload_gives_up_after_the_bound_naming_the_endpoint(s3, tmp_path, monkeypatch):
    monkeypatch.setenv(storage.RETRY_ENV, "1")
    out = Output("s3://kfp/jobs/b/output")
    (out.local / "f.json").write_text("{}")
    s3.stop()
    with pytest.raises(Unavailable) as raised:
        out.push("f.json")
    message = str(raised.value)
    assert message.startswith(
        f"S3 at {s3.endpoint} could not be reached for uploading s3://kfp/jobs/b/output/f.json"
    )
    assert "gave up after" in message and "KFP_S3_RETRY_SECONDS=1" in message
    attempts = int(message.split("gave up after ")[1].split(" attempts")[0])
    assert attempts >= 2  # tried again before giving up


def test_train_step_fails_naming_s3_and_keeps_the_checkpoint_uploaded_before(s3, pauses, tmp_path):
    model = make("qwen2", tmp_path / "qwen2")
    output = "s3://kfp/jobs/outage/output"
    spec = JobSpec(
        job_uuid="outage", engine=EngineChoice(name="huggingface", reason="test"),
        model=inspect_model_dir("qwen2", model),
        data=DataSpec(uri=str(write_jsonl(instruct_rows(8), tmp_path / "rows.jsonl")),
                      data_format="instruct"),
        train=TrainSpec(epochs=2, max_steps_per_epoch=None, gradient_accumulation_steps=1,
                        batch_size=4, shuffle=False, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=256, seed=1, device="cpu"),
        lora=None, optim=OptimSpec(type="adamw", lr=1e-3, weight_decay=0.0, warmup_steps=0),
        output_format="huggingface", output_uri=output,
    )  # fmt: skip
    train, val = str(tmp_path / "t.jsonl"), str(tmp_path / "v.jsonl")
    prepare(spec, train, val)
    code = "import sys; from llama_stack_provider_kfp.training.steps import train_step; " \
           "train_step(*sys.argv[1:])"  # fmt: skip
    # Paused with the second epoch's checkpoint written here and not yet uploaded.
    point = "checkpoint.write:epoch_2"
    pauses.arm(spec.job_uuid, point)
    step = subprocess.Popen(
        [sys.executable, "-c", code, spec.model_dump_json(), str(model), output, train, val],
        env={**os.environ, **pauses.env, storage.RETRY_ENV: "1"},
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        pauses.wait(spec.job_uuid, point, going=lambda: step.poll() is None)
        s3.stop()
        pauses.release(spec.job_uuid, point)
        log, _ = step.communicate(timeout=120)
    finally:
        if step.poll() is None:
            step.kill()
    assert step.returncode != 0
    assert f"S3 at {s3.endpoint} could not be reached for uploading {output}/checkpoints/" \
           "epoch_2/" in log  # fmt: skip
    assert "what was uploaded before is kept" in log

    s3.start()
    outputs = JobOutputs(parse(output))
    assert [c.name for c in outputs.checkpoints()] == ["epoch_1"]  # epoch_2 not half-listed
    epoch_1 = Path(tmp_path / "epoch_1")
    storage.download_prefix(parse(f"{output}/checkpoints/epoch_1"), epoch_1)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(epoch_1 / "merged")  # intact: it loads
