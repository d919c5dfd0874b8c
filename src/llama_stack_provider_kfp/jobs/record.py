"""What is known about a job: the server's record and the worker's own report."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, PrivateAttr

from ..core.errors import InvalidRequest
from ..core.outputs import StepError
from ..core.spec import JobSpec

# The provider's job states; the front end maps them to llama-stack's JobStatus.
Status = Literal["scheduled", "in_progress", "completed", "failed", "cancelled"]
TERMINAL: tuple[Status, ...] = ("completed", "failed", "cancelled")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def now() -> datetime:
    return datetime.now(UTC)


# The format of job.json and state.json that this release writes (core.versioned). 1: the
# releases before versions were written; 2: the same fields, versioned and read tolerantly.
RECORD_FORMAT = 2
WORKER_STATE_FORMAT = 2


class _Stored(BaseModel):
    # Unknown fields are found (and dropped, with their paths) by core.versioned, not here.
    model_config = ConfigDict(extra="forbid")

    format_version: int = 1
    # Fields a newer release wrote that this one dropped on reading: such a record is shown,
    # never started, and saved with those fields kept (JobStore.save).
    _ignored: list[str] = PrivateAttr(default_factory=list)

    @property
    def ignored_fields(self) -> list[str]:
        return self._ignored


class RunnerHandle(BaseModel):
    """How a backend finds a started job again. local: the worker's pid and start time
    (guards against a recycled pid); kfp: the run id."""

    model_config = ConfigDict(extra="forbid")

    pid: int | None = None
    create_time: float | None = None
    run_id: str | None = None


class Owner(BaseModel):
    """Who submitted a job: llama-stack's authenticated user. Kept in the record only: the
    JobSpec travels into the pipeline, where every KFP user of the namespace can read it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    principal: str
    attributes: dict[str, list[str]] | None = None


class JobRecord(_Stored):
    format_version: int = RECORD_FORMAT
    job_uuid: str
    spec: JobSpec
    scheduled_at: datetime
    # None while queued; set when the backend has started the job.
    runner: RunnerHandle | None = None
    cancelled_at: datetime | None = None
    # Set by the server when the job's worker vanished without reporting an outcome, or when
    # it could not be started.
    lost: StepError | None = None
    lost_at: datetime | None = None
    # None without auth, and in records written before jobs had owners: an unowned resource.
    owner: Owner | None = None
    # Paused (stopped with a checkpoint, never started again until resumed); a resume is a
    # new run of the same job continuing from its own newest checkpoint: `runs` keeps the
    # runners of the runs before the current one, oldest first.
    paused_at: datetime | None = None
    resumed_at: datetime | None = None
    runs: list[RunnerHandle] = []


class WorkerState(_Stored):
    format_version: int = WORKER_STATE_FORMAT
    status: Status
    started_at: datetime | None = None
    completed_at: datetime | None = None
    # The failed step's own report (error.json), or why the pipeline failed without one.
    error: StepError | None = None
    # The worker's own handle: lets the server adopt a worker whose start it did not record.
    runner: RunnerHandle | None = None


def held_by_pause(record: JobRecord, status: Status) -> bool:
    """Paused and not ended: its run stopped (or is stopping) with a checkpoint and it waits
    for a resume. Every face shows this the same way; a run that completed before the pause
    took effect has ended, and a cancel ends a paused job."""
    return record.paused_at is not None and status != "completed" and record.cancelled_at is None


def check_job_id(job_uuid: str) -> None:
    if not _SAFE_ID.match(job_uuid) or job_uuid in (".", ".."):
        raise InvalidRequest(
            f"job_uuid {job_uuid!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
