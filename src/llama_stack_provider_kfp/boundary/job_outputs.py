"""Reading and writing a job's outputs (the layout core.outputs names), wherever they are:
a local directory or an s3:// prefix."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from ..core.locations import Location
from ..core.outputs import (
    CANCEL,
    CHECKPOINT_DIR,
    CHECKPOINTS,
    ERROR,
    EVALUATION,
    LOG_TAIL_BYTES,
    LOG_TAIL_LINES,
    METRICS,
    PROGRESS,
    REGISTRY,
    RESULT,
    STEPS,
    TRACKING,
    TRAINING_STATE,
    CheckpointInfo,
    StepError,
    TrainResult,
    stage_file,
    step_log,
    versioned,
)
from ..core.stage_results import Evaluation, Registration, StageRecord
from . import files, storage


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

    def _typed[M: BaseModel](self, name: str, cls: type[M]) -> M | None:
        """A file as its model; absent when missing, or when an older step wrote it without a
        field the model needs."""
        data = self.read(name)
        try:
            return cls.model_validate(data) if isinstance(data, dict) else None
        except ValidationError:
            return None

    def result(self) -> TrainResult | None:
        return self._typed(RESULT, TrainResult)

    def tracking(self) -> dict[str, Any] | None:
        return self.read(TRACKING)

    def evaluation(self) -> Evaluation | None:
        return self._typed(EVALUATION, Evaluation)

    def registration(self) -> Registration | None:
        return self._typed(REGISTRY, Registration)

    def stage(self, name: str) -> StageRecord | None:
        return self._typed(stage_file(name), StageRecord)

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
            m = CHECKPOINT_DIR.match(name)
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
