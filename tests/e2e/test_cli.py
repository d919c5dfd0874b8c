"""The installed `llama-stack-kfp` command (the venv's console script, run as a process) against
one real `llama stack run` server shared by this module: upstream's commands and options, `watch`
exit codes, `logs`, `plot`, `--output json`, YAML config files, and its failures."""

from __future__ import annotations

import json
import os
import re
import subprocess

import pytest
import yaml

from harness.demo_data import DEMO_LORA, instruct_rows
from harness.server import BIN, Server
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.boundary.files import tail
from llama_stack_provider_kfp.client import job_status
from llama_stack_provider_kfp.core.outputs import LOG_TAIL_LINES

from .helpers import new_id, register_rows

pytestmark = pytest.mark.e2e

CLI = str(BIN / "llama-stack-kfp")


def kfp(*args: str, endpoint: str | None, timeout: float = 300, **env: str):
    cmd = [CLI, *(["--endpoint", endpoint] if endpoint else []), "post_training", *args]
    return subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **env}
    )


@pytest.fixture(scope="module")
def srv(tmp_path_factory, pauses):
    # Two jobs at once: the cancel test's job must not wait behind another.
    env = {"KFP_MAX_CONCURRENT_JOBS": "2", **pauses.env}
    s = Server(tmp_path_factory.mktemp("cli-server"), env=env)
    yield s.start()
    s.cleanup()


@pytest.fixture(scope="module")
def done_job(srv, tiny_models, tmp_path_factory):
    """A finished LoRA job, submitted with upstream's options (inline JSON configs)."""
    client = srv.client()
    ds = register_rows(client, tmp_path_factory.mktemp("cli-data"), instruct_rows(16))
    job = new_id("cli")
    training = {
        "n_epochs": 1,
        "max_steps_per_epoch": 3,
        "gradient_accumulation_steps": 1,
        "dtype": "fp32",
        "data_config": {"dataset_id": ds, "batch_size": 4, "shuffle": True,
                        "data_format": "instruct"},
        "optimizer_config": {"optimizer_type": "adamw", "lr": 2e-2, "weight_decay": 0.0,
                             "num_warmup_steps": 1},
    }  # fmt: skip
    sub = kfp(
        "supervised_fine_tune", "--job-uuid", job, "--model", str(tiny_models / "hf"),
        "--algorithm-config", json.dumps(DEMO_LORA), "--training-config", json.dumps(training),
        endpoint=srv.base_url,
    )  # fmt: skip
    assert sub.returncode == 0, sub.stderr
    assert sub.stdout.strip() == job  # upstream prints the job's id
    watched = kfp("watch", "--job-uuid", job, "--interval", "0.2", endpoint=srv.base_url)
    return {"job": job, "watch": watched, "client": client}


def test_watch_exits_0_when_the_job_completes(done_job):
    watched = done_job["watch"]
    assert watched.returncode == 0, watched.stdout + watched.stderr
    assert f"job {done_job['job']}: completed" in watched.stdout
    assert "checkpoint epoch 1:" in watched.stdout
    # No stage configured: the two it ran, completed.
    assert re.search(r"^stages: prepare-data ✓( \S+s)?, train ✓( \S+s)?$", watched.stdout, re.M)


def test_read_commands_text_and_json(srv, done_job):
    job, url = done_job["job"], srv.base_url
    listed = kfp("list", endpoint=url)
    assert listed.returncode == 0 and job in listed.stdout.split()
    assert {"job_uuid": job} in json.loads(kfp("list", "--output", "json", endpoint=url).stdout)

    st = json.loads(kfp("status", "--job-uuid", job, "--output", "json", endpoint=url).stdout)
    assert st == job_status(done_job["client"], job)  # the server's answer, unchanged
    assert st["status"] == "completed" and st["resources_allocated"]["progress"]["step"] == 3
    text = kfp("status", "--job-uuid", job, endpoint=url)
    assert text.returncode == 0 and "completed" in text.stdout and "step 3/3" in text.stdout
    assert re.search(r"^stages +prepare-data ✓( \S+s)?, train ✓( \S+s)? *$", text.stdout, re.M)
    assert "evaluation" not in text.stdout and "registry" not in text.stdout

    found = json.loads(kfp("artifacts", "--job-uuid", job, "--output", "json", endpoint=url).stdout)
    assert [c["epoch"] for c in found["checkpoints"]] == [1]
    text = kfp("artifacts", "--job-uuid", job, endpoint=url).stdout
    assert f"epoch 1: {found['checkpoints'][0]['path']}" in text


