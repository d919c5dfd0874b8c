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
from .runners import Observed
from .runners.local import LocalRunner

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
        """Queue a new job and start it if a slot is free. A failure to start *this* job is
        raised (the caller answers the request with it); other jobs' failures are recorded."""
        with self._lock:
            self.store.save(record)
            self._active.add(record.job_uuid)
            self._dispatch(raise_for=record.job_uuid)

    def cancel(self, job_uuid: str, grace_seconds: float = 5.0) -> None:
        """Mark cancelled (durably, first), then stop the job's process tree or run."""
        with self._lock:
            record = self.store.load(job_uuid)  # the current record: it may have just started
            if record is None:
                return
            record.cancelled_at = now()
            self.store.save(record)
        self.runner.kill(record, grace_seconds)
        with self._lock:
            self._active.discard(job_uuid)
            self.runner.forget(record)
            if not self._stop.is_set():
                self._dispatch()

    def shutdown(self, cancel_jobs: bool) -> None:
        self._stop.set()
        if not cancel_jobs:
            return
        with self._lock:
            active = list(self._active)
        for job_uuid in active:
            # llama-stack gives providers 5 s to shut down.
            self.cancel(job_uuid, grace_seconds=1.0)

    # ---- dispatch -----------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                with self._lock:
                    if not self._stop.is_set():
                        self._dispatch()
            except Exception:  # keep dispatching whatever one poll hit
                log.exception("job dispatch failed")

    def _dispatch(self, raise_for: str | None = None) -> None:
        running, queued = 0, []
        for job_uuid in list(self._active):
            try:
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
            except Exception:  # one job's trouble must not stall the others
                log.exception("job %s: could not be checked", job_uuid)
                running += 1  # unknown: count it, so the limit is never exceeded
        queued.sort(key=lambda r: r.scheduled_at)
        for record in queued[: max(self.max_concurrent - running, 0)]:
            try:
                record.runner = self.runner.start(record.job_uuid)
            except Exception as e:
                if record.job_uuid == raise_for:
                    raise
                # Recorded, not retried forever: the job fails with the reason.
                record.lost, record.lost_at = {"message": f"could not start: {e}"}, now()
                self.store.save(record)
                self._active.discard(record.job_uuid)
                log.warning("job %s: could not start: %s", record.job_uuid, e)
                continue
            self.store.save(record)
            log.info("job %s: started (%s)", record.job_uuid, record.runner)

    def _settle(self, record: JobRecord, seen: Observed) -> None:
        """Make a finished job's outcome durable and leave nothing of it running."""
        if seen.lost and record.lost is None:
            record.lost, record.lost_at = seen.error, now()
            self.store.save(record)
            log.warning("job %s: worker vanished; marked failed", record.job_uuid)
        if record.cancelled_at is not None or seen.lost:
            # A cancel interrupted by a server crash, or a killed worker's orphaned tasks.
            try:
                self.runner.kill(record, grace_seconds=0.5)
            except Exception as e:
                log.warning("job %s: clean-up after the end failed: %s", record.job_uuid, e)
        self.runner.forget(record)
