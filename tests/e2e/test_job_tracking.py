"""Durable, observable job tracking, through real servers and the real client.

Each test runs its own `llama stack run` on a work directory of its own, so it can kill and
restart it.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from llama_stack_client import APIConnectionError, APIStatusError

from harness.demo_data import instruct_rows
from harness.server import Server, any_alive, job_processes
from llama_stack_provider_kfp.client import cancel_job, job_status

from .helpers import new_id, register_rows, submit, training_config, wait_done

pytestmark = pytest.mark.e2e

# 12 rows, batch 4: 3 steps an epoch. The tests act on running jobs at pause points
# (boundary.pause_points), so the jobs need not be long, and mean the same on a fast GPU.
ROWS, EPOCHS = 12, 2


@pytest.fixture
def srv(tmp_path, pauses):
    servers: list[Server] = []

    def make(**env) -> Server:
        env = {**pauses.env, **{k: str(v) for k, v in env.items()}}
        s = Server(tmp_path / f"srv{len(servers)}", env=env)
        s.root.mkdir()
        servers.append(s)
        return s.start()

    yield make
    for s in servers:
        s.cleanup()


def _running(client, job: str) -> bool:
    return job_status(client, job)["status"] in ("scheduled", "in_progress")


def _paused_job(client, pauses, tiny: Path, tmp: Path, point: str = "train.step:1") -> str:
    """A job submitted with `point` armed, returned once it is paused there."""
    ds = register_rows(client, tmp, instruct_rows(ROWS))
    job = new_id("long")
    pauses.arm(job, point)
    submit(client, job, str(tiny / "hf"), ds, training_config=training_config(ds, n_epochs=EPOCHS))
    pauses.wait(job, point, going=lambda: _running(client, job))
    return job


def _record(server: Server, job: str) -> dict:
    return json.loads((server.jobs_dir / job / "job.json").read_text())


def _step(status: dict) -> int:
    return status["resources_allocated"]["progress"]["step"]


def test_server_kill9_and_restart_reattaches(srv, pauses, tiny_models, tmp_path):
    server = srv()
    client = server.client()
    job = _paused_job(client, pauses, tiny_models, tmp_path)
    worker = _record(server, job)["runner"]["pid"]

    server.kill9()
    assert psutil.pid_exists(worker)  # the job outlives the server
    server.restart()
    client = server.client()

    assert job in [j.job_uuid for j in client.alpha.post_training.job.list()]
    st = job_status(client, job)
    assert st["status"] == "in_progress" and _step(st) == 1
    # The restarted server follows the job's progress.
    pauses.arm(job, "train.step:3")
    pauses.release(job, "train.step:1")
    pauses.wait(job, "train.step:3", going=lambda: _running(client, job))
    st = job_status(client, job)
    assert st["status"] == "in_progress" and _step(st) == 3
    pauses.release(job, "train.step:3")
    st = wait_done(client, job)
    assert st["status"] == "completed", st["resources_allocated"]
    assert [c["epoch"] for c in st["checkpoints"]] == list(range(1, EPOCHS + 1))


def test_server_kill9_mid_submit_leaves_no_half_job(srv, pauses, tiny_models, tmp_path):
    """The server SIGKILLed after it reserved a job's folder and before the record was
    complete: after a restart the job is absent (its id free again), never half there."""
    import concurrent.futures

    server = srv()
    client = server.client()
    ds = register_rows(client, tmp_path, instruct_rows(ROWS))
    job = new_id("half")
    pauses.arm(job, "submit.reserved")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        sent = pool.submit(submit, client, job, str(tiny_models / "hf"), ds)
        pauses.wait(job, "submit.reserved", going=lambda: not sent.done())
        assert (server.jobs_dir / job).is_dir() and not (
            server.jobs_dir / job / "job.json"
        ).exists()
        server.kill9()
        with pytest.raises(APIConnectionError):  # the connection died with the server
            sent.result(timeout=30)
    pauses.release(job, "submit.reserved")
    server.restart()
    client = server.client()
    assert not (server.jobs_dir / job).exists()
    assert job not in [j.job_uuid for j in client.alpha.post_training.job.list()]
    with pytest.raises(APIStatusError) as err:
        job_status(client, job)
    assert err.value.status_code == 404
    submit(client, job, str(tiny_models / "hf"), ds,
           training_config=training_config(ds, n_epochs=1))  # the id is free again  # fmt: skip
    assert wait_done(client, job)["status"] == "completed"


def _training_job(srv, pauses, tiny: Path, tmp: Path, point: str = "train.step:1", **env):
    """A server with one job paused at `point`, and the pids of that job's processes."""
    server = srv(**env)
    client = server.client()
    job = _paused_job(client, pauses, tiny, tmp, point)
    return server, client, job, job_processes(server, job)


