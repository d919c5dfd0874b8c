"""Local runner: one worker process per job, in its own session, tracked by pid."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import psutil

from ..job_store import TERMINAL, JobRecord, JobStore, RunnerHandle
from ..log_tail import tail
from . import Observed

WORKER_MODULE = "llama_stack_provider_kfp.runners.local_worker"


class LocalRunner:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        # Popen objects of workers this server started, so exited ones get reaped.
        self._children: dict[str, subprocess.Popen] = {}

    def start(self, job_uuid: str) -> RunnerHandle:
        job_dir = self.store.job_dir(job_uuid)
        with (job_dir / "worker.log").open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, str(job_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=job_dir,
                start_new_session=True,  # own process group: cancel signals the whole tree
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self._children[job_uuid] = proc
        return RunnerHandle(pid=proc.pid, create_time=psutil.Process(proc.pid).create_time())

    def handle(self, record: JobRecord) -> RunnerHandle | None:
        if record.runner is not None:
            return record.runner
        state = self.store.worker_state(record.job_uuid)
        return state.runner if state else None

    def worker(self, record: JobRecord) -> psutil.Process | None:
        """The job's worker process if it is still running."""
        child = self._children.get(record.job_uuid)
        if child is not None and child.poll() is not None:
            self._children.pop(record.job_uuid, None)
            return None
        return _live(self.handle(record))

    def observe(self, record: JobRecord) -> Observed:
        state = self.store.worker_state(record.job_uuid)
        started = state.started_at if state else None
        if record.cancelled_at is not None:
            return Observed("cancelled", started, record.cancelled_at)
        if state is not None and state.status in TERMINAL:
            return Observed(state.status, started, state.completed_at, state.error)
        if record.lost is not None:
            return Observed("failed", started, record.lost_at, record.lost)
        if self.handle(record) is None:
            return Observed("scheduled")
        if self.worker(record) is not None:
            return Observed(state.status if state else "scheduled", started)
        return Observed("failed", started, None, self.lost_reason(record), lost=True)

    def lost_reason(self, record: JobRecord) -> dict:
        return {
            "message": "the job's worker process exited without reporting an outcome "
            "(killed, or out of memory); see log_tail",
            "log_tail": tail(self.store.job_dir(record.job_uuid) / "worker.log"),
        }

    def forget(self, record: JobRecord) -> None:
        """Reap a finished worker this server started (no zombie left behind)."""
        child = self._children.get(record.job_uuid)
        if child is not None and child.poll() is not None:
            del self._children[record.job_uuid]

    def kill(self, record: JobRecord, grace_seconds: float = 5.0) -> None:
        """Stop the worker's whole process group (kfp.local tasks included), then wait."""
        handle = self.handle(record)
        child = self._children.get(record.job_uuid)
        if handle is None and child is not None:
            # Started a moment ago: neither the record nor state.json names it yet.
            handle = RunnerHandle(
                pid=child.pid, create_time=psutil.Process(child.pid).create_time()
            )
        if handle is None:
            return
        for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 5.0)):
            members = group_members(handle)
            if not members:
                break
            for p in members:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.send_signal(sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and group_members(handle):
                self.worker(record)  # reap our own child
                time.sleep(0.05)
        self.worker(record)


def _live(handle: RunnerHandle | None) -> psutil.Process | None:
    if handle is None or handle.pid is None:
        return None
    try:
        proc = psutil.Process(handle.pid)
        if abs(proc.create_time() - handle.create_time) > 0.5:
            return None  # the pid was recycled
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.NoSuchProcess:
        return None


def group_members(handle: RunnerHandle) -> list[psutil.Process]:
    """Live processes of the worker's process group, started no earlier than the worker.

    The worker leads its own session, so its group id is its pid; the start-time check keeps
    a recycled group id from reaching unrelated processes.
    """
    found = []
    for p in psutil.process_iter(["pid", "create_time", "status"]):
        try:
            if (
                os.getpgid(p.pid) == handle.pid
                and p.info["create_time"] >= handle.create_time - 0.5
                and p.info["status"] != psutil.STATUS_ZOMBIE
            ):
                found.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found
