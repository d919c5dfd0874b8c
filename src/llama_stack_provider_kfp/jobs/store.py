"""Job records on disk: one directory and one atomically written JSON file per job.

Layout under `<work_dir>/jobs/<job_uuid>/`:
  job.json     the record (spec, timestamps, runner handle); written by the server only
  state.json   the worker's view (status, times, error); written by a local worker only
  worker.log   the worker's and the pipeline tasks' output
  input/       rows fetched from datasetio for inline datasets
  kfp/         kfp.local pipeline root
  output/      the job's results when they stay on this machine (see core.outputs)
"""

from __future__ import annotations

import shutil
from pathlib import Path

from pydantic import ValidationError

from ..core.errors import InvalidRequest
from ..core.files import read_json, write_json
from .record import JobRecord, WorkerState, check_job_id

JOB_FILE = "job.json"
STATE_FILE = "state.json"
WORKER_LOG = "worker.log"
INPUT_DIR = "input"
OUTPUT_DIR = "output"


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
            raise InvalidRequest(
                f"job_uuid {job_uuid!r} is already used by another job; choose a new one"
            ) from None
        return d

    def discard(self, job_uuid: str) -> None:
        shutil.rmtree(self.job_dir(job_uuid), ignore_errors=True)

    def save(self, record: JobRecord) -> None:
        write_json(self.job_dir(record.job_uuid) / JOB_FILE, record.model_dump(mode="json"))

    def load(self, job_uuid: str) -> JobRecord | None:
        data = read_json(self.job_dir(job_uuid) / JOB_FILE)
        if data is None:
            return None
        try:
            return JobRecord.model_validate(data)
        except ValidationError:
            return None

    def list_ids(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / JOB_FILE).is_file())

    def worker_state(self, job_uuid: str) -> WorkerState | None:
        return read_worker_state(self.job_dir(job_uuid))


def read_worker_state(job_dir: Path) -> WorkerState | None:
    data = read_json(job_dir / STATE_FILE)
    try:
        return WorkerState.model_validate(data) if data else None
    except ValidationError:
        return None


def write_worker_state(job_dir: Path, state: WorkerState) -> None:
    write_json(job_dir / STATE_FILE, state.model_dump(mode="json"))
