"""Local runner: one worker process per job, in its own session, tracked by pid."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime

import psutil

from ..job_store import TERMINAL, JobRecord, JobStore, RunnerHandle, Status
from ..log_tail import tail

WORKER_MODULE = "llama_stack_provider_kfp.runners.local_worker"


@dataclass
class Observed:
    status: Status
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: dict | None = None


class LocalRunner:
    def __init__(self, store: JobStore) -> None:
        self.store = store
        # Popen objects of workers this server started, so exited ones get reaped.
        self._children: dict[str, subprocess.Popen] = {}

    def start(self, job_uuid: str) -> RunnerHandle:
        job_dir = self.store.job_dir(job_uuid)
        with (job_dir / "worker.log").open("ab") as log:
            proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "llama_stack_provider_kfp.runners.local_worker",
                    str(job_dir),
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=job_dir,
                start_new_session=True,  # own process group: cancel signals the whole tree
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self._children[job_uuid] = proc
        return RunnerHandle(pid=proc.pid, create_time=psutil.Process(proc.pid).create_time())

    def _process(self, job_uuid: str, handle: RunnerHandle | None) -> psutil.Process | None:
        """The worker's process if it is still running."""
        child = self._children.get(job_uuid)
        if child is not None and child.poll() is not None:
            return None
        if handle is None:
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

    def observe(self, record: JobRecord) -> Observed:
        state = self.store.worker_state(record.job_uuid)
        if record.cancelled_at is not None:
            return Observed("cancelled", state.started_at if state else None, record.cancelled_at)
        if state is not None and state.status in TERMINAL:
            return Observed(state.status, state.started_at, state.completed_at, state.error)
        if self._process(record.job_uuid, record.runner) is not None:
            if state is None:
                return Observed("scheduled")
            return Observed(state.status, state.started_at)
        log = self.store.job_dir(record.job_uuid) / "worker.log"
        return Observed(
            "failed",
            state.started_at if state else None,
            None,
            {
                "message": "the job's worker process exited without reporting an outcome",
                "log_tail": tail(log),
            },
        )

    def cancel(self, record: JobRecord, grace_seconds: float = 5.0) -> None:
        """Stop the worker's whole process group (kfp.local tasks included)."""
        proc = self._process(record.job_uuid, record.runner)
        if proc is None:
            return
        pgid = os.getpgid(proc.pid)
        for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and _group_alive(pgid):
                time.sleep(0.05)
                child = self._children.get(record.job_uuid)
                if child is not None:
                    child.poll()
            if not _group_alive(pgid):
                break


def _group_alive(pgid: int) -> bool:
    for p in psutil.process_iter(["pid"]):
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return False