def test_worker_kill9_fails_job_with_reason(srv, pauses, tiny_models, tmp_path):
    server, client, job, pids = _training_job(srv, pauses, tiny_models, tmp_path)
    os.kill(_record(server, job)["runner"]["pid"], signal.SIGKILL)

    st = wait_done(client, job, timeout=30)
    assert st["status"] == "failed"
    error = st["resources_allocated"]["error"]
    assert "worker process exited without reporting an outcome" in error["message"]
    assert error["log_tail"]
    # The orphaned kfp.local task processes are stopped too.
    deadline = time.monotonic() + 15
    while any_alive(pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any_alive(pids)
    # The outcome is durable: still failed, with the same reason, after a restart.
    server.restart()
    again = job_status(server.client(), job)
    assert again["status"] == "failed"
    assert again["resources_allocated"]["error"]["message"] == error["message"]


def test_cancel_stops_every_process(srv, pauses, tiny_models, tmp_path):
    # Cancelled while epoch 2 is being written: all in epoch_2.partial/ but its rename.
    point = "checkpoint.write:epoch_2"
    server, client, job, pids = _training_job(srv, pauses, tiny_models, tmp_path, point)
    assert len(pids) >= 2  # the worker and at least the running task
    partial = server.jobs_dir / job / "output" / "checkpoints" / "epoch_2.partial"
    assert (partial / "merged").is_dir() and (partial / "metrics.json").is_file()

    cancel_job(client, job)
    st = job_status(client, job)
    assert st["status"] == "cancelled"
    assert not any_alive(pids)
    # The finished epoch stays; nothing half-written is presented as a checkpoint.
    assert [c["epoch"] for c in st["checkpoints"]] == [1]
    assert partial.is_dir()
    for c in st["checkpoints"]:
        assert not c["path"].endswith(".partial")
        assert (Path(c["path"]) / "merged").is_dir() and (Path(c["path"]) / "adapter").is_dir()


def test_queue_limit_order_and_restart(srv, pauses, tiny_models, tmp_path):
    server = srv(KFP_MAX_CONCURRENT_JOBS=2)
    client = server.client()
    ds = register_rows(client, tmp_path, instruct_rows(12))
    # Ids sort in the reverse of their submission order (the store lists ids sorted): a
    # scheduler that started jobs by id would start them backwards.
    jobs = [new_id(f"q{9 - i}") for i in range(6)]
    assert sorted(jobs) == jobs[::-1]
    for job in jobs[:2]:  # the first two hold their slots until released, however fast
        pauses.arm(job, "train.step:1")
    for job in jobs:
        submit(client, job, str(tiny_models / "hf"), ds,
               training_config=training_config(ds, n_epochs=1))  # fmt: skip
    statuses = [job_status(client, j)["status"] for j in jobs]
    assert statuses[2:] == ["scheduled"] * 4

    # The queue survives a crash of the server.
    server.kill9()
    server.restart()
    client = server.client()
    for job in jobs[:2]:
        pauses.release(job, "train.step:1")
    done = [wait_done(client, j) for j in jobs]
    assert [d["status"] for d in done] == ["completed"] * 6

    # Started in submission order (process start times, one clock): never earlier than a job
    # submitted before it, and the two that started before the crash strictly before the rest.
    created = [_record(server, j)["runner"]["create_time"] for j in jobs]
    assert created == sorted(created)
    assert max(created[:2]) < min(created[2:])
    # Never more than 2 at once (the workers' own start/end times, wall clock).
    spans = [(_ts(d["started_at"]), _ts(d["completed_at"])) for d in done]
    for t, _ in spans:
        running = sum(1 for s, e in spans if s <= t < e)
        assert running <= 2, spans


def _ts(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def test_training_exception_reaches_status(srv, tiny_models, tmp_path):
    # An untied Meta checkpoint whose params.json does not say so: the train step finds the
    # output weights differ from the embeddings and raises with what to change.
    import subprocess
    import sys

    from harness.server import ROOT

    out = tmp_path / "untied"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make-tiny-model.py"), "--out", str(out),
         "--layout", "meta", "--untied"],
        check=True, capture_output=True,
    )  # fmt: skip
    params = json.loads((out / "meta" / "params.json").read_text())
    del params["tie_word_embeddings"]
    (out / "meta" / "params.json").write_text(json.dumps(params))

    server = srv()
    client = server.client()
    ds = register_rows(client, tmp_path, instruct_rows(12))
    job = new_id("raise")
    submit(client, job, str(out / "meta"), ds)
    st = wait_done(client, job)
    assert st["status"] == "failed"
    error = st["resources_allocated"]["error"]
    assert error["step"] == "train"
    assert error["message"].startswith("ValueError: ")
    assert '"tie_word_embeddings": false' in error["message"]


