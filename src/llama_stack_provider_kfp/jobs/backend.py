"""The seam between the provider and where jobs run, split by caller.

A Backend runs the one pipeline definition somewhere: `backends.local` (a worker process
running kfp.local on this machine) or `backends.kfp` (a KFP v2 cluster). The provider picks
one from its config, once; everything above this interface is the same for both. Its two
callers need disjoint parts of it: the scheduler runs jobs (`JobRunner`: start, observe, kill,
forget), the front end prepares them and reads their results (`JobPreparer`: check, resolve
the model, read a training state, stage inputs, read outputs).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from ..boundary.job_outputs import JobOutputs
from ..core.outputs import StepError
from ..core.resume import TrainingState
from ..core.spec import ModelSpec
from .record import JobRecord, RunnerHandle, Status

# A dataset as the front end found it: its registered URI, or its rows when registered inline.
DatasetSource = str | list[dict]


@dataclass
class Observed:
    status: Status
    started_at: datetime | None = None
    completed_at: datetime | None = None
    # One model from the step that failed to the status (the status adds the log's tail).
    error: StepError | None = None
    # Backend facts for the status response (e.g. the KFP run id and state).
    note: dict | None = None
    # True when the backend lost the job (its worker vanished without an outcome).
    lost: bool = False


@dataclass(frozen=True)
class JobInputs:
    """A job's datasets as the front end found them."""

    train: DatasetSource
    validation: DatasetSource | None = None


@dataclass(frozen=True)
class StagedInputs:
    """Locations the pipeline's steps can read and write (see core.locations)."""

    train_uri: str
    validation_uri: str | None
    output_uri: str


class JobRunner(Protocol):
    """What the scheduler needs to run jobs."""

    name: str
    # How often the scheduler re-checks running and queued jobs.
    poll_seconds: float
    # How old an observation a status call may answer from (observe() costs what it costs:
    # file reads locally, calls to the cluster remotely).
    observation_max_age: float

    def start(self, record: JobRecord) -> RunnerHandle: ...

    def handle(self, record: JobRecord) -> RunnerHandle | None:
        """The handle of a started job (None while it is queued)."""
        ...

    def observe(self, record: JobRecord) -> Observed:
        """Where the job stands. A job that completed stays `completed` even when a cancel
        was recorded after it ended (the cancel came too late to change anything); a cancel
        recorded before any other outcome makes it `cancelled`."""
        ...

    def kill(self, record: JobRecord, grace_seconds: float = 5.0, save: bool = False) -> None:
        """Stop the job; return when nothing of it runs any more. `save`: a pause, so the
        train step checkpoints before it stops (no cancel marker; the full grace period)."""
        ...

    def rerun(self, record: JobRecord) -> None:
        """Before a paused job runs again: set aside what its last run left that would read
        as the new run's outcome."""
        ...

    def forget(self, record: JobRecord) -> None:
        """Drop what the backend keeps in memory about a finished job."""
        ...


class JobPreparer(Protocol):
    """What the front end needs to prepare a job and read its results."""

    def check(self) -> None:
        """Raise core.errors.Unavailable/Refused when no job could be started now."""
        ...

    def resolve_model(
        self, name: str, checkpoint_dir: str | None, descriptor_repo: str | None
    ) -> ModelSpec:
        """Find the weights a request names, where this backend's steps can read them."""
        ...

    def training_state(self, where: str) -> TrainingState | None:
        """The training state of a checkpoint folder of this provider at `where` (a request's
        checkpoint_dir), None for anything else; InvalidRequest for one not resumable."""
        ...

    def stage(self, job_uuid: str, job_dir: Path, inputs: JobInputs) -> StagedInputs:
        """Put a job's inputs where its steps can read them; choose its output location."""
        ...

    def outputs(self, record: JobRecord) -> JobOutputs:
        """Where the job's progress, result, error and checkpoints are read."""
        ...


class Backend(JobRunner, JobPreparer, Protocol):
    """Both parts: what `backends.select_backend` returns."""
