"""The scheduler against an in-memory backend (tests/fake_backend.py, a stand-in): queue
order, the concurrency limit, cancels at every moment, restart, and a backend that raises.
Dispatch rounds are driven by hand (`tick`) so every step is deterministic."""

from __future__ import annotations

import threading

import pytest
from fake_backend import FakeBackend, record

from llama_stack_provider_kfp.core.errors import InvalidRequest
from llama_stack_provider_kfp.jobs.backend import Backend
from llama_stack_provider_kfp.jobs.scheduler import JobScheduler
from llama_stack_provider_kfp.jobs.store import JobStore

# Ids whose sorted order is the reverse of their submission order: a scheduler that started
# jobs by id (the store lists ids sorted) would start them backwards.
IDS = ["zulu", "yankee", "x-ray", "whiskey", "victor", "uniform"]


def _scheduler(tmp_path, backend: FakeBackend, limit: int) -> JobScheduler:
    b: Backend = backend  # the fake satisfies the protocol (mypy checks the real backends)
    return JobScheduler(JobStore(tmp_path), b, limit, start_thread=False)


def test_queue_order_and_limit(tmp_path):
    backend = FakeBackend()
    sched = _scheduler(tmp_path, backend, limit=2)
    for order, job in enumerate(IDS):
        sched.submit(record(job, order))
    assert backend.started == IDS[:2]
    # Waves: each finished job frees one slot, taken by the earliest queued job.
    for done, expected_next in zip(IDS, IDS[2:], strict=False):
        backend.finish(done)
        sched.tick()
        assert backend.started[-1] == expected_next
    assert backend.started == IDS
    assert backend.max_running == 2


def test_finished_jobs_are_settled_and_forgotten(tmp_path):
    backend = FakeBackend()
    sched = _scheduler(tmp_path, backend, limit=1)
    sched.submit(record("a", 0))
    backend.finish("a", "failed")
    sched.tick()
    assert sched.active() == set()
    assert backend.forgotten == ["a"]
    assert backend.killed == []  # a job that ended by itself is not killed


def test_cancel_queued_job_never_starts(tmp_path):
    backend = FakeBackend()
    sched = _scheduler(tmp_path, backend, limit=1)
    sched.submit(record("running", 0))
    sched.submit(record("queued", 1))
    sched.cancel("queued")
    backend.finish("running")
    sched.tick()
    assert backend.started == ["running"]
    assert sched.store.load("queued").cancelled_at is not None


def test_cancel_running_job_kills_and_frees_the_slot(tmp_path):
    backend = FakeBackend()
    sched = _scheduler(tmp_path, backend, limit=1)
    sched.submit(record("a", 0))
    sched.submit(record("b", 1))
    sched.cancel("a")
    assert backend.killed == ["a"]
    assert backend.started == ["a", "b"]  # the freed slot is taken at once


def test_cancel_of_a_finished_job_is_refused_and_keeps_its_outcome(tmp_path):
    backend = FakeBackend()
    sched = _scheduler(tmp_path, backend, limit=1)
    sched.submit(record("done", 0))
    backend.finish("done")
    with pytest.raises(InvalidRequest, match="already ended \\(completed\\)"):
        sched.cancel("done")
    assert sched.store.load("done").cancelled_at is None
    assert backend.killed == []


def test_cancel_while_the_backend_is_starting_the_job(tmp_path):
    backend = FakeBackend()
    backend.start_gate = threading.Event()
    sched = _scheduler(tmp_path, backend, limit=1)
    submit = threading.Thread(target=sched.submit, args=(record("slow", 0),))
    submit.start()
    assert backend.starting.wait(5)
    cancel = threading.Thread(target=sched.cancel, args=("slow",))
    cancel.start()
    cancel.join(0.2)
    assert cancel.is_alive()  # waits for the start to finish: it must see the run's handle
    backend.start_gate.set()
    submit.join(5)
    cancel.join(5)
    saved = sched.store.load("slow")
    assert saved.runner is not None and saved.cancelled_at is not None
    assert backend.killed == ["slow"]
    sched.tick()
    assert backend.started == ["slow"]  # not started again


