"""One dispatcher per work dir, and one writer at a time per job, across processes.

Any number of server processes (the llama-stack face, the OpenAI face) may submit to and read
one work dir. Exactly one of them dispatches (starts queued jobs within the limit, settles
ended ones): the process holding an exclusive `flock` on `<work_dir>/dispatch.lock`. The
kernel releases it when that process dies, and another takes over at its next round.
Leadership is per process (a second scheduler on the same work dir in the same process shares
it: that happens in tests, and when both faces run in one process they share one scheduler).

A job's record is changed under an exclusive `flock` on `<job>/.lock` too, so that a cancel in
one process and a start in another never overwrite each other's record.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Iterator
from pathlib import Path

LOCK_FILE = "dispatch.lock"
JOB_LOCK_FILE = ".lock"

_held: dict[str, int] = {}  # lock path -> this process's open descriptor holding it
_guard = threading.Lock()


class WorkDirLock:
    def __init__(self, work_dir: Path) -> None:
        self.path = str(work_dir / LOCK_FILE)

    def acquire(self) -> bool:
        """Whether this process dispatches for the work dir (taking the lock when free)."""
        with _guard:
            if self.path in _held:
                return True
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                return False
            _held[self.path] = fd
            return True

    def release(self) -> None:
        with _guard:
            fd = _held.pop(self.path, None)
        if fd is not None:
            os.close(fd)  # closing the descriptor drops the flock


@contextlib.contextmanager
def job_lock(job_dir: Path) -> Iterator[None]:
    """Exclusive across processes while a job's record is read, changed and written."""
    try:
        fd = os.open(job_dir / JOB_LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:  # the job's folder is gone (discarded): nothing to guard
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