def test_logs_show_the_tail_of_the_jobs_log(srv, done_job):
    job = done_job["job"]
    got = kfp("logs", "--job-uuid", job, "--output", "json", endpoint=srv.base_url)
    got = json.loads(got.stdout)
    # Locally the status reads the worker's log file: the CLI shows its last lines.
    expected = tail(srv.jobs_dir / job / "worker.log", LOG_TAIL_LINES, 32768)
    assert got["status"] == "completed" and got["log_tail"] == expected
    assert len(expected) == LOG_TAIL_LINES  # the log is longer than the tail: it is bounded
    assert not any("\x1b[" in line for line in expected)  # kfp.local's colours are gone
    text = kfp("logs", "--job-uuid", job, "--lines", "5", endpoint=srv.base_url)
    assert text.stdout.splitlines() == expected[-5:]


def test_plot_writes_the_loss_curve(srv, done_job, tmp_path):
    job = done_job["job"]
    out = tmp_path / "loss.png"
    got = kfp("plot", "--job-uuid", job, "--out", str(out), "--output", "json",
              endpoint=srv.base_url)  # fmt: skip
    assert got.returncode == 0, got.stderr
    history = job_status(done_job["client"], job)["resources_allocated"]["loss_history"]
    assert json.loads(got.stdout) == {"job_uuid": job, "path": str(out), "points": len(history)}
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_yaml_config_file_with_flags_over_it(srv, tiny_models, tmp_path):
    """--training-config @file.yaml; flags override its fields; --data registers the rows."""
    config = tmp_path / "training.yaml"
    config.write_text(yaml.safe_dump({
        "n_epochs": 3, "max_steps_per_epoch": 100, "dtype": "fp32",
        "data_config": {"batch_size": 4, "shuffle": False, "data_format": "instruct"},
        "optimizer_config": {"optimizer_type": "adamw", "lr": 2e-2, "weight_decay": 0.0,
                             "num_warmup_steps": 0},
    }))  # fmt: skip
    rows = write_jsonl(instruct_rows(12), tmp_path / "rows.jsonl")
    board = tmp_path / "board"
    tracking = tmp_path / "tracking.yaml"
    tracking.write_text(yaml.safe_dump({"tensorboard": {"log_dir": str(board)}}))
    job = new_id("yaml")
    got = kfp(
        "supervised_fine_tune", "--job-uuid", job, "--model", str(tiny_models / "hf"),
        "--training-config", f"@{config}", "--data", str(rows), "--lora-rank", "4",
        "--logger-config", f"@{tracking}",
        "--epochs", "1", "--max-steps-per-epoch", "2", "--watch", "--interval", "0.2",
        "--output", "json", endpoint=srv.base_url,
    )  # fmt: skip
    assert got.returncode == 0, got.stdout + got.stderr
    status = json.loads(got.stdout)
    res = status["resources_allocated"]
    assert status["job_uuid"] == job and status["status"] == "completed"
    # 1 epoch of at most 2 steps (the flags), not 3 x 100 (the file); LoRA from --lora-rank.
    assert res["progress"]["total_steps"] == 2 and res["progress"]["total_epochs"] == 1
    assert res["engine"]["name"] == "torchtune"
    record = json.loads((srv.jobs_dir / job / "job.json").read_text())
    assert record["spec"]["lora"]["rank"] == 4 and record["spec"]["lora"]["alpha"] == 8
    # --logger-config reached the job: TensorBoard events where the file said.
    assert res["tracking"]["tensorboard"]["log_dir"] == str(board)
    assert list(board.rglob("events.out.tfevents.*"))