def test_reconcile_after_restart(tmp_path):
    backend = FakeBackend()
    first = _scheduler(tmp_path, backend, limit=1)
    for order, job in enumerate(["c-running", "b-queued", "a-queued", "d-done"]):
        first.submit(record(job, order))
    backend.finish("c-running")  # finishes while the server is down
    first.shutdown(cancel_jobs=False)

    second = _scheduler(tmp_path, backend, limit=1)  # the same store, a new process
    assert backend.forgotten == ["c-running"]
    assert backend.started == ["c-running", "b-queued"]
    assert second.active() == {"b-queued", "a-queued", "d-done"}


def test_start_failure_fails_the_submit_but_not_the_others(tmp_path):
    backend = FakeBackend()
    sched = _scheduler(tmp_path, backend, limit=1)
    backend.fail_start.add("bad")
    with pytest.raises(RuntimeError, match="cannot start bad"):
        sched.submit(record("bad", 0))  # the caller's own job: raised to the request

    backend.fail_start.add("bad-queued")
    sched.store.save(record("running", 1))
    sched = _scheduler(tmp_path, backend, limit=1)  # picks up "bad" too: retried, fails again
    sched.submit(record("bad-queued", 2))
    sched.submit(record("good", 3))
    backend.finish("running")
    sched.tick()
    lost = sched.store.load("bad-queued").lost
    assert lost is not None and lost.message == "could not start: cannot start bad-queued"
    # A failed start does not use up the slot: the next queued job starts in the same round.
    assert backend.started == ["running", "good"]


def test_an_unobservable_job_does_not_stall_the_others(tmp_path):
    backend = FakeBackend()
    sched = _scheduler(tmp_path, backend, limit=2)
    sched.submit(record("flaky", 0))
    backend.fail_observe.add("flaky")
    sched.submit(record("other", 1))
    # The flaky one counts as running (the limit is never exceeded), the other one starts.
    assert backend.started == ["flaky", "other"]
    sched.submit(record("third", 2))
    assert backend.started == ["flaky", "other"]
    backend.fail_observe.clear()
    backend.finish("flaky")
    sched.tick()
    assert backend.started == ["flaky", "other", "third"]


def test_shutdown_cancels_only_when_asked(tmp_path):
    backend = FakeBackend()
    sched = _scheduler(tmp_path, backend, limit=2)
    sched.submit(record("a", 0))
    sched.submit(record("b", 1))
    backend.finish("b")
    sched.shutdown(cancel_jobs=True)  # "b" ended meanwhile: skipped, not an error
    assert backend.killed == ["a"]


def test_a_hanging_backend_call_holds_up_no_other_job(tmp_path):
    """While a dispatch round is stuck observing one job (a blackholed route), another job's
    cancel completes and the slot it frees is taken once the round moves on."""
    backend = FakeBackend()
    sched = _scheduler(tmp_path, backend, limit=2)
    for order, job in enumerate(["stuck", "b", "queued"]):
        sched.submit(record(job, order))
    gate = backend.hang_observe["stuck"] = threading.Event()
    round_ = threading.Thread(target=sched.tick, name="round")
    round_.start()
    assert backend.hanging.wait(5)
    done = threading.Event()
    cancel = threading.Thread(target=lambda: (sched.cancel("b"), done.set()))
    cancel.start()
    cancelled_in_time = done.wait(5)
    gate.set()
    round_.join(5)
    cancel.join(5)
    assert cancelled_in_time, "cancel waited for another job's backend call"
    assert backend.killed == ["b"]  # once: the round skips a job cancelled meanwhile
    sched.tick()
    assert backend.started == ["stuck", "b", "queued"]  # the freed slot is taken, once


def test_a_queued_job_from_a_newer_release_is_not_started(tmp_path):
    from llama_stack_provider_kfp.boundary.files import read_json, write_json

    backend = FakeBackend()
    store = JobStore(tmp_path)
    store.reserve("newer")
    store.save(record("newer", 0))
    path = store.job_dir("newer") / "job.json"
    data = read_json(path)
    data["spec"]["algorithm"] = "osft"  # a setting this release would silently drop
    write_json(path, data)
    sched = JobScheduler(store, backend, 1, start_thread=False)
    assert backend.started == []
    lost = store.load("newer").lost
    assert "newer release" in lost.message and "spec.algorithm" in lost.message
    assert read_json(path)["spec"]["algorithm"] == "osft"  # kept for the release that knows it
    assert sched.active() == set()
