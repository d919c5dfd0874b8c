"""Graceful stop: a SIGTERM from outside (preemption, node drain, Kubernetes deleting the pod)
asks the engine to checkpoint at the next optimizer-step boundary and stop; a user's cancel
(core.outputs CANCEL, written by the server before it signals) stops at once and saves
nothing. The time allowed is the sender's: the pod's terminationGracePeriodSeconds remotely
(30 s by default), the provider's `stop_grace_seconds` locally."""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any

from ..boundary import pause_points
from ..core.outputs import CANCEL
from .io import Output


class TrainingStopped(RuntimeError):
    """Stopped by SIGTERM; the message names the checkpoint to resume from."""


class GracefulStop:
    def __init__(self, output: Output, job: str | None = None) -> None:
        self.output, self.job = output, job
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():  # signals reach only it
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            return
        try:
            cancelled = self.output.exists(CANCEL)
        except Exception as e:
            # Denied or unreachable: save as for a preemption. A checkpoint nobody needed
            # costs the grace period; taking it as a cancel would lose every preempted run's
            # work wherever the step may not list the bucket (S3 then answers 403, not 404,
            # for the marker that is not there). Said in the log, never silently.
            print(f"SIGTERM: cannot read the cancel marker ({e}); taking it as a preemption",
                  flush=True)  # fmt: skip
            cancelled = False
        if cancelled:
            raise SystemExit(128 + signum)
        self.requested = True
        print("SIGTERM: saving a checkpoint at the next optimizer step, then stopping", flush=True)
        pause_points.reach("train.stop_requested", self.job)  # tests only