def test_preference_optimize_from_flags(srv, tmp_path):
    from harness.tiny_families import make

    base = make("gpt2", tmp_path / "tiny-gpt2")
    rows = []
    for name in ("Ada", "Alan", "Grace", "Linus"):
        ask = {"role": "user", "content": f"Greet {name}."}
        rows.append({"prompt": ask["content"],
                     "chosen": [ask, {"role": "assistant", "content": f"Hello, {name}!"}],
                     "rejected": [ask, {"role": "assistant", "content": "Go away."}]})  # fmt: skip
    data = write_jsonl(rows, tmp_path / "pairs.jsonl")
    job = new_id("dpo")
    got = kfp(
        "preference_optimize", "--job-uuid", job, "--finetuned-model", str(base),
        "--data", str(data), "--beta", "0.2", "--batch-size", "2", "--max-steps-per-epoch", "2",
        "--lr", "1e-3", "--watch", "--interval", "0.2", "--output", "json",
        endpoint=srv.base_url,
    )  # fmt: skip
    assert got.returncode == 0, got.stdout + got.stderr
    res = json.loads(got.stdout)["resources_allocated"]
    assert res["engine"]["name"] == "huggingface" and "reward_margin" in res["progress"]
    spec = json.loads((srv.jobs_dir / job / "job.json").read_text())["spec"]
    assert spec["dpo"] == {"beta": 0.2, "loss_type": "sigmoid"}
    assert spec["optim"]["lr"] == 1e-3


def test_osft_from_flags(srv, tmp_path):
    """OSFT through the CLI and the server: the flags become hyperparam_search_config["kfp"],
    the job trains on the huggingface engine, its status shows the decomposition, and its
    epochs are plain weights (no adapter)."""
    from harness.tiny_families import make

    base = make("gpt2", tmp_path / "tiny-gpt2")  # Conv1D matrices, a fused c_attn
    data = write_jsonl(instruct_rows(12), tmp_path / "rows.jsonl")
    job = new_id("osft")
    got = kfp(
        "supervised_fine_tune", "--job-uuid", job, "--model", str(base), "--data", str(data),
        "--osft-ratio", "0.5", "--osft-modules", "q_proj,mlp.c_fc", "--epochs", "2",
        "--max-steps-per-epoch", "3", "--lr", "2e-3", "--watch", "--interval", "0.2",
        "--output", "json", endpoint=srv.base_url,
    )  # fmt: skip
    assert got.returncode == 0, got.stdout + got.stderr
    status = json.loads(got.stdout)
    res = status["resources_allocated"]
    assert status["status"] == "completed" and res["engine"]["name"] == "huggingface"
    assert "with osft" in res["engine"]["reason"]
    osft = res["osft"]  # the decomposition, as the progress published it
    assert osft["matrices"] == 4 and osft["unfreeze_rank_ratio"] == 0.5
    assert 0 < osft["frozen_directions"] < osft["directions"]
    assert res["result"]["final_loss"] < res["result"]["first_loss"]
    spec = json.loads((srv.jobs_dir / job / "job.json").read_text())["spec"]
    assert spec["lora"] is None and spec["osft"] == {
        "unfreeze_rank_ratio": 0.5, "requested_modules": ["q_proj", "mlp.c_fc"],
        "target_modules": ["attn.c_attn", "mlp.c_fc"], "freeze_non_targets": False}  # fmt: skip
    epochs = status["checkpoints"]
    assert [c["epoch"] for c in epochs] == [1, 2]
    assert all(os.path.isdir(os.path.join(c["path"], "merged")) for c in epochs)
    assert not any(os.path.exists(os.path.join(c["path"], "adapter")) for c in epochs)
    log = kfp("logs", "--job-uuid", job, endpoint=srv.base_url)
    assert re.search(r"osft: 4 matrices, \d+ of \d+ singular directions frozen", log.stdout)


