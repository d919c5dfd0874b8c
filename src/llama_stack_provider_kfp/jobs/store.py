"""Job records on disk: one directory and one atomically written JSON file per job.

Layout under `<work_dir>/jobs/<job_uuid>/`:
  job.json       the record (spec, timestamps, runner handle); written by the server only
  state.json     the worker's view (status, times, error); written by a local worker only
  reserved.json  who reserved the id (host, pid): a submit in flight before job.json exists
  worker.log     the worker's and the pipeline tasks' output
  input/         rows fetched from datasetio for inline datasets
  kfp/           kfp.local pipeline root
  output/        the job's results when they stay on this machine (see core.outputs)

Both JSON files carry a format version and are read by core.versioned: older ones are
migrated, unknown fields are dropped (and kept when the record is saved again), and a record
that still cannot be read is an `UnreadableRecord`: listed as a failed job with the reason,
its files kept.
"""

from __future__ import annotations

import logging
import shutil
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from ..boundary.files import read_json, write_json
from ..boundary.job_outputs import JobOutputs
from ..core.errors import InvalidRequest
from ..core.locations import parse
from ..core.versioned import Unreadable, merge_unknown, read_versioned
from .record import (
    RECORD_FORMAT,
    WORKER_STATE_FORMAT,
    JobRecord,
    Owner,
    WorkerState,
    check_job_id,
)

log = logging.getLogger(__name__)

JOB_FILE = "job.json"
STATE_FILE = "state.json"
RESERVED_FILE = "reserved.json"
WORKER_LOG = "worker.log"
INPUT_DIR = "input"
OUTPUT_DIR = "output"
# A reserved folder without job.json older than this, whose submitter is gone, is removed.
ABANDONED_AFTER_SECONDS = 60.0


@dataclass(frozen=True)
class UnreadableRecord:
    """A job.json this release cannot read: shown as a failed job, never changed."""

    job_uuid: str
    reason: str
    written_at: datetime
    owner: Owner | None = None  # read leniently: who may see it does not depend on the rest


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
        me = psutil.Process()
        write_json(d / RESERVED_FILE, {"host": socket.gethostname(), "pid": me.pid,
                                       "create_time": me.create_time()})  # fmt: skip
        return d

    def discard(self, job_uuid: str) -> None:
        shutil.rmtree(self.job_dir(job_uuid), ignore_errors=True)

    def save(self, record: JobRecord) -> None:
        path = self.job_dir(record.job_uuid) / JOB_FILE
        data = record.model_dump(mode="json")
        if record.ignored_fields:  # written by a newer release: keep what it added
            data = merge_unknown(read_json(path), data)
        write_json(path, data)

    def entry(self, job_uuid: str) -> JobRecord | UnreadableRecord | None:
        """The job's record; UnreadableRecord when job.json exists but cannot be read; None
        when there is no job.json."""
        path = self.job_dir(job_uuid) / JOB_FILE
        try:
            written = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        except FileNotFoundError:
            return None
        data = read_json(path)
        try:
            if data is None:
                raise Unreadable("not valid JSON")
            record, ignored = read_versioned(JobRecord, data, RECORD_FORMAT)
        except Unreadable as e:
            return UnreadableRecord(job_uuid, f"record unreadable: {e}", written, _owner(data))
        record._ignored = ignored
        return record

    def load(self, job_uuid: str) -> JobRecord | None:
        """The job's record, or None when it is missing or unreadable."""
        found = self.entry(job_uuid)
        return found if isinstance(found, JobRecord) else None

    def list_ids(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / JOB_FILE).is_file())

    def own_outputs(self, job_uuid: str) -> JobOutputs | None:
        """The outputs in the job's own folder (a local job's), with its log; None when it has
        none. Used when the record cannot say where they are, or says a place that moved."""
        job_dir = self.job_dir(job_uuid)
        out = job_dir / OUTPUT_DIR
        return JobOutputs(parse(str(out)), log_file=job_dir / WORKER_LOG) if out.is_dir() else None

    def worker_state(self, job_uuid: str) -> WorkerState | None:
        return read_worker_state(self.job_dir(job_uuid))

    def remove_abandoned(self, min_age: float = ABANDONED_AFTER_SECONDS) -> list[str]:
        """Remove reserved folders without job.json (a submit that died half-way), freeing
        their ids; a submit still in flight (its process alive) keeps its folder. A submit of
        this machine whose process is gone is removed at once; `min_age` is for the others
        (another machine's, or one that has not written its marker yet)."""
        removed = []
        for d in self.root.iterdir():
            if not d.is_dir() or (d / JOB_FILE).exists():
                continue
            try:
                age = time.time() - d.stat().st_mtime
            except FileNotFoundError:
                continue
            marker = read_json(d / RESERVED_FILE)
            if _submitter_alive(marker) or (age < min_age and not _from_here(marker)):
                continue
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
            log.warning("job %s: removed the folder of a submit that never finished", d.name)
        return removed


def _owner(data: object) -> Owner | None:
    """The owner of a record that cannot be read whole. An owner field that is there but
    unreadable makes it nobody's (no user's principal is empty): under auth it stays hidden
    rather than becoming everyone's."""
    found = data.get("owner") if isinstance(data, dict) else None
    try:
        return Owner.model_validate(found) if found is not None else None
    except ValueError:
        return Owner(principal="")


def _from_here(marker: object) -> bool:
    return isinstance(marker, dict) and marker.get("host") == socket.gethostname()


def _submitter_alive(marker: object) -> bool:
    if not isinstance(marker, dict) or marker.get("host") != socket.gethostname():
        return False  # another machine's submit: its age alone decides
    try:
        proc = psutil.Process(int(marker["pid"]))
        return abs(proc.create_time() - float(marker["create_time"])) < 1.0
    except (psutil.Error, KeyError, TypeError, ValueError):
        return False


def read_worker_state(job_dir: Path) -> WorkerState | None:
    data = read_json(job_dir / STATE_FILE)
    if not data:
        return None
    try:
        return read_versioned(WorkerState, data, WORKER_STATE_FORMAT)[0]
    except Unreadable as e:
        log.warning("%s: %s unreadable: %s", job_dir.name, STATE_FILE, e)
        return None


def write_worker_state(job_dir: Path, state: WorkerState) -> None:
    write_json(job_dir / STATE_FILE, state.model_dump(mode="json"))
