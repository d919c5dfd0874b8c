"""One observation per job, shared by the scheduler's rounds and the status calls.

Observing a remote job costs calls to the cluster and to S3 (the run, its pods and events, the
job's error file). The scheduler observes every unfinished job each round; a status call uses
that observation while it is younger than `max_age` and observes itself only when it is not,
so a status call never waits on the cluster while a fresh observation exists, and a hundred
callers of one job make one call. Submit and cancel invalidate a job's observation, so a
cancel reads `cancelled` at once.

One lock guards the table; a per-job lock is held while that job is observed, so concurrent
callers of one job wait for the observation in flight instead of making their own.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from .backend import Observed
from .record import JobRecord


class Observations:
    def __init__(self, observe: Callable[[JobRecord], Observed], max_age: float) -> None:
        self._observe = observe
        self.max_age = max_age
        self._lock = threading.Lock()  # the two tables; never held over an observation
        self._seen: dict[str, tuple[float, int, Observed]] = {}
        self._busy: dict[str, threading.Lock] = {}
        self._generation: dict[str, int] = {}  # bumped by invalidate

    def get(self, record: JobRecord, max_age: float | None = None) -> Observed:
        """A fresh enough observation of the job: cached, or made now (one at a time)."""
        limit = self.max_age if max_age is None else max_age
        job = record.job_uuid
        with self._lock:
            busy = self._busy.setdefault(job, threading.Lock())
        with busy:
            with self._lock:
                cached = self._seen.get(job)
                generation = self._generation.get(job, 0)
            if cached and cached[1] == generation and time.monotonic() - cached[0] <= limit:
                return cached[2]
            seen = self._observe(record)
            with self._lock:
                if self._generation.get(job, 0) == generation:  # not invalidated meanwhile
                    self._seen[job] = (time.monotonic(), generation, seen)
            return seen

    def fresh(self, record: JobRecord) -> Observed:
        """Observe now (a dispatch round), and share the result."""
        return self.get(record, max_age=-1.0)

    def invalidate(self, job_uuid: str) -> None:
        with self._lock:
            self._seen.pop(job_uuid, None)
            self._generation[job_uuid] = self._generation.get(job_uuid, 0) + 1

    def forget(self, job_uuid: str) -> None:
        """Drop a finished job's entries (its next status call observes it again)."""
        with self._lock:
            self._seen.pop(job_uuid, None)
            self._busy.pop(job_uuid, None)
            self._generation.pop(job_uuid, None)
