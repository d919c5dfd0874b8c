"""What the backend observed and the job wrote -> llama-stack response types."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from llama_stack_api import (
    Checkpoint,
    JobStatus,
    PostTrainingJobStatusResponse,
    PostTrainingMetric,
)

from ..boundary.job_outputs import JobOutputs
from ..core.errors import Unavailable, Upstream
from ..core.outputs import CheckpointInfo, StatusResources, StepError
from ..core.stage_results import stage_table
from ..jobs.backend import Observed
from ..jobs.record import JobRecord, Status, held_by_pause
from ..jobs.store import UnreadableRecord

STATUS: dict[Status, JobStatus] = {
    "scheduled": JobStatus.scheduled,
    "in_progress": JobStatus.in_progress,
    "completed": JobStatus.completed,
    "failed": JobStatus.failed,
    "cancelled": JobStatus.cancelled,
}


def checkpoint(job_uuid: str, info: CheckpointInfo) -> Checkpoint:
    metrics = None
    # The API's metric needs a validation loss: only jobs with a validation set have one.
    if info.validation_loss is not None and info.perplexity is not None:
        metrics = PostTrainingMetric(
            epoch=info.epoch,
            train_loss=info.train_loss if info.train_loss is not None else float("nan"),
            validation_loss=info.validation_loss,
            perplexity=info.perplexity,
        )
    # <job>/epoch_<N>, or <job>/step_<N> for a periodic or SIGTERM checkpoint (whose epoch
    # is the one it was taken in).
    return Checkpoint(
        identifier=f"{job_uuid}/{info.name or f'epoch_{info.epoch}'}",
        created_at=info.created_at,
        epoch=info.epoch,
        post_training_job_id=job_uuid,
        path=info.path,
        training_metrics=metrics,
    )


def checkpoints(job_uuid: str, outputs: JobOutputs) -> list[Checkpoint]:
    return [checkpoint(job_uuid, c) for c in outputs.checkpoints()]


def unreadable(
    found: UnreadableRecord, job_dir: Path, outputs: JobOutputs | None
) -> PostTrainingJobStatusResponse:
    """A job whose record this release cannot read: failed, with the reason; whatever its own
    folder holds (`outputs`: checkpoints, log) is still shown."""
    resources = StatusResources(job_dir=str(job_dir), error=StepError(message=found.reason))
    if outputs is not None:
        resources.log_tail = outputs.log_tail() or None
    return PostTrainingJobStatusResponse(
        job_uuid=found.job_uuid,
        status=JobStatus.failed,
        scheduled_at=found.written_at,
        resources_allocated=resources.model_dump(mode="json", exclude_none=True),
        checkpoints=checkpoints(found.job_uuid, outputs) if outputs else [],
    )


class _Reads:
    """A status answers even when storage denies or fails a read: the reason goes into
    `warnings` instead (a missing file is no warning: it reads as None). Once the endpoint
    did not answer, the other reads are skipped rather than each waiting out its timeout."""

    def __init__(self) -> None:
        self.warnings: list[str] = []
        self.unreachable = False

    def __call__[T](self, read: Callable[[], T], default: T) -> T:
        if self.unreachable:
            return default
        try:
            return read()
        except Upstream as e:
            self.warnings.append(str(e))
            self.unreachable = isinstance(e, Unavailable)
            return default


def status(
    record: JobRecord, seen: Observed, outputs: JobOutputs, job_dir: Path
) -> PostTrainingJobStatusResponse:
    lenient = _Reads()
    ran = seen.status != "scheduled"
    paused = None
    if held_by_pause(record, seen.status):
        # llama-stack's JobStatus has no "paused": the job waits, as a queued one does, and
        # its stopped run (a SIGTERM, with a checkpoint) is no failure.
        seen = replace(seen, status="scheduled", error=None, completed_at=None, lost=False)
        paused = {
            "paused_at": record.paused_at.isoformat() if record.paused_at else None,
            "resume": f"POST /v1/fine_tuning/jobs/{record.job_uuid}/resume on the OpenAI face "
            "(llama-stack-kfp serve openai): it continues from its newest checkpoint",
        }
    progress: dict[str, Any] | None = lenient(outputs.progress, None)
    resources = StatusResources.model_validate(
        {"job_dir": str(job_dir), "engine": record.spec.engine, **(progress or {})}
    )
    resources.paused = paused
    if seen.note:
        resources.runner = seen.note
    if record.spec.tracking is not None:
        resources.tracking = lenient(outputs.tracking, None)
    result = lenient(outputs.result, None)
    if result:
        # Its phases are the progress's (the same, shown once).
        dumped = result.model_dump(mode="json").items()
        resources.result = {k: v for k, v in dumped if k not in ("epochs", "phases")}
    if ran:
        tail: list[str] = lenient(lambda: outputs.log_tail(), [])
        resources.log_tail = tail or None
    if seen.error:
        # The error's own tail (a step's, or KFP's) wins; else the job's log, read once above.
        resources.error = seen.error.model_copy(
            update={
                "log_tail": seen.error.log_tail or resources.log_tail or [],
                "stage": seen.error.stage or seen.error.step,
            }
        )
    spec = record.spec
    names = ["prepare-data", *spec.stages]
    recorded = {n: lenient(partial(outputs.stage, n), None) for n in names}
    failed = resources.error.stage if resources.error else None
    resources.stages = stage_table(names, recorded, seen.status, failed)
    if spec.evaluation is not None:
        evaluation = lenient(outputs.evaluation, None)
        if evaluation is not None:
            resources.evaluation = evaluation.model_dump(mode="json", exclude_none=True)
    if spec.registry is not None:
        registration = lenient(outputs.registration, None)
        if registration is not None:
            resources.registry = registration.model_dump(mode="json", exclude_none=True)
    found: list[Checkpoint] = lenient(lambda: checkpoints(record.job_uuid, outputs), [])
    resources.warnings = lenient.warnings or None
    return PostTrainingJobStatusResponse(
        job_uuid=record.job_uuid,
        status=STATUS[seen.status],
        scheduled_at=record.scheduled_at,
        started_at=seen.started_at,
        completed_at=seen.completed_at,
        resources_allocated={
            k: v
            for k, v in resources.model_dump(mode="json", exclude={"error": {"traceback"}}).items()
            if v is not None
        },
        checkpoints=found,
    )
