"""Job records: one directory and one atomically written JSON file per job.

Layout under `<work_dir>/jobs/<job_uuid>/`:
  job.json     the record (spec, timestamps, runner handle); written by the server only
  state.json   the worker's view (status, times, error); written by the worker only
  worker.log   the worker's and the pipeline tasks' output
  input/       rows fetched from datasetio for inline datasets
  kfp/         kfp.local pipeline root
  output/      the job's results (progress.json, checkpoints/epoch_<N>/...)
"""

from __future__ import annotations

import re
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from .atomic_json import read_json, write_json
from .spec import JobSpec

Status = Literal["scheduled", "in_progress", "completed", "failed", "cancelled"]
TERMINAL: tuple[Status, ...] = ("completed", "failed", "cancelled")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def now() -> datetime:
    return datetime.now(UTC)


class RunnerHandle(BaseModel):
    """Local: the worker's pid and start time (guards against a recycled pid).
    Remote: the KFP run id."""

    pid: int | None = None
    create_time: float | None = None
    run_id: str | None = None


class JobRecord(BaseModel):
    job_uuid: str
    spec: JobSpec
    scheduled_at: datetime
    # None while queued; set when the worker process is started.
    runner: RunnerHandle | None = None
    cancelled_at: datetime | None = None
    # Set by the server when the worker vanished without reporting an outcome.
    lost: dict | None = None
    lost_at: datetime | None = None


class WorkerState(BaseModel):
    status: Status
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: dict | None = None
    # The worker's own handle: lets the server adopt a worker whose start it did not record.
    runner: RunnerHandle | None = None


def check_job_id(job_uuid: str) -> None:
    if not _SAFE_ID.match(job_uuid) or job_uuid in (".", ".."):
        raise ValueError(
            f"job_uuid {job_uuid!r} is not allowed: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )


class JobStore:
    def __init__(self, work_dir: Path) -> None:
        self.root = work_dir / "jobs"
        self.root.mkdir(parents=True, exist_ok=True)

    def job_dir(self, job_uuid: str) -> Path:
        check_job_id(job_uuid)
        return self.root / job_uuid

    def exists(self, job_uuid: str) -> bool:
        return self.job_dir(job_uuid).exists()

    def reserve(self, job_uuid: str) -> Path:
        """Create the job's directory; fails if the id was ever used."""
        d = self.job_dir(job_uuid)
        try:
            d.mkdir()
        except FileExistsError:
            raise ValueError(
                f"job_uuid {job_uuid!r} is already used by another job; choose a new one"
            ) from None
        return d

    def discard(self, job_uuid: str) -> None:
        shutil.rmtree(self.job_dir(job_uuid), ignore_errors=True)

    def save(self, record: JobRecord) -> None:
        write_json(self.job_dir(record.job_uuid) / "job.json", record.model_dump(mode="json"))

    def load(self, job_uuid: str) -> JobRecord | None:
        data = read_json(self.job_dir(job_uuid) / "job.json")
        if data is None:
            return None
        try:
            return JobRecord.model_validate(data)
        except ValueError:
            return None

    def list_ids(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / "job.json").is_file())

    def worker_state(self, job_uuid: str) -> WorkerState | None:
        data = read_json(self.job_dir(job_uuid) / "state.json")
        try:
            return WorkerState.model_validate(data) if data else None
        except ValueError:
            return None


def write_worker_state(job_dir: Path, state: WorkerState) -> None:
    write_json(job_dir / "state.json", state.model_dump(mode="json"))