def test_corrupt_records_do_not_stop_the_server(srv, tiny_models, tmp_path):
    server = srv()
    client = server.client()
    ds = register_rows(client, tmp_path, instruct_rows(12))
    good = new_id("good")
    submit(client, good, str(tiny_models / "hf"), ds,
           training_config=training_config(ds, n_epochs=1))  # fmt: skip
    assert wait_done(client, good)["status"] == "completed"
    server.stop()

    # A crash mid-write: a truncated record, a leftover temp file, an empty state file.
    broken = server.jobs_dir / "broken-1"
    broken.mkdir()
    (broken / "job.json").write_text(_record(server, good).__repr__()[:200])
    (server.jobs_dir / good / ".job.json.abc123.tmp").write_text('{"job_uuid": "go')
    # A record whose worker died before its first state write finished: a valid job.json
    # naming a worker that no longer exists, beside an empty state.json.
    empty_state = server.jobs_dir / "empty-state"
    empty_state.mkdir()
    record = _record(server, good)
    record["job_uuid"] = "empty-state"
    record["scheduled_at"] = "2026-11-24T00:00:00+00:00"
    record["spec"]["output_uri"] = str(empty_state / "output")
    (empty_state / "job.json").write_text(json.dumps(record))
    (empty_state / "state.json").write_text("")

    server.restart()
    client = server.client()
    listed = [j.job_uuid for j in client.alpha.post_training.job.list()]
    assert listed == ["empty-state", good, "broken-1"]  # by submission; broken: its file's time
    st = job_status(client, "broken-1")  # listed as failed with the reason, never skipped
    assert st["status"] == "failed"
    assert st["resources_allocated"]["error"]["message"].startswith("record unreadable: ")
    st = job_status(client, good)
    assert st["status"] == "completed" and len(st["checkpoints"]) == 1
    st = job_status(client, "empty-state")
    assert st["status"] == "failed"
    assert "exited without reporting an outcome" in st["resources_allocated"]["error"]["message"]


def test_shutdown_keeps_or_cancels_jobs(srv, pauses, tiny_models, tmp_path):
    # Default: a graceful stop leaves the job running; it finishes while the server is down,
    # and the restarted server reports its real outcome.
    server, _, job, _ = _training_job(srv, pauses, tiny_models, tmp_path)
    server.stop()
    worker = _record(server, job)["runner"]["pid"]
    assert psutil.pid_exists(worker)
    pauses.release(job, "train.step:1")
    state = server.jobs_dir / job / "state.json"
    deadline = time.monotonic() + 300
    while json.loads(state.read_text())["status"] != "completed":
        assert time.monotonic() < deadline, state.read_text()
        time.sleep(0.5)
    server.restart()
    st = job_status(server.client(), job)
    assert st["status"] == "completed"
    assert [c["epoch"] for c in st["checkpoints"]] == list(range(1, EPOCHS + 1))

    # cancel_jobs_on_shutdown: the stop cancels it.
    server2, _, job2, pids = _training_job(
        srv, pauses, tiny_models, tmp_path, KFP_CANCEL_JOBS_ON_SHUTDOWN="true"
    )
    server2.stop()
    assert not any_alive(pids)
    server2.restart()
    assert job_status(server2.client(), job2)["status"] == "cancelled"
