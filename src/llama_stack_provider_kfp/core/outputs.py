"""A job's output layout: file names, how to read and write them, and what the status carries.

The train and prepare-data steps write here; the server reads here. Layout under a job's
output location (a local directory or an s3:// prefix):

    progress.json                 Progress + loss_history + facts (device, dtype, rows) +
                                  phases (core.phases)
    result.json                   the train step's summary (+ phases)
    error.json                    why a step failed (StepError)
    tracking.json                 where the train step logs (MLflow run id, ...; logger_config)
    logs/<step>.log               the step's recent output, uploaded by steps that run remotely
    cancel.json                   a user's cancel, written before the step is signalled
    stages/<stage>.json           each stage's status, start and end (core.stage_results)
    evaluation.json               the evaluate stage's results (base vs tuned)
    registry.json                 what the register stage registered (or why not)
    checkpoints/epoch_<N>/        one finished epoch; `epoch_<N>.partial/` while written
        merged/  adapter/  training_state.{json,pt}  metrics.json   (metrics.json last: a
        listed checkpoint is complete)
    checkpoints/step_<N>/         a periodic (or SIGTERM) checkpoint after optimizer step N,
                                  same layout; only the newest few are kept
"""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from . import files, storage
from .locations import Location
from .spec import EngineChoice
from .stage_results import STAGE_ORDER, Evaluation, Registration, StageRecord

PROGRESS = "progress.json"
RESULT = "result.json"
ERROR = "error.json"
TRACKING = "tracking.json"
METRICS = "metrics.json"
CANCEL = "cancel.json"
EVALUATION = "evaluation.json"
REGISTRY = "registry.json"
STAGES_DIR = "stages"
# What a checkpoint needs to continue training (training.resume writes them): the JSON names
# the base weights, engine, algorithm and position; the .pt holds optimizer, scheduler, RNGs.
TRAINING_STATE = "training_state.json"
TRAINING_STATE_TENSORS = "training_state.pt"
CHECKPOINTS = "checkpoints"
MERGED = "merged"
ADAPTER = "adapter"
PARTIAL_SUFFIX = ".partial"
MAX_LOSS_HISTORY = 500
# The format of the JSON files above (progress, result, error, metrics). Files without a
# `format_version` are version 1, with the same fields; readers accept unknown fields.
OUTPUT_FORMAT = 2
LOGS = "logs"
STEPS = STAGE_ORDER  # in the order they run
LOG_TAIL_LINES = 50  # lines of the job's log in every status (resources_allocated.log_tail)
LOG_TAIL_BYTES = 32768  # read at most this much from the end of a log for the tail
_CHECKPOINT_DIR = re.compile(r"^(epoch|step)_(\d+)$")


def stage_file(stage: str) -> str:
    return f"{STAGES_DIR}/{stage}.json"


def step_log(step: str) -> str:
    """Relative path of a step's log (only steps whose output location is remote write it)."""
    return f"{LOGS}/{step}.log"


def epoch_dir(epoch: int) -> str:
    """Relative path of an epoch's checkpoint folder (epochs are numbered from 1)."""
    return f"{CHECKPOINTS}/epoch_{epoch}"


def step_dir(step: int) -> str:
    """Relative path of the checkpoint taken after optimizer step `step` (within an epoch)."""
    return f"{CHECKPOINTS}/step_{step}"


class _Open(BaseModel):
    # Tolerant on read: a newer step may add fields an older server passes through.
    model_config = ConfigDict(extra="allow")


class Progress(_Open):
    step: int = 0
    total_steps: int | None = None
    epoch: int | None = None
    total_epochs: int | None = None
    loss: float | None = None
    lr: float | None = None
    tokens_per_second: float | None = None
    trained_tokens_per_second: float | None = None
    eta_seconds: float | None = None


class StepError(_Open):
    message: str
    step: str | None = None
    # The stage that failed (the status sets it from `step`; DESIGN.md "Stage outcomes").
    stage: str | None = None
    log_tail: list[str] = []
    # Written by the step for its log; dropped before a status shows the error.
    traceback: str | None = None


