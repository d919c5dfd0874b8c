"""One contract, every backend: the same scenarios through the scheduler give the same answers
on the in-memory fake, and on the KFP backend against the KFP API stand-in
(tests/kfp_api_stub.py, with moto's S3 on loopback: no cluster runs here). The local backend
runs the same scenarios with real workers in tests/e2e/test_local_contract.py.

Each backend comes with a driver that makes its job run, finish or fail the way that backend
learns of it (the fake: by hand; KFP: the run's state in the API).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from fake_backend import FakeBackend, record, spec
from kfp_api_stub import KFPStub
from s3_server import s3_server

from llama_stack_provider_kfp.config import RemoteConfig
from llama_stack_provider_kfp.core import storage
from llama_stack_provider_kfp.core.errors import InvalidRequest
from llama_stack_provider_kfp.jobs.record import JobRecord
from llama_stack_provider_kfp.jobs.scheduler import JobScheduler
from llama_stack_provider_kfp.jobs.store import JobStore


@dataclass
class Driver:
    scheduler: JobScheduler
    backend: Any
    run: Any  # (record) -> the job is in progress
    end: Any  # (record, "completed" | "failed") -> it ended so
    output: Any = lambda job: f"/nonexistent/{job}"  # (job) -> its output location

    def submit(self, job: str, order: int = 0) -> JobRecord:
        rec = self.record(job, order)
        self.scheduler.store.reserve(job)
        self.scheduler.submit(rec)
        loaded = self.scheduler.store.load(job)
        assert loaded is not None
        return loaded

    def record(self, job: str, order: int) -> JobRecord:
        rec = record(job, order)
        out = self.output(job)
        return rec.model_copy(update={"spec": spec(job).model_copy(update={"output_uri": out})})

    def status(self, job: str) -> str:
        rec = self.scheduler.store.load(job)
        assert rec is not None
        return self.scheduler.observe(rec).status


@pytest.fixture(scope="module")
def s3_env() -> Iterator[dict[str, str]]:
    with s3_server() as env:
        storage.client().create_bucket(Bucket="kfp")
        yield env


def _fake(tmp_path) -> Driver:
    backend = FakeBackend()
    sched = JobScheduler(JobStore(tmp_path), backend, 1, start_thread=False)
    return Driver(sched, backend, run=lambda rec: None,
                  end=lambda rec, how: backend.finish(rec.job_uuid, how))  # fmt: skip


def _kfp(tmp_path, s3_env, stub: KFPStub, monkeypatch) -> Driver:
    from llama_stack_provider_kfp.backends.kfp.backend import KFPBackend

    monkeypatch.setenv("KFP_TOKEN", "contract-token")
    cfg = RemoteConfig(url=stub.url, namespace="team-a", s3_bucket="kfp", inspect_pods=False,
                       s3_endpoint_url=s3_env["AWS_ENDPOINT_URL"],
                       request_timeout_seconds=5)  # fmt: skip
    backend = KFPBackend(JobStore(tmp_path), cfg)
    sched = JobScheduler(backend.store, backend, 1, start_thread=False)

    def state(rec: JobRecord, kfp_state: str) -> None:
        fresh = sched.store.load(rec.job_uuid)
        assert fresh is not None and fresh.runner is not None
        stub.set_state(fresh.runner.run_id, kfp_state)

    def end(rec: JobRecord, how: str) -> None:
        if how == "failed":
            storage.write_json(storage_loc(backend, rec, "error.json"),
                               {"message": "step failed: boom", "step": "train"})  # fmt: skip
        state(rec, "SUCCEEDED" if how == "completed" else "FAILED")

    return Driver(sched, backend, run=lambda rec: state(rec, "RUNNING"), end=end,
                  output=lambda job: str(backend._job_prefix(job).join("output")))  # fmt: skip


def storage_loc(backend, rec: JobRecord, name: str):
    return backend._job_prefix(rec.job_uuid).join("output", name)


@pytest.fixture(params=["fake", "kfp"])
def driver(request, tmp_path, monkeypatch) -> Iterator[Driver]:
    if request.param == "fake":
        yield _fake(tmp_path)
        return
    s3_env = request.getfixturevalue("s3_env")
    stub = KFPStub()
    try:
        yield _kfp(tmp_path, s3_env, stub, monkeypatch)
    finally:
        stub.stop()


def test_a_job_runs_and_completes(driver):
    rec = driver.submit("job-a")
    assert driver.status("job-a") in ("scheduled", "in_progress")
    driver.run(rec)
    driver.scheduler.tick()
    assert driver.status("job-a") == "in_progress"
    driver.end(rec, "completed")
    driver.scheduler.tick()
    assert driver.status("job-a") == "completed"
    assert driver.scheduler.active() == set()
    with pytest.raises(InvalidRequest, match="already ended"):
        driver.scheduler.cancel("job-a")


def test_a_failed_job_says_why(driver):
    rec = driver.submit("job-f")
    driver.run(rec)
    driver.end(rec, "failed")
    driver.scheduler.tick()
    loaded = driver.scheduler.store.load("job-f")
    seen = driver.scheduler.observe(loaded)
    assert seen.status == "failed"
    if driver.backend.name != "fake":  # the fake has no step to write error.json
        assert "boom" in seen.error.message


def test_queued_job_waits_and_a_cancel_reads_at_once(driver):
    first = driver.submit("first", 0)
    driver.submit("second", 1)
    assert driver.status("second") == "scheduled"  # the limit is one
    driver.run(first)
    driver.scheduler.tick()
    assert driver.status("first") == "in_progress"
    driver.scheduler.cancel("first")
    assert driver.status("first") == "cancelled"  # not the cached in_progress
    driver.scheduler.cancel("second")
    assert driver.status("second") == "cancelled"


def test_a_cancel_that_comes_after_the_end_keeps_the_outcome(driver):
    """The race a cancel can lose: the job completed between the cancel's check and its
    record. Every backend answers `completed` (its checkpoints are whole)."""
    rec = driver.submit("racer")
    driver.run(rec)
    driver.scheduler.tick()
    driver.end(rec, "completed")
    loaded = driver.scheduler.store.load("racer")
    loaded.cancelled_at = loaded.scheduled_at.replace(year=2099)
    driver.scheduler.store.save(loaded)
    driver.scheduler.observations.invalidate("racer")
    assert driver.status("racer") == "completed"


def test_status_calls_during_dispatch_rounds_all_answer(driver):
    """200 concurrent status calls while rounds run: each gets a correct answer, and the
    status calls themselves make at most one observation (before the first round's)."""
    rec = driver.submit("busy")
    driver.run(rec)
    driver.scheduler.tick()
    stop = threading.Event()

    def rounds() -> None:
        while not stop.is_set():
            driver.scheduler.tick()

    calls = {"status": 0, "rounds": 0}
    observe = driver.scheduler.observations._observe

    def counting(r):
        calls["rounds" if threading.current_thread().name == "rounds" else "status"] += 1
        return observe(r)

    driver.scheduler.observations._observe = counting
    driver.scheduler.observations.max_age = 60.0
    t = threading.Thread(target=rounds, name="rounds")
    t.start()
    try:
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(lambda _: driver.status("busy"), range(200)))
    finally:
        stop.set()
        t.join()
    assert answers == ["in_progress"] * 200
    assert calls["rounds"] > 0
    assert calls["status"] <= 1  # the rounds' observations answered the status calls
