"""The job scheduler: a persistent queue with a concurrency limit over the job store.

llama-stack's own scheduler (providers/utils/scheduler.py) runs each job as a coroutine inside
the server and keeps jobs in memory, so jobs die with the server and cannot be cancelled.
Here a job is a worker process that outlives the server, and every fact lives in the job's
files, so this scheduler keeps only a cache (the set of unfinished job ids) and rebuilds it
from disk on start-up (`reconcile`).

A daemon thread, not an asyncio task, drives dispatch: llama-stack builds providers inside a
temporary event loop that is closed before the server starts serving.
"""

from __future__ import annotations

import logging
import threading

from .job_store import TERMINAL, JobRecord, JobStore, now
from .runners.local import LocalRunner, Observed

log = logging.getLogger(__name__)


class JobScheduler:
    def __init__(
        self,
        store: JobStore,
        runner: LocalRunner,
        max_concurrent: int,
        poll_seconds: float = 0.5,
    ) -> None:
        self.store = store
        self.runner = runner
        self.max_concurrent = max_concurrent
        self.poll_seconds = poll_seconds
        self._lock = threading.RLock()
        self._active: set[str] = set()
        self._stop = threading.Event()
        self.reconcile()
        self._thread = threading.Thread(target=self._loop, name="kfp-job-dispatch", daemon=True)
        self._thread.start()

    # ---- start-up ---------------------------------------------------------------------

    def reconcile(self) -> None:
        """Re-attach to every unfinished job recorded on disk."""
        with self._lock:
            for job_uuid in self.store.list_ids():
                record = self.store.load(job_uuid)
                if record is None:
                    log.warning("job %s: record unreadable, skipped", job_uuid)
                    continue
                seen = self.runner.observe(record)
                if seen.status in TERMINAL:
                    self._settle(record, seen)
                else:
                    self._active.add(job_uuid)
            self._dispatch()
        log.info("job scheduler: %d unfinished job(s) re-attached", len(self._active))

    # ---- API ----------------------------------------------------------------------------

    def submit(self, record: JobRecord) -> None:
        with self._lock:
            self.store.save(record)
            self._active.add(record.job_uuid)
            self._dispatch()

    def cancel(self, record: JobRecord, grace_seconds: float = 5.0) -> None:
        """Mark cancelled (durably, first), then stop the worker's process tree."""
        with self._lock:
            record.cancelled_at = now()
            self.store.save(record)
        self.runner.kill(record, grace_seconds)
        with self._lock:
            self._active.discard(record.job_uuid)
            self._dispatch()

    def shutdown(self, cancel_jobs: bool) -> None:
        self._stop.set()
        if not cancel_jobs:
            return
        with self._lock:
            records = [r for r in map(self.store.load, list(self._active)) if r is not None]
        for record in records:
            # llama-stack gives providers 5 s to shut down.
            self.cancel(record, grace_seconds=1.0)

    # ---- dispatch -----------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                with self._lock:
                    self._dispatch()
            except Exception:  # keep dispatching whatever one poll hit
                log.exception("job dispatch failed")

    def _dispatch(self) -> None:
        running, queued = 0, []
        for job_uuid in list(self._active):
            record = self.store.load(job_uuid)
            if record is None:
                self._active.discard(job_uuid)
                continue
            seen = self.runner.observe(record)
            if seen.status in TERMINAL:
                self._settle(record, seen)
                self._active.discard(job_uuid)
            elif self.runner.handle(record) is None:
                queued.append(record)
            else:
                running += 1
        queued.sort(key=lambda r: r.scheduled_at)
        for record in queued[: max(self.max_concurrent - running, 0)]:
            record.runner = self.runner.start(record.job_uuid)
            self.store.save(record)
            log.info("job %s: started (worker pid %d)", record.job_uuid, record.runner.pid)

    def _settle(self, record: JobRecord, seen: Observed) -> None:
        """Make a finished job's outcome durable and leave nothing of it running."""
        state = self.store.worker_state(record.job_uuid)
        reported = state is not None and state.status in TERMINAL
        if seen.status == "failed" and not reported and record.lost is None:
            record.lost, record.lost_at = seen.error, now()
            self.store.save(record)
            log.warning("job %s: worker vanished; marked failed", record.job_uuid)
        if record.cancelled_at is not None or record.lost is not None:
            # A cancel interrupted by a server crash, or a killed worker's orphaned tasks.
            self.runner.kill(record, grace_seconds=0.5)