class TrainResult(_Open):
    """result.json: the train step's summary (training.result builds it for every engine).
    Validated where it is written and where it is read, so a renamed field fails in the step
    that wrote it, not later in another process."""

    epochs: list[dict[str, Any]] = []
    train_rows: int
    validation_rows: int
    samples_seen: int
    global_step: int
    device: str
    dtype: str
    peak_memory_mb: float
    tokens_per_second: float | None = None
    trained_tokens_per_second: float | None = None
    first_loss: float | None = None
    final_loss: float | None = None
    train_seconds: float
    # The last epoch's numeric metrics: the KFP run's Metrics artifact.
    final_metrics: dict[str, float] = {}


class StatusResources(_Open):
    """`resources_allocated` of the status response: llama-stack's only free-form field."""

    job_dir: str | None = None
    engine: EngineChoice | None = None
    progress: Progress | None = None
    loss_history: list[list[float]] = []
    device: str | None = None
    dtype: str | None = None
    rows: dict[str, int] | None = None
    result: dict[str, Any] | None = None
    error: StepError | None = None
    # The last LOG_TAIL_LINES lines of the job's log, while it runs and after it ended.
    log_tail: list[str] | None = None
    # Backend facts: the KFP run id and state, or a warning when the cluster is unreachable.
    runner: dict[str, Any] | None = None
    # Per tracker of the request's logger_config: where it logs (MLflow: run_id,
    # experiment_id, run_url; TensorBoard: log_dir; W&B: run_id, dir) or the warning that
    # stopped it.
    tracking: dict[str, Any] | None = None
    # What the status could not read (storage denied or unreachable); a status still answers.
    warnings: list[str] | None = None
    # Per process (worker, prepare-data, train): seconds from its start to each phase it
    # reached (core.phases), and its start as Unix time (started_at).
    phases: dict[str, dict[str, float]] | None = None
    # The pipeline's stages (prepare-data, train, evaluate, register) with their status.
    stages: list[StageRecord] | None = None
    # The evaluate stage's results (core.stage_results.Evaluation) and the register stage's.
    evaluation: dict[str, Any] | None = None
    registry: dict[str, Any] | None = None


class CheckpointInfo(BaseModel):
    # The epoch it finished, or (step checkpoints) the epoch it was taken in.
    epoch: int
    path: str
    name: str = ""  # epoch_<N> | step_<N>
    # Set for step checkpoints: the optimizer step after which it was taken.
    step: int | None = None
    global_step: int | None = None
    resumable: bool = False  # holds a training state (training_state.json)
    created_at: datetime
    train_loss: float | None = None
    validation_loss: float | None = None
    perplexity: float | None = None


