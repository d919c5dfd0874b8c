"""A remote step's log, uploaded to the job's output prefix as it runs (core.outputs.step_log).

In a pod the step's output goes only to the pod log, which the server cannot read without the
cluster's log API; the status call reads `logs/<step>.log` beside progress.json instead. The
step's stdout and stderr (file descriptors 1 and 2, so C libraries and child processes are
included) share one pipe, so the log keeps the order they were written in: every byte still
reaches the pod log (on its stdout; Kubernetes merges the two streams anyway), the last
KEEP_BYTES are kept, and uploaded at most every UPLOAD_EVERY_SECONDS and once more at the end.
Locally nothing happens: the worker's log file already holds every step's output.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
import traceback
from collections.abc import Iterator
from typing import Any

from ..boundary import storage
from ..core.locations import Location, parse
from ..core.outputs import step_log

UPLOAD_EVERY_SECONDS = 5.0
KEEP_BYTES = 65536  # the status shows the last lines only; the pod log keeps everything
_STOP_WAIT_SECONDS = 10.0  # a child process still holding the pipe must not hang the step


@contextlib.contextmanager
def ship_log(output_uri: str, step: str, every: float = UPLOAD_EVERY_SECONDS) -> Iterator[None]:
    location = parse(output_uri)
    if location.is_local:
        yield
        return
    shipper = _Shipper(location.join(step_log(step)), every)
    shipper.start()
    failure = b""
    try:
        yield
    except BaseException:
        # executor_main prints the traceback after the step returns: too late for the log.
        failure = traceback.format_exc().encode()
        raise
    finally:
        shipper.stop(failure)


class _Shipper:
    def __init__(self, dest: Location, every: float, s3: Any = None) -> None:
        self.dest = dest
        self.every = every
        self._s3 = s3 or storage.client()
        self._buf = bytearray()
        self._version = 0  # bumped on every append; the uploader sends when it moved
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._saved: dict[int, int] = {}  # the original stdout and stderr
        self._read = -1
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        self._read, w = os.pipe()
        for fd in (1, 2):
            self._saved[fd] = os.dup(fd)
            os.dup2(w, fd)
        os.close(w)
        self._threads = [
            threading.Thread(target=self._pump, name="step-log-pump", daemon=True),
            threading.Thread(target=self._upload_loop, name="step-log-upload", daemon=True),
        ]
        for t in self._threads:
            t.start()

    def append(self, data: bytes) -> None:
        with self._lock:
            self._buf += data
            del self._buf[:-KEEP_BYTES]
            self._version += 1

    def _pump(self) -> None:
        while chunk := os.read(self._read, 65536):  # b"" once every writer has closed it
            os.write(self._saved[1], chunk)  # still to the pod log
            self.append(chunk)

    def _upload_loop(self) -> None:
        sent = 0
        while not self._done.wait(self.every):
            sent = self._upload(sent)
        self._upload(sent)

    def _upload(self, sent: int) -> int:
        with self._lock:
            version, body = self._version, bytes(self._buf)
        if version == sent:
            return sent
        try:
            storage.write_bytes(self.dest, body, self._s3)
        except Exception as e:  # a log upload never fails the step
            os.write(self._saved[2], f"step log: cannot upload to {self.dest}: {e}\n".encode())
            return sent
        return version

    def stop(self, last_words: bytes = b"") -> None:
        """Drain the pipe, add `last_words` after everything the step wrote, upload once more."""
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, saved in self._saved.items():
            os.dup2(saved, fd)  # closes our write ends: the pump sees EOF
        pump, uploader = self._threads
        pump.join(_STOP_WAIT_SECONDS)
        if last_words:
            self.append(last_words)
        deadline = time.monotonic() + _STOP_WAIT_SECONDS
        self._done.set()
        uploader.join(max(deadline - time.monotonic(), 0.1))
        if pump.is_alive():
            return  # a child still writes: leave its pipe and our copies open until exit
        for fd in [self._read, *self._saved.values()]:
            os.close(fd)
