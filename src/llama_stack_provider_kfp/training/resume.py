"""Training state in a checkpoint folder (core.resume describes it): write it, and find the
checkpoint a train step continues from.

A train step continues, in this order: the newest complete checkpoint with training state in
its own output location (the same step restarted: a pod restarted after preemption, a KFP
retry), else the checkpoint the job was submitted to resume (JobSpec.resume_from).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..boundary.files import read_json, write_json
from ..boundary.job_outputs import JobOutputs
from ..core.outputs import TRAINING_STATE, TRAINING_STATE_TENSORS
from ..core.resume import TrainingState
from ..core.spec import JobSpec
from .io import Output


@dataclass(frozen=True)
class Resume:
    folder: Path  # the checkpoint, locally (downloaded when it lives in S3)
    where: str  # its location, as users name it
    state: TrainingState
    tensors: dict[str, Any]
    in_place: bool  # found in the job's own output (a restarted step)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_state(folder: Path, state: TrainingState, tensors: dict[str, Any]) -> None:
    torch.save(tensors, folder / TRAINING_STATE_TENSORS)
    write_json(folder / TRAINING_STATE, state.model_dump(mode="json"))


def find(spec: JobSpec, output: Output, scratch: Path) -> Resume | None:
    """The checkpoint this train step continues from, or None (a fresh start)."""
    own = JobOutputs(output.location, output.s3).newest_resumable()
    if own is not None:
        where, in_place = own.path, True
    elif spec.resume_from:
        where, in_place = spec.resume_from, False
    else:
        return None
    folder = output.fetch(where, scratch)
    data = read_json(folder / TRAINING_STATE)
    if data is None:
        raise ValueError(f"{where} holds no {TRAINING_STATE}: it cannot be resumed")
    state = TrainingState.model_validate(data)
    # Only tensors, numbers and containers: safe to load with weights_only.
    tensors = torch.load(folder / TRAINING_STATE_TENSORS, map_location="cpu", weights_only=True)
    print(f"resume: continuing from {where} after step {state.global_step}", flush=True)
    return Resume(folder, where, state, tensors, in_place)
