"""The job scheduler: a persistent queue with a concurrency limit over the job store.

llama-stack's own scheduler (providers/utils/scheduler.py) runs each job as a coroutine inside
the server and keeps jobs in memory, so jobs die with the server and cannot be cancelled.
Here a job runs in a Backend (a worker process, or a KFP run) that outlives the server, and
every fact lives in the job's record, so this scheduler keeps only a cache (the set of
unfinished job ids) and rebuilds it from disk on start-up (`reconcile`).

A daemon thread, not an asyncio task, drives dispatch: llama-stack builds providers inside a
temporary event loop that is closed before the server starts serving.

Several processes may serve one work dir (the llama-stack face, the OpenAI face): one of them
dispatches (jobs.leader), the others only submit, cancel and observe; a job queued by one is
started by the dispatcher at its next round.

Locks. A backend call may be a network call that takes up to its timeout (a blackholed route to
KFP). No such call runs under the lock that guards the job set (`_lock`): each job has its own
lock, held while it is observed, started or cancelled, so a cancel waits at most for its own
job's call; dispatch rounds are serialized by `_round` (one round at a time never starts a job
twice or exceeds the limit).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator

from ..core.errors import InvalidRequest
from ..core.outputs import StepError
from .backend import JobRunner, Observed
from .leader import WorkDirLock, job_lock
from .observations import Observations
from .record import TERMINAL, JobRecord, now
from .store import JobStore, UnreadableRecord

log = logging.getLogger(__name__)


class JobScheduler:
    def __init__(
        self,
        store: JobStore,
        backend: JobRunner,
        max_concurrent: int,
        poll_seconds: float | None = None,
        start_thread: bool = True,
        observation_max_age: float | None = None,
    ) -> None:
        self.store = store
        self.backend = backend
        self.max_concurrent = max_concurrent
        self.poll_seconds = backend.poll_seconds if poll_seconds is None else poll_seconds
        # A round refreshes every unfinished job each poll: status calls between rounds
        # are answered from that observation.
        self.observations = Observations(
            backend.observe,
            backend.observation_max_age if observation_max_age is None else observation_max_age,
        )
        self._lock = threading.Lock()  # _active and _job_locks; never held over a backend call
        self._round = threading.Lock()  # one dispatch round at a time
        self._job_locks: dict[str, threading.Lock] = {}
        self._active: set[str] = set()
        self._known: set[str] = set()  # every id seen (active or settled): new ones are adopted
        self._leader = WorkDirLock(store.root.parent)
        self._stop = threading.Event()
        self._wake = threading.Event()  # a round is wanted now (a slot was freed)
        self.reconcile()
        self._thread = threading.Thread(target=self._loop, name="kfp-job-dispatch", daemon=True)
        if start_thread:
            self._thread.start()

    def _job_lock(self, job_uuid: str) -> threading.Lock:
        with self._lock:
            return self._job_locks.setdefault(job_uuid, threading.Lock())

    @contextlib.contextmanager
    def _exclusive(self, job_uuid: str) -> Iterator[None]:
        """The job's lock in this process, then across processes (jobs.leader.job_lock)."""
        with self._job_lock(job_uuid), job_lock(self.store.job_dir(job_uuid)):
            yield

    @property
    def dispatching(self) -> bool:
        """Whether this process dispatches for the work dir (taking over when it is free)."""
        return self._leader.acquire()

    def _discard(self, job_uuid: str) -> None:
        with self._lock:
            self._active.discard(job_uuid)
            self._job_locks.pop(job_uuid, None)

    # ---- start-up ---------------------------------------------------------------------

    def reconcile(self) -> None:
        """Re-attach to every unfinished job recorded on disk."""
        with self._round:
            self.store.remove_abandoned()
            for job_uuid in self.store.list_ids():
                found = self.store.entry(job_uuid)
                if isinstance(found, UnreadableRecord):
                    log.warning("job %s: %s; listed as failed", job_uuid, found.reason)
                    continue
                with self._lock:
                    self._active.add(job_uuid)
                self._known.add(job_uuid)
            if self.dispatching:
                self._dispatch()  # settles the jobs that ended while the server was down
        log.info("job scheduler: %d unfinished job(s) re-attached", len(self.active()))

    # ---- API ----------------------------------------------------------------------------

    def observe(self, record: JobRecord) -> Observed:
        """What the job's backend reports, shared with the dispatch rounds (bounded age)."""
        return self.observations.get(record)

    def submit(self, record: JobRecord) -> None:
        """Queue a new job and start it if a slot is free. A failure to start *this* job is
        raised (the caller answers the request with it); other jobs' failures are recorded."""
        self.store.save(record)
        self.observations.invalidate(record.job_uuid)
        with self._lock:
            self._active.add(record.job_uuid)
        self._known.add(record.job_uuid)
        with self._round:
            if self.dispatching:  # else the dispatching process starts it at its next round
                self._dispatch(raise_for=record.job_uuid)

    def cancel(self, job_uuid: str, grace_seconds: float = 5.0) -> None:
        """Mark cancelled (durably, first), then stop the job. A job that has already ended
        is an InvalidRequest and keeps its outcome."""
        with self._exclusive(job_uuid):  # waits for a start of this job in flight: its handle
            record = self.store.load(job_uuid)  # the current record: it may have just started
            if record is None:
                return
            seen = self.observations.fresh(record)
            # A paused job has stopped (its run ended) without ending: it may be cancelled.
            if seen.status in TERMINAL and (record.paused_at is None or
                                            seen.status == "completed"):  # fmt: skip
                raise InvalidRequest(f"job {job_uuid!r} has already ended ({seen.status})")
            record.cancelled_at = now()
            self.store.save(record)
            self.observations.invalidate(job_uuid)
            with self._lock:
                self._active.discard(job_uuid)  # rounds skip it from now on
        try:
            self.backend.kill(record, grace_seconds)  # outside the job's lock: it may take a while
        except Exception:
            with self._lock:
                self._active.add(job_uuid)  # settled (killed again) by a later round
            raise
        self.backend.forget(record)
        self._discard(job_uuid)
        self._slot_freed()

    def pause(self, job_uuid: str, can_pause: str | None) -> JobRecord:
        """Stop the job with a checkpoint (its engine saves on SIGTERM) and never start it
        again until `resume`; a queued job is only held. `can_pause` is why this job cannot
        be paused (its engine), or None. Returns at once: the job stops in the background."""
        with self._exclusive(job_uuid):
            record = self.store.load(job_uuid)
            if record is None:
                raise InvalidRequest(f"job {job_uuid!r} cannot be paused: its record is unreadable")
            seen = self.observations.fresh(record)
            if record.paused_at is not None:
                raise InvalidRequest(f"job {job_uuid!r} is already paused")
            if seen.status in TERMINAL or record.cancelled_at is not None:
                raise InvalidRequest(f"job {job_uuid!r} has already ended ({seen.status})")
            started = self.backend.handle(record) is not None
            if started and can_pause:
                raise InvalidRequest(f"job {job_uuid!r} cannot be paused: {can_pause}")
            record.paused_at = now()
            self.store.save(record)
            self.observations.invalidate(job_uuid)
        if started:
            threading.Thread(target=self._stop_paused, args=(record,), daemon=True,
                             name=f"pause-{job_uuid}").start()  # fmt: skip
        return record

    def _stop_paused(self, record: JobRecord) -> None:
        try:
            self.backend.kill(record, save=True)
        except Exception as e:  # the dispatching process settles it at a later round
            log.warning("job %s: pausing: %s", record.job_uuid, e)
        self.observations.invalidate(record.job_uuid)
        self._slot_freed()

    def resume(self, job_uuid: str) -> JobRecord:
        """A paused job queued again: its next run continues from its own newest checkpoint
        (the train step looks there first), under the same id."""
        with self._exclusive(job_uuid):
            record = self.store.load(job_uuid)
            if record is None or record.paused_at is None:
                raise InvalidRequest(f"job {job_uuid!r} is not paused: only a paused job resumes")
            seen = self.observations.fresh(record)
            handle = self.backend.handle(record)
            if handle is not None and seen.status not in TERMINAL:
                raise InvalidRequest(
                    f"job {job_uuid!r} is still stopping (saving its checkpoint); resume it "
                    "once its status says paused and it has stopped"
                )
            if seen.status == "completed":
                raise InvalidRequest(f"job {job_uuid!r} completed before it could pause")
            if handle is not None:
                record.runs.append(handle)
            self.backend.forget(record)
            self.backend.rerun(record)
            record.runner, record.lost, record.lost_at = None, None, None
            record.paused_at, record.resumed_at = None, now()
            self.store.save(record)
            self.observations.invalidate(job_uuid)
            with self._lock:
                self._active.add(job_uuid)
        with self._round:
            if self.dispatching:
                self._dispatch()
        return record

    def _slot_freed(self) -> None:
        """Start the next queued job now: in this thread when no round is running, else the
        round in flight is asked to run once more (never wait behind a slow round)."""
        if self._stop.is_set():
            return
        if self._round.acquire(blocking=False):
            try:
                self._dispatch()
            finally:
                self._round.release()
        else:
            self._wake.set()

    def shutdown(self, cancel_jobs: bool) -> None:
        self._stop.set()
        self._wake.set()
        if cancel_jobs:
            for job_uuid in self.active():
                with contextlib.suppress(InvalidRequest):  # ended meanwhile
                    self.cancel(job_uuid, grace_seconds=1.0)  # llama-stack allows 5 s to stop
        # Another process may dispatch from now on (a round in flight saves its starts under
        # each job's lock, so none is started twice).
        got = self._round.acquire(timeout=2.0)
        try:
            self._leader.release()
        finally:
            if got:
                self._round.release()

    def active(self) -> set[str]:
        with self._lock:
            return set(self._active)

    # ---- dispatch -----------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_seconds)
            self._wake.clear()
            self.tick()

    def tick(self) -> None:
        """One dispatch round: settle finished jobs, start queued ones within the limit (or,
        in a process that does not dispatch, follow which jobs are unfinished)."""
        try:
            with self._round:
                if self._stop.is_set():
                    return
                self._adopt()
                if self.dispatching:
                    self._dispatch()
                else:
                    self._follow()
        except Exception:  # keep dispatching whatever one poll hit
            log.exception("job dispatch failed")

    def _adopt(self) -> None:
        """Jobs another process submitted to this work dir since the last round."""
        try:
            names = set(os.listdir(self.store.root)) - self._known
        except OSError:
            return
        for job_uuid in names:
            try:
                found = self.store.entry(job_uuid)
            except InvalidRequest:  # not a job's folder name
                self._known.add(job_uuid)
                continue
            if found is None:  # reserved, record not written yet: next round
                continue
            self._known.add(job_uuid)
            if isinstance(found, JobRecord):
                with self._lock:
                    self._active.add(job_uuid)

    def _follow(self) -> None:
        """Drop the jobs that ended (the dispatching process settles them)."""
        for job_uuid in self.active():
            record = self.store.load(job_uuid)
            if record is None or self.observations.get(record).status in TERMINAL:
                self._discard(job_uuid)

    def _dispatch(self, raise_for: str | None = None) -> None:
        """Called with `_round` held."""
        running, queued = 0, []
        for job_uuid in self.active():
            try:
                with self._exclusive(job_uuid):
                    if job_uuid not in self.active():
                        continue  # cancelled since the round began
                    record = self.store.load(job_uuid)
                    if record is None:
                        self._discard(job_uuid)
                        continue
                    seen = self.observations.fresh(record)
                    if seen.status in TERMINAL:
                        self._settle(record, seen)
                        self._discard(job_uuid)
                    elif record.cancelled_at is not None:
                        continue  # being cancelled: never (re)started, not counted
                    elif record.paused_at is not None:
                        # Held: counted while it still stops (saves its checkpoint).
                        running += self.backend.handle(record) is not None
                    elif self.backend.handle(record) is None:
                        queued.append(record)
                    else:
                        running += 1
            except Exception:  # one job's trouble must not stall the others
                log.exception("job %s: could not be checked", job_uuid)
                running += 1  # unknown: count it, so the limit is never exceeded
        # Submission order: scheduled_at, then the id for submissions in the same instant.
        queued.sort(key=lambda r: (r.scheduled_at, r.job_uuid))
        free = self.max_concurrent - running
        for queued_record in queued:
            if free <= 0:
                break
            if self._start(queued_record.job_uuid, raise_for):
                free -= 1

    def _start(self, job_uuid: str, raise_for: str | None) -> bool:
        """Start one queued job; False when it was not started (cancelled meanwhile, or its
        start failed: the slot stays free for the next queued job)."""
        with self._exclusive(job_uuid):
            record = self.store.load(job_uuid)  # fresh: a cancel may have come in since
            if (record is None or record.cancelled_at is not None or record.paused_at is not None
                    or self.backend.handle(record)):  # fmt: skip
                return False
            if record.ignored_fields:
                # Started without what it asked for, it would train something else.
                record.lost, record.lost_at = StepError(message=_newer_release(record)), now()
                self.store.save(record)
                self.observations.invalidate(job_uuid)
                self._discard(job_uuid)
                log.warning("job %s: not started: %s", job_uuid, record.lost.message)
                return False
            try:
                record.runner = self.backend.start(record)
            except Exception as e:
                if job_uuid == raise_for:
                    raise
                # Recorded, not retried forever: the job fails with the reason.
                record.lost = StepError(message=f"could not start: {e}")
                record.lost_at = now()
                self.store.save(record)
                self.observations.invalidate(job_uuid)
                self._discard(job_uuid)
                log.warning("job %s: could not start: %s", job_uuid, e)
                return False
            self.store.save(record)
            self.observations.invalidate(job_uuid)
        log.info("job %s: started (%s)", job_uuid, record.runner)
        return True

    def _settle(self, record: JobRecord, seen: Observed) -> None:
        """Make a finished job's outcome durable and leave nothing of it running."""
        if seen.lost and record.lost is None:
            record.lost, record.lost_at = seen.error, now()
            self.store.save(record)
            self.observations.invalidate(record.job_uuid)
            log.warning("job %s: worker vanished; marked failed", record.job_uuid)
        if record.cancelled_at is not None or seen.lost:
            # A cancel interrupted by a server crash, or a killed worker's orphaned tasks.
            try:
                self.backend.kill(record, grace_seconds=0.5)
            except Exception as e:
                log.warning("job %s: clean-up after the end failed: %s", record.job_uuid, e)
        self.backend.forget(record)


def _newer_release(record: JobRecord) -> str:
    return (
        f"not started: a newer release wrote this job (record format {record.format_version}) "
        f"with settings this release does not know ({', '.join(record.ignored_fields)}); "
        "run it with that release, or submit it again"
    )
