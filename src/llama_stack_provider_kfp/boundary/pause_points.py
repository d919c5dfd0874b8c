"""Named pause points, for tests only: a test stops a job at a known place (after optimizer
step N, right after a submit reserved the job's folder, while a checkpoint is half written)
and acts on it there (cancel, kill, restart the server), so that the test means the same on a
fast GPU, where the job would otherwise be over before the test acts.

Inert unless the environment variable KFP_TEST_PAUSE (test-only: never set it in production)
names a directory. It is read once, at import; without it every point is one comparison.

Points are armed per job, so one server runs paused and unpaused jobs side by side, and every
process of a job (server, worker, kfp.local task, torchrun ranks) sees the same arming:

- a test arms `<point>` for a job by creating `<dir>/<job_uuid>/<point>` (`Pauses.arm`),
  before the job gets there (for a new job: before submitting it);
- the first process of that job to reach the point writes `<point>.reached` beside it (its
  pid, `Pauses.wait` returns it), then waits while the arm file exists;
- the test releases it by removing the arm file (`Pauses.release`), or kills or signals the
  process. A signal whose handler returns (the train step's graceful SIGTERM) does not end the
  wait: signal, then release. An arming fires once: a step restarted in place does not stop
  at the same point again. A wait ends by itself after MAX_WAIT_SECONDS, so that a pause a
  test forgot cannot hold a process for ever.

Points:
  submit.reserved          the server: a submit reserved the job's folder; no record, no staging
  train.step:<N>           the train step's writing rank, after optimizer step N (both engines;
                           progress.json shows step N)
  train.stop_requested     the train step's process, when a SIGTERM has asked it to save and
                           stop (not a cancel): a test that pauses a job through the API (which
                           signals in the background) waits here before it releases train.step
  checkpoint.write:<name>  the train step's writing rank, when `checkpoints/<name>.partial/`
                           holds everything (metrics.json last) and only its rename is left
                           (<name>: epoch_<N> or step_<N>)
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

from .files import read_json, write_json

ENV = "KFP_TEST_PAUSE"
MAX_WAIT_SECONDS = 900.0
_POLL_SECONDS = 0.02
_REACHED = ".reached"

_root = os.environ.get(ENV)
ROOT: Path | None = Path(_root) if _root else None


def armed(point: str, job: str | None) -> bool:
    """Whether `point` is armed for `job` and has not fired yet."""
    if ROOT is None or not job:
        return False
    arm = ROOT / job / point
    return arm.exists() and not arm.with_name(point + _REACHED).exists()


def reach(point: str, job: str | None) -> None:
    """Pause here if a test armed this point for this job (see the module docstring)."""
    if not armed(point, job):
        return
    assert ROOT is not None and job
    arm = ROOT / job / point
    write_json(arm.with_name(point + _REACHED), {"pid": os.getpid()})
    print(f"pause point {point}: paused (test-only, {ENV})", flush=True)
    deadline = time.monotonic() + MAX_WAIT_SECONDS
    while arm.exists() and time.monotonic() < deadline:
        time.sleep(_POLL_SECONDS)
    print(f"pause point {point}: released", flush=True)


class Pauses:
    """The test's side: arm points of jobs, wait until one is reached, release it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @property
    def env(self) -> dict[str, str]:
        """What the processes under test need in their environment."""
        return {ENV: str(self.root)}

    def arm(self, job: str, point: str) -> None:
        folder = self.root / job
        folder.mkdir(parents=True, exist_ok=True)
        (folder / (point + _REACHED)).unlink(missing_ok=True)
        (folder / point).touch()

    def wait(
        self,
        job: str,
        point: str,
        timeout: float = 300.0,
        going: Callable[[], bool] | None = None,
    ) -> int:
        """Wait until `job` is paused at `point`; the pid of the process that paused.
        `going` (e.g. "the job is still running") is checked on the way, to fail early."""
        reached = self.root / job / (point + _REACHED)
        deadline = time.monotonic() + timeout
        checked = -1e9
        while True:
            data = read_json(reached)
            if data is not None:
                return int(data["pid"])
            now = time.monotonic()
            if going is not None and now - checked >= 0.5:  # a status call: not every poll
                checked = now
                if not going():
                    raise AssertionError(f"{job} ended before pause point {point}")
            if now > deadline:
                raise AssertionError(f"{job} did not reach pause point {point} in {timeout} s")
            time.sleep(_POLL_SECONDS)

    def release(self, job: str, point: str) -> None:
        (self.root / job / point).unlink(missing_ok=True)
