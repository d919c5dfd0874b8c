"""Resumable jobs through the real server (local mode, Hugging Face engine, tiny model, CPU):
a train step killed with SIGKILL mid-epoch is resumed as a new job from its newest periodic
checkpoint and ends where an uninterrupted run ends; SIGTERM saves a checkpoint and fails
the job naming it; a cancel saves nothing; requests that cannot continue a checkpoint are
refused at submit. Each acts on its job where a pause point (boundary.pause_points) holds it, so
the job cannot run past that point first on a fast machine.

Tolerance: both runs take the same steps on the same batches in fp32 on the CPU with the
same seed, so the final losses agree to 1e-5 (they are bitwise equal here; the tolerance
covers kernels that pick a different summation order between processes).
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import psutil
import pytest
import torch
from model_checks import logits

from harness.demo_data import instruct_rows
from harness.server import Server
from harness.tiny_families import make
from llama_stack_provider_kfp.client import job_artifacts, job_status

from .helpers import LORA, new_id, register_rows, submit, training_config, wait_done

pytestmark = pytest.mark.e2e

EVERY = 6  # checkpoint_every_steps of the server under test
ROWS = 24  # batch 1: 24 optimizer steps an epoch, 48 in all
LOSS_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def srv(tmp_path_factory, pauses):
    env = {"KFP_CHECKPOINT_EVERY_STEPS": str(EVERY), "KFP_KEEP_STEP_CHECKPOINTS": "2",
           "HF_HUB_OFFLINE": "1", **pauses.env}  # fmt: skip
    server = Server(tmp_path_factory.mktemp("resume-server"), env=env).start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def client(srv):
    return srv.client()


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    return make("qwen2", tmp_path_factory.mktemp("qwen2") / "model")


@pytest.fixture(scope="module")
def dataset(client, tmp_path_factory) -> str:
    return register_rows(client, tmp_path_factory.mktemp("rows"), instruct_rows(ROWS, seed=5))


def _tc(dataset: str, **over) -> dict:
    cfg = training_config(dataset, n_epochs=2, data_config={"batch_size": 1})
    cfg["optimizer_config"]["lr"] = 5e-3
    for key, value in over.items():
        if isinstance(value, dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def _out(srv: Server, job: str) -> Path:
    return srv.jobs_dir / job / "output"


def _submit_paused(client, pauses, job: str, base: Path, dataset: str, point: str):
    """Submit with `point` armed; the job's train step process, once paused there."""
    pauses.arm(job, point)
    submit(client, job, str(base), dataset, training_config=_tc(dataset))

    def running() -> bool:
        return job_status(client, job)["status"] in ("scheduled", "in_progress")

    return psutil.Process(pauses.wait(job, point, going=running))


def _step_checkpoints(out: Path) -> list[int]:
    root = out / "checkpoints"
    if not root.is_dir():
        return []
    return sorted(int(p.parent.name[5:]) for p in root.glob("step_*/metrics.json"))


def _history(status: dict) -> list[list[float]]:
    return status["resources_allocated"]["loss_history"]


def test_killed_job_resumes_from_its_periodic_checkpoint(srv, client, pauses, base, dataset):
    total = 2 * ROWS
    # 1. Killed with SIGKILL mid-epoch, two steps after its first periodic checkpoint.
    killed = new_id("killed")
    proc = _submit_paused(client, pauses, killed, base, dataset, f"train.step:{EVERY + 2}")
    proc.send_signal(signal.SIGKILL)
    status = wait_done(client, killed)
    assert status["status"] == "failed"
    killed_history = _history(status)
    assert [int(s) for s, _ in killed_history] == list(range(1, EVERY + 3))
    ckpts = job_artifacts(client, killed)["checkpoints"]
    assert [c["identifier"] for c in ckpts] == [f"{killed}/step_{EVERY}"]  # mid-epoch 1
    newest, c = ckpts[0], EVERY
    assert newest["epoch"] == 1
    assert _step_checkpoints(_out(srv, killed)) == [c]

    # 2. Resumed as a new job from that checkpoint; the request is the same.
    resumed = new_id("resumed")
    submit(client, resumed, str(base), dataset, training_config=_tc(dataset),
           checkpoint_dir=newest["path"])  # fmt: skip
    status = wait_done(client, resumed)
    assert status["status"] == "completed", status["resources_allocated"]
    res = status["resources_allocated"]
    assert res["engine"]["name"] == "huggingface" and "resumes" in res["engine"]["reason"]
    assert res["resumed_from"] == {"checkpoint": newest["path"], "step": c, "in_place": False}
    history = _history(status)
    new_steps = [int(s) for s, _ in history if s > c]
    assert new_steps[0] == c + 1 and new_steps == list(range(c + 1, total + 1))
    assert res["result"]["steps_run"] == total - c
    assert res["progress"]["step"] == total
    # The loss curve continues the killed job's: the same values up to the checkpoint.
    assert [h for h in history if h[0] <= c] == [h for h in killed_history if h[0] <= c]

    # 3. An uninterrupted run of the same request ends with the same loss and weights.
    whole = new_id("whole")
    submit(client, whole, str(base), dataset, training_config=_tc(dataset))
    reference = wait_done(client, whole)
    assert reference["status"] == "completed", reference["resources_allocated"]
    final = res["result"]["final_loss"]
    assert abs(final - reference["resources_allocated"]["result"]["final_loss"]) <= LOSS_TOLERANCE
    assert _history(reference)[-1][0] == total
    # The resumed outputs load with transformers and PEFT and match the uninterrupted run's.
    last = Path(status["checkpoints"][-1]["path"])
    assert last.name == "epoch_2"
    ref_last = Path(reference["checkpoints"][-1]["path"])
    merged = logits(last / "merged")
    assert torch.allclose(logits(base, last / "adapter"), merged, atol=1e-4, rtol=0)
    assert torch.allclose(merged, logits(ref_last / "merged"), atol=1e-4, rtol=0)
    # Only the newest two step checkpoints are kept; epoch checkpoints all are.
    kept = _step_checkpoints(last.parent.parent)
    assert len(kept) == 2 and kept[-1] == total - EVERY  # step 48 is epoch 2's checkpoint
    assert sorted(p.name for p in last.parent.iterdir()) == sorted(
        ["epoch_1", "epoch_2", *[f"step_{s}" for s in kept]]
    )