class JobOutputs:
    """Read a job's outputs wherever they are (local directory or s3:// prefix). A file that
    is not there reads as None; S3 denying or failing a read raises Refused / Unavailable.

    `log_file`: where the job's whole log is when it runs on this machine (the local worker's
    file, which holds every step's output); without it the steps' own logs/ are read.
    """

    def __init__(self, location: Location, s3: Any = None, log_file: Path | None = None) -> None:
        self.location = location
        self._s3 = s3
        self.log_file = log_file

    def read(self, name: str) -> Any | None:
        if self.location.is_local:
            data = files.read_json(self.location.path / name)
        else:
            data = storage.read_json(self.location.join(name), self._s3)
        if isinstance(data, dict):
            data.pop("format_version", None)  # every version so far has the same fields
        return data

    def progress(self) -> dict[str, Any] | None:
        return self.read(PROGRESS)

    def result(self) -> TrainResult | None:
        data = self.read(RESULT)
        try:
            return TrainResult.model_validate(data) if isinstance(data, dict) else None
        except ValidationError:
            return None  # an older step's summary without a field: shown as absent

    def tracking(self) -> dict[str, Any] | None:
        return self.read(TRACKING)

    def evaluation(self) -> Evaluation | None:
        data = self.read(EVALUATION)
        try:
            return Evaluation.model_validate(data) if isinstance(data, dict) else None
        except ValidationError:
            return None

    def registration(self) -> Registration | None:
        data = self.read(REGISTRY)
        try:
            return Registration.model_validate(data) if isinstance(data, dict) else None
        except ValidationError:
            return None

    def stage(self, name: str) -> StageRecord | None:
        data = self.read(stage_file(name))
        try:
            return StageRecord.model_validate(data) if isinstance(data, dict) else None
        except ValidationError:
            return None

    def error(self) -> StepError | None:
        data = self.read(ERROR)
        if not isinstance(data, dict):
            return None
        try:
            return StepError.model_validate({**data, "traceback": None})
        except ValidationError:
            return None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> list[str]:
        """The job's last log lines: the local log file, or the steps' logs in run order."""
        if self.log_file is not None:
            return files.tail(self.log_file, lines, LOG_TAIL_BYTES)
        text = ""
        for step in STEPS:
            loc = self.location.join(step_log(step))
            if self.location.is_local:
                part = "\n".join(files.tail(loc.path, lines, LOG_TAIL_BYTES))
            else:
                part = storage.read_tail(loc, LOG_TAIL_BYTES, self._s3) or ""
            text += part if not part or part.endswith("\n") else part + "\n"
        return files.last_lines(text, lines)

    def _folders(self) -> dict[str, bool]:
        """Finished checkpoint folders (metrics.json present) -> holds a training state."""
        root = self.location.join(CHECKPOINTS)
        if self.location.is_local:
            d = root.path
            if not d.is_dir():
                return {}
            return {p.parent.name: (p.parent / TRAINING_STATE).is_file()
                    for p in d.glob(f"*/{METRICS}")}  # fmt: skip
        keys = set(storage.list_keys(root, self._s3))
        names = {k.split("/")[0] for k in keys if k.endswith(f"/{METRICS}")}
        return {n: f"{n}/{TRAINING_STATE}" in keys for n in names}

    def checkpoints(self) -> list[CheckpointInfo]:
        """Finished epochs and step checkpoints in training order; half-written ones are
        never listed."""
        found = []
        for name, resumable in self._folders().items():
            m = _CHECKPOINT_DIR.match(name)
            if not m:
                continue  # epoch_<N>.partial, stray files
            metrics = self.read(f"{CHECKPOINTS}/{name}/{METRICS}")
            if not isinstance(metrics, dict):
                continue
            path = str(self.location.join(CHECKPOINTS, name))
            number = int(m[2])
            fields = {"epoch": number} if m[1] == "epoch" else {"step": number}
            try:
                found.append(
                    CheckpointInfo.model_validate(
                        {**metrics, **fields, "name": name, "path": path, "resumable": resumable}
                    )
                )
            except ValidationError:
                continue
        # An epoch's checkpoint comes after the step checkpoints taken during that epoch.
        return sorted(found, key=lambda c: (c.epoch, c.step is None, c.step or 0))

    def newest_resumable(self) -> CheckpointInfo | None:
        """The checkpoint a restarted train step continues from: the most steps trained."""
        resumable = [c for c in self.checkpoints() if c.resumable and c.global_step is not None]
        return max(resumable, key=lambda c: c.global_step or 0, default=None)


def versioned(data: dict[str, Any]) -> dict[str, Any]:
    """An output file's content with the format version it is written in."""
    return {"format_version": OUTPUT_FORMAT, **data}


def write_output(location: Location, name: str, model: BaseModel, s3: Any = None) -> None:
    """One of the JSON files above, versioned, written where the server reads it."""
    data = versioned(model.model_dump(mode="json"))
    if location.is_local:
        files.write_json(location.path / name, data)
    else:
        storage.write_json(location.join(name), data, s3)


def write_error(location: Location, error: StepError, s3: Any = None) -> None:
    """What a failing step leaves for the server (the traceback goes in as an extra)."""
    write_output(location, ERROR, error, s3)


def write_cancel(location: Location, s3: Any = None) -> None:
    """Tell the train step that the SIGTERM coming is a user's cancel: stop, save nothing."""
    data = {"cancelled": True}
    if location.is_local:
        if location.path.is_dir():  # made at staging; never create folders elsewhere
            files.write_json(location.path / CANCEL, data)
    else:
        storage.write_json(location.join(CANCEL), data, s3)
