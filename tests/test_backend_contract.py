"""One contract, every backend: the same scenarios through the scheduler give the same answers
on the in-memory fake (a stand-in), on the KFP backend against the KFP API stand-in
(tests/kfp_api_stub.py, with moto's S3 on loopback: no cluster runs here), and on the local
backend with real workers running kfp.local and torchtune on a tiny model (marked e2e).

Each backend comes with a driver that makes its job run, finish or fail the way that backend
learns of it: the fake by hand; KFP through the run's state in the API; local jobs for real,
held at the test-only pause point after their first optimizer step (core/pause_points.py) so
that "while it runs" means the same on any hardware, and failed by a bad row.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from fake_backend import FakeBackend, record, spec
from kfp_api_stub import KFPStub
from s3_server import s3_server

from harness.demo_data import instruct_rows
from harness.server import kill_job_workers
from llama_stack_provider_kfp.boundary import storage
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
from llama_stack_provider_kfp.boundary.pause_points import ENV, Pauses
from llama_stack_provider_kfp.config import RemoteConfig
from llama_stack_provider_kfp.core.errors import InvalidRequest
from llama_stack_provider_kfp.core.spec import DataSpec, EngineChoice, JobSpec
from llama_stack_provider_kfp.jobs.record import TERMINAL, JobRecord
from llama_stack_provider_kfp.jobs.scheduler import JobScheduler
from llama_stack_provider_kfp.jobs.store import JobStore


@dataclass
class Driver:
    scheduler: JobScheduler
    backend: Any
    run: Any  # (record) -> the job is in progress
    end: Any  # (record, "completed" | "failed") -> it ended so
    output: Any = lambda job: f"/nonexistent/{job}"  # (job) -> its output location
    # (job, spec, fail) -> the spec this backend runs; fail: a job that fails by itself
    make_spec: Any = lambda job, base, fail: base
    failure_word: str | None = None  # in the error of a failed job (the fake has none)
    # () -> a context in which the backend's connection is disturbed (KFP: its token rotates,
    # KFP refuses single calls, the connection is dropped as after a failure); it yields an
    # Event set once the disturbances have all happened
    churn: Any = lambda: contextlib.nullcontext(_done())

    def submit(self, job: str, order: int = 0, fail: bool = False) -> JobRecord:
        self.scheduler.store.reserve(job)
        base = spec(job).model_copy(update={"output_uri": self.output(job)})
        rec = record(job, order).model_copy(update={"spec": self.make_spec(job, base, fail)})
        self.scheduler.submit(rec)
        loaded = self.scheduler.store.load(job)
        assert loaded is not None
        return loaded

    def status(self, job: str) -> str:
        rec = self.scheduler.store.load(job)
        assert rec is not None
        return self.scheduler.observe(rec).status


def _done() -> threading.Event:
    done = threading.Event()
    done.set()
    return done


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

    monkeypatch.delenv("KFP_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text("token-0\n")
    stub.valid_token = "token-0"
    cfg = RemoteConfig(url=stub.url, namespace="team-a", s3_bucket="kfp", inspect_pods=False,
                       s3_endpoint_url=s3_env["AWS_ENDPOINT_URL"], token_file=token_file,
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

    @contextlib.contextmanager
    def churn() -> Iterator[threading.Event]:
        """Three rounds of: a new token in the file, both accepted for a while, then only the
        new one (threads holding the old one are refused); KFP refuses one call whatever its
        token; the connection is dropped, as after a failed call (threads connect again,
        concurrently). A phase lasts far longer than a call, so that no call meets two."""
        done, stop = threading.Event(), threading.Event()
        phase = 0.4
        healthz = sum(r["path"].endswith("/healthz") for r in stub.requests)

        def rotate() -> None:
            for n in range(1, 4):
                tmp = token_file.with_suffix(".new")
                tmp.write_text(f"token-{n}\n")
                os.replace(tmp, token_file)  # as the kubelet swaps it: never half written
                stub.grace_token, stub.valid_token = stub.valid_token, f"token-{n}"
                stop.wait(phase)
                stub.grace_token = None
                stop.wait(phase)
                stub.refuse_next = 1
                while stub.refuse_next and not stop.wait(0.01):
                    pass  # until a call met the refusal
                stop.wait(phase)
                backend.connection.drop()
                stop.wait(phase)
            done.set()

        t = threading.Thread(target=rotate, name="churn")
        t.start()
        try:
            yield done
        finally:
            stop.set()
            t.join()
        # It reached the backend: every token was used, refusals answered, reconnections made.
        used = {r["headers"].get("authorization") for r in stub.requests}
        assert used == {f"Bearer token-{n}" for n in range(4)}
        assert stub.refused >= 3  # the single refusals, and old tokens after each rotation
        assert sum(r["path"].endswith("/healthz") for r in stub.requests) >= healthz + 3

    output = lambda job: str(backend.staging.job_prefix(job).join("output"))  # noqa: E731
    return Driver(sched, backend, run=lambda rec: state(rec, "RUNNING"), end=end, output=output,
                  failure_word="boom", churn=churn)  # fmt: skip


STEP = "train.step:1"


def _local(tmp_path, tiny_models, pauses: Pauses, monkeypatch) -> Driver:
    """Real workers (kfp.local, torchtune) on the tiny model; every job is held after its
    first optimizer step until `end` releases it."""
    from llama_stack_provider_kfp.backends.local.backend import LocalBackend

    monkeypatch.setenv(ENV, str(pauses.root))  # the workers inherit it
    store = JobStore(tmp_path / "work")
    backend = LocalBackend(store, [], poll_seconds=0.05)
    sched = JobScheduler(store, backend, 1, start_thread=False)
    model = inspect_model_dir("tiny", tiny_models / "hf")
    good = write_jsonl(instruct_rows(8), tmp_path / "good.jsonl")
    bad = write_jsonl([*instruct_rows(4), {"chat_completion_input": "{", "expected_answer": 1}],
                      tmp_path / "bad.jsonl")  # fmt: skip

    def make_spec(job: str, base: JobSpec, fail: bool) -> JobSpec:
        out = store.job_dir(job) / "output"
        out.mkdir()
        pauses.arm(job, STEP)
        return base.model_copy(update={
            "engine": EngineChoice(name="torchtune", reason="contract test"),
            "model": model, "output_format": "huggingface", "output_uri": str(out),
            "data": DataSpec(uri=str(bad if fail else good), data_format="instruct"),
            "train": base.train.model_copy(update={"max_seq_len": 64, "batch_size": 2,
                                                   "max_steps_per_epoch": 2}),
        })  # fmt: skip

    def live(rec: JobRecord) -> bool:
        fresh = store.load(rec.job_uuid)
        return fresh is not None and backend.observe(fresh).status not in TERMINAL

    def run(rec: JobRecord) -> None:
        if rec.spec.data.uri != str(bad):
            pauses.wait(rec.job_uuid, STEP, going=lambda: live(rec))

    def end(rec: JobRecord, how: str) -> None:
        pauses.release(rec.job_uuid, STEP)
        deadline = time.monotonic() + 300
        while live(rec) and time.monotonic() < deadline:
            time.sleep(0.1)
        fresh = store.load(rec.job_uuid)
        assert fresh is not None and backend.observe(fresh).status == how

    return Driver(sched, backend, run=run, end=end, make_spec=make_spec,
                  output=lambda job: str(store.job_dir(job) / "output"),
                  failure_word="do not match data_format")  # fmt: skip


def storage_loc(backend, rec: JobRecord, name: str):
    return backend.staging.job_prefix(rec.job_uuid).join("output", name)


@pytest.fixture(params=["fake", "kfp", pytest.param("local", marks=pytest.mark.e2e)])
def driver(request, tmp_path, monkeypatch) -> Iterator[Driver]:
    if request.param == "fake":
        yield _fake(tmp_path)
        return
    if request.param == "local":
        pauses = Pauses(tmp_path / "pauses")
        try:
            yield _local(tmp_path, request.getfixturevalue("tiny_models"), pauses, monkeypatch)
        finally:
            kill_job_workers(tmp_path / "work" / "jobs")  # a job still held at its pause
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
    rec = driver.submit("job-f", fail=True)
    driver.run(rec)
    driver.end(rec, "failed")
    driver.scheduler.tick()
    loaded = driver.scheduler.store.load("job-f")
    seen = driver.scheduler.observe(loaded)
    assert seen.status == "failed"
    assert seen.completed_at is not None or driver.backend.name == "fake"
    if driver.failure_word:  # the fake has no step to write error.json
        assert driver.failure_word in seen.error.message


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
    """200 concurrent status calls, and observations of the backend itself from 24 threads,
    while rounds run and the backend's connection churns (the driver's `churn`): each gets a
    correct answer for its own job, and the status calls themselves make at most one
    observation (before the first round's)."""
    done = driver.submit("done", 0)
    driver.run(done)
    driver.end(done, "completed")
    driver.scheduler.tick()
    assert driver.status("done") == "completed"
    rec = driver.submit("busy", 1)
    driver.run(rec)
    driver.scheduler.tick()
    records = {job: driver.scheduler.store.load(job) for job in ("done", "busy")}
    expected = {"done": "completed", "busy": "in_progress"}
    stop = threading.Event()

    def rounds() -> None:
        while not stop.is_set():
            driver.scheduler.tick()

    calls = {"status": 0, "rounds": 0}
    observe = driver.scheduler.observations._observe

    def counting(r):
        calls["rounds" if threading.current_thread().name == "rounds" else "status"] += 1
        return observe(r)

    def direct(i: int, churned: threading.Event) -> list[tuple[str, Any]]:
        """Observations of both jobs, in turn, until the churn is over (at least one)."""
        seen = []
        while not seen or not churned.is_set():
            job = ("done", "busy")[(i + len(seen)) % 2]
            seen.append((job, driver.backend.observe(records[job])))
        return seen

    driver.scheduler.observations._observe = counting
    driver.scheduler.observations.max_age = 60.0
    t = threading.Thread(target=rounds, name="rounds")
    t.start()
    try:
        with driver.churn() as churned, ThreadPoolExecutor(32) as pool:
            asked = [pool.submit(lambda: driver.status("busy")) for _ in range(200)]
            observed = [pool.submit(direct, i, churned) for i in range(24)]
            answers = [f.result() for f in asked]
            seen = [s for f in observed for s in f.result()]
    finally:
        stop.set()
        t.join()
    assert answers == ["in_progress"] * 200
    assert calls["rounds"] > 0
    assert calls["status"] <= 1  # the rounds' observations answered the status calls
    for job, obs in seen:
        assert obs.status == expected[job], (job, obs)
        note = obs.note or {}
        assert "warning" not in note, note  # answered by the backend, not from a last state
        assert note.get("run_id", records[job].runner.run_id) == records[job].runner.run_id


def _until(check, what: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_pause_holds_a_job_and_resume_runs_it_again(driver):
    """Pause stops a running job (its engine's checkpoint is the train step's business) and
    frees its slot: with a limit of 1 the next queued job starts; resume queues it again under
    the same id, and its next run (KFP: a run of its own name) ends as any job does."""
    sched = driver.scheduler
    paused = driver.submit("paused", 0)
    driver.run(paused)
    sched.pause("paused", None)
    with pytest.raises(InvalidRequest, match="already paused"):
        sched.pause("paused", None)

    def stopped() -> bool:
        rec = sched.store.load("paused")
        return rec is not None and sched.observations.fresh(rec).status in TERMINAL

    _until(stopped, "the paused job's run did not stop")
    sched.tick()
    other = driver.submit("other", 1)
    driver.run(other)  # started: the paused job holds no slot
    assert driver.status("other") == "in_progress"
    resumed = sched.resume("paused")
    assert resumed.runner is None and len(resumed.runs) == 1 and resumed.paused_at is None
    with pytest.raises(InvalidRequest, match="not paused"):
        sched.resume("paused")
    sched.tick()
    assert sched.store.load("paused").runner is None  # limit 1: queued behind "other"
    driver.end(other, "completed")
    sched.tick()
    again = sched.store.load("paused")
    assert again is not None and again.runner is not None  # a new run of the same job
    assert again.runner != again.runs[0]
    driver.run(again)
    driver.end(again, "completed")
    sched.tick()
    assert driver.status("paused") == "completed"