@pytest.fixture(scope="module")
def stopped(srv, client, pauses, base, dataset) -> dict:
    """A job that a SIGTERM (a preemption) stopped after optimizer step 3: its status."""
    job = new_id("sigterm")
    proc = _submit_paused(client, pauses, job, base, dataset, "train.step:3")
    proc.send_signal(signal.SIGTERM)  # asks for a checkpoint at the next step boundary
    pauses.release(job, "train.step:3")
    return {"job": job, "status": wait_done(client, job)}


def test_sigterm_saves_a_checkpoint_and_names_it(srv, base, stopped):
    job, status = stopped["job"], stopped["status"]
    assert status["status"] == "failed"
    message = status["resources_allocated"]["error"]["message"]
    assert "stopped by SIGTERM after optimizer step 3 of" in message
    assert _step_checkpoints(_out(srv, job)) == [3]
    path = _out(srv, job) / "checkpoints" / "step_3"
    assert str(path) in message
    state = json.loads((path / "training_state.json").read_text())
    assert state["global_step"] == 3 and state["engine"] == "huggingface"
    assert state["base_model"] == str(base) and state["algorithm"] == "lora"
    assert (path / "training_state.pt").is_file() and (path / "adapter").is_dir()


def test_cancel_stops_at_once_and_saves_nothing(srv, client, pauses, base, dataset):
    job = new_id("cancel")
    proc = _submit_paused(client, pauses, job, base, dataset, f"train.step:{EVERY + 1}")
    client.post(f"/v1alpha/post-training/jobs/{job}/cancel", cast_to=object)
    assert wait_done(client, job)["status"] == "cancelled"
    assert not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    assert (_out(srv, job) / "cancel.json").is_file()
    # The periodic checkpoint only, none taken at the stop.
    assert _step_checkpoints(_out(srv, job)) == [EVERY]
    log = (srv.jobs_dir / job / "worker.log").read_text()
    assert "SIGTERM: saving" not in log


def test_requests_that_cannot_continue_a_checkpoint_are_refused(
    srv, client, base, dataset, stopped, tmp_path
):
    from llama_stack_client import APIStatusError

    ckpt = _out(srv, stopped["job"]) / "checkpoints" / "step_3"  # a resumable checkpoint
    cases = [
        ({"optimizer_config": {"lr": 1e-3}}, LORA, "optimizer lr"),
        ({"data_config": {"batch_size": 2}}, LORA, "batch_size"),
        ({}, None, "it trains lora and this request full"),
    ]
    for over, algo, expect in cases:
        job = new_id("refused")
        with pytest.raises(APIStatusError) as err:
            submit(client, job, str(base), dataset, training_config=_tc(dataset, **over),
                   algorithm_config=algo, checkpoint_dir=str(ckpt))  # fmt: skip
        assert err.value.status_code == 400
        assert expect in str(err.value) and "cannot be resumed" in str(err.value)
        assert not (srv.jobs_dir / job).exists()
    # A checkpoint folder without training state (as the torchtune engine writes them).
    plain = tmp_path / "epoch_1"
    (plain / "merged").mkdir(parents=True)
    (plain / "metrics.json").write_text(json.dumps({"epoch": 1}))
    with pytest.raises(APIStatusError) as err:
        submit(client, new_id("plain"), str(base), dataset, training_config=_tc(dataset),
               checkpoint_dir=str(plain))  # fmt: skip
    assert err.value.status_code == 400 and "without training state" in str(err.value)
    assert f"{plain}/merged" in str(err.value)
    assert os.path.isdir(plain)
