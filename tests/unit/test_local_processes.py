"""The local backend's process handling: a cancel stops the whole process group (SIGKILL
after the grace period for what ignores SIGTERM), and a worker that exits is reaped at once,
even when nothing asks about its job again."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import UTC, datetime

import psutil
import pytest
from fake_backend import spec

from llama_stack_provider_kfp.backends.local import backend as local
from llama_stack_provider_kfp.jobs.record import JobRecord, RunnerHandle
from llama_stack_provider_kfp.jobs.store import JobStore

# A group leader that ignores SIGTERM, with a child that ignores it too.
STUBBORN = (
    "import signal, subprocess, sys, time;"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN);"
    "subprocess.Popen([sys.executable, '-c', "
    "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)']);"
    "time.sleep(60)"
)


def _record(job_uuid: str, handle: RunnerHandle | None = None) -> JobRecord:
    return JobRecord(job_uuid=job_uuid, spec=spec(job_uuid), scheduled_at=datetime.now(UTC),
                     runner=handle)  # fmt: skip


def test_kill_escalates_to_sigkill_for_the_whole_group(tmp_path, monkeypatch):
    monkeypatch.setattr(local, "KILL_WAIT_SECONDS", 2.0)
    proc = subprocess.Popen([sys.executable, "-c", STUBBORN], start_new_session=True)
    try:
        handle = RunnerHandle(pid=proc.pid, create_time=psutil.Process(proc.pid).create_time())
        deadline = time.monotonic() + 10
        while len(local.group_members(handle)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        members = local.group_members(handle)
        assert len(members) == 2
        backend = local.LocalBackend(JobStore(tmp_path), [])
        started = time.monotonic()
        backend.kill(_record("j", handle), grace_seconds=0.3)
        assert time.monotonic() - started >= 0.3  # SIGTERM first, then the grace period
        proc.wait(5)
        assert local.group_members(handle) == []
        assert all(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in members)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_a_recycled_pid_is_not_signalled():
    me = psutil.Process()
    stale = RunnerHandle(pid=me.pid, create_time=me.create_time() - 3600)
    assert local._live(stale) is None


def test_exited_workers_are_reaped_without_polling(tmp_path):
    store = JobStore(tmp_path)
    backend = local.LocalBackend(store, [])
    handles = []
    for i in range(3):
        job = f"crash-{i}"
        store.reserve(job)  # no job.json: the worker fails at once and exits
        handles.append(backend.start(_record(job)))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        children = {c.pid: c for c in psutil.Process().children()}
        mine = [children[h.pid] for h in handles if h.pid in children]
        if not mine:
            break
        time.sleep(0.1)
    # Nothing observed, forgot or killed these jobs: the waiter threads reaped them.
    assert not [p.pid for p in mine if _zombie(p)]
    assert not mine


def _zombie(p: psutil.Process) -> bool:
    try:
        return p.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(autouse=True)
def _no_leftovers():
    yield
    for child in psutil.Process().children(recursive=True):
        child.kill()