def test_watch_exits_1_when_the_job_fails(srv, tiny_models, tmp_path):
    rows = instruct_rows(130)
    rows[114] = {"chat_completion_input": "not json", "expected_answer": "x"}  # past the sample
    ds = register_rows(srv.client(), tmp_path, rows)
    job = new_id("bad")
    sub = kfp("supervised_fine_tune", "--job-uuid", job, "--model", str(tiny_models / "hf"),
              "--dataset-id", ds, "--max-steps-per-epoch", "2", "--lora-rank", "4",
              endpoint=srv.base_url)  # fmt: skip
    assert sub.returncode == 0, sub.stderr
    watched = kfp("watch", "--job-uuid", job, "--interval", "0.2", endpoint=srv.base_url)
    assert watched.returncode == 1, watched.stdout + watched.stderr
    assert "failed" in watched.stdout and "row 115" in watched.stdout
    logs = kfp("logs", "--job-uuid", job, endpoint=srv.base_url)
    assert logs.returncode == 0 and "prepare-data" in logs.stdout


def test_watch_exits_2_when_the_job_is_cancelled(srv, pauses, tiny_models, tmp_path):
    client = srv.client()
    ds = register_rows(client, tmp_path, instruct_rows(8))
    job = new_id("stop")
    pauses.arm(job, "train.step:1")  # running until cancelled, however fast the machine
    sub = kfp("supervised_fine_tune", "--job-uuid", job, "--model", str(tiny_models / "hf"),
              "--dataset-id", ds, "--batch-size", "4", "--epochs", "1", "--lora-rank", "4",
              endpoint=srv.base_url)  # fmt: skip
    assert sub.returncode == 0, sub.stderr
    watcher = subprocess.Popen(
        [CLI, "--endpoint", srv.base_url, "post_training", "watch", "--job-uuid", job,
         "--interval", "0.2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        pauses.wait(job, "train.step:1", going=lambda: watcher.poll() is None)
        # Still running when --timeout runs out: exit 3, and the job goes on.
        brief = kfp("watch", "--job-uuid", job, "--interval", "0.1", "--timeout", "0.2",
                    endpoint=srv.base_url)  # fmt: skip
        assert brief.returncode == 3 and "still in_progress" in brief.stderr, brief.stderr
        cancelled = kfp("cancel", "--job-uuid", job, endpoint=srv.base_url)
        assert cancelled.returncode == 0, cancelled.stderr
        out, err = watcher.communicate(timeout=120)
    finally:
        watcher.kill()
    assert watcher.returncode == 2, out + err
    assert f"job {job}: cancelled" in out


def test_unknown_job_is_a_clear_message_and_exit_4(srv):
    for command in ("status", "watch", "logs", "artifacts", "cancel", "plot"):
        got = kfp(command, "--job-uuid", "no-such-job", endpoint=srv.base_url)
        assert got.returncode == 4, (command, got.stdout, got.stderr)
        assert "no training job 'no-such-job'" in got.stderr and "Traceback" not in got.stderr


def test_refused_request_says_why(srv, tmp_path):
    got = kfp("preference_optimize", "--finetuned-model", str(tmp_path / "no-model"),
              "--dataset-id", "nothing-registered", endpoint=srv.base_url)  # fmt: skip
    assert got.returncode == 4 and "HTTP 400" in got.stderr, got.stderr
    assert "Traceback" not in got.stderr
    usage = kfp("supervised_fine_tune", "--model", "m", "--training-config", "{oops",
                endpoint=srv.base_url)  # fmt: skip
    assert usage.returncode == 64 and "not valid JSON" in usage.stderr


def test_unreachable_server_says_what_to_check(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # nothing listens once closed
    got = kfp("list", endpoint=dead, timeout=60)
    assert got.returncode == 4, got.stderr
    assert f"cannot reach the llama-stack server at {dead}" in got.stderr
    assert "Check that the server is running" in got.stderr and "Traceback" not in got.stderr


def test_endpoint_from_the_client_config_file(srv, tmp_path):
    """~/.llama/client/config.yaml, as llama-stack-client's CLI reads it."""
    home = tmp_path / "home"
    (home / ".llama" / "client").mkdir(parents=True)
    (home / ".llama" / "client" / "config.yaml").write_text(f"endpoint: {srv.base_url}\n")
    got = kfp("list", "--output", "json", endpoint=None, HOME=str(home))
    assert got.returncode == 0, got.stderr
    assert isinstance(json.loads(got.stdout), list)
