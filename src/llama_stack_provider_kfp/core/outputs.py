"""A job's output layout: file names, the models of its files, and what the status carries
(boundary.job_outputs reads and writes them).

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
from typing import Any

from pydantic import BaseModel, ConfigDict

from .spec import EngineChoice
from .stage_results import STAGE_ORDER, StageRecord

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
CHECKPOINT_DIR = re.compile(r"^(epoch|step)_(\d+)$")


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
    # Set while the job is paused (the OpenAI face's pause): when, and how it resumes.
    paused: dict[str, Any] | None = None


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


def versioned(data: dict[str, Any]) -> dict[str, Any]:
    """An output file's content with the format version it is written in."""
    return {"format_version": OUTPUT_FORMAT, **data}
