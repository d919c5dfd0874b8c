"""Resuming training from a checkpoint: what a checkpoint's training_state.json says, and
whether a new job may continue it (checked at submit, without torch).

A job whose `checkpoint_dir` is one of this provider's checkpoint folders continues that
training: the base weights come from the location the state names, the trained weights,
optimizer, scheduler, data position and RNGs from the folder. Settings that decide what
"the next step" means (algorithm, LoRA shape, optimizer, batch size, data order, sequence
length, dtype) must equal the checkpoint's; `n_epochs` may grow (train further) and the
validation settings, device and logger may change.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import InvalidRequest
from .outputs import METRICS, TRAINING_STATE
from .spec import JobSpec

STATE_FORMAT = 1
# Engines whose checkpoints hold a training state (the torchtune engine's do not).
RESUMABLE_ENGINES = ("huggingface",)
# TrainSpec fields a resumed job must keep: they fix the data order and the step size.
_SAME_TRAIN = ("batch_size", "gradient_accumulation_steps", "shuffle", "packed", "max_seq_len",
               "seed", "dtype", "train_on_input", "max_steps_per_epoch",
               "max_grad_norm")  # fmt: skip


class TrainingState(BaseModel):
    """training_state.json: small, readable by the server; the tensors are in the .pt."""

    model_config = ConfigDict(extra="allow")

    format: int = STATE_FORMAT
    engine: str
    algorithm: str
    base_model: str  # Location of the base weights (LoRA trains on top of them)
    job_uuid: str
    global_step: int
    # Where training continues: epoch `resume_epoch` (1-based) after `position` of its
    # optimizer steps; an epoch checkpoint continues at the next epoch's start.
    resume_epoch: int
    position: int
    steps_per_epoch: int
    train_rows: int
    samples_seen: int
    spec: dict[str, Any]  # the JobSpec that trained it (no secrets: JobSpecs hold none)


def load_state(read: Callable[[str], Any], where: str) -> TrainingState | None:
    """The training state of a checkpoint folder, None when `where` is not a checkpoint of
    this provider (plain weights); InvalidRequest for one that cannot be resumed."""
    data = read(TRAINING_STATE)
    if data is None:
        if isinstance(read(METRICS), dict):
            raise InvalidRequest(
                f"{where} is a checkpoint without training state: the torchtune engine (or a "
                "release before resumable checkpoints) wrote it, and it cannot be resumed. To "
                f"start a new training from its weights pass checkpoint_dir='{where}/merged' "
                "(full weights), or train it again with the huggingface engine"
            )
        return None
    try:
        state = TrainingState.model_validate(data)
    except ValidationError as e:
        msg = e.errors()[0]["msg"]
        raise InvalidRequest(f"{where}/{TRAINING_STATE} is unreadable ({msg})") from None
    if state.format > STATE_FORMAT:
        raise InvalidRequest(
            f"{where} was written by a newer version of this provider (training state format "
            f"{state.format}); upgrade the server to resume it"
        )
    if state.engine not in RESUMABLE_ENGINES:
        raise InvalidRequest(f"{where}: checkpoints of the {state.engine} engine cannot resume")
    return state


def check_resume(state: TrainingState, spec: JobSpec, where: str) -> None:
    """Refuse (400) a job that cannot continue this checkpoint, saying what to change."""
    old = JobSpec.model_validate(state.spec)
    problems = []
    if spec.engine.name != state.engine:
        problems.append(
            f"it was trained by the {state.engine} engine and this job would run on "
            f"{spec.engine.name} (set the provider's engine to auto or {state.engine})"
        )
    new_algo = spec.algorithm
    if new_algo != state.algorithm:
        problems.append(f"it trains {state.algorithm} and this request {new_algo}: send the "
                        "same algorithm_config, kind of request and hyperparam_search_config"
                        '["kfp"] algorithm')  # fmt: skip
    elif spec.lora is not None and old.lora is not None:
        for field in ("rank", "alpha", "requested_modules", "apply_to_mlp", "apply_to_output"):
            a, b = getattr(old.lora, field), getattr(spec.lora, field)
            if a != b:
                problems.append(f"LoRA {field} is {a!r} in the checkpoint, {b!r} here")
    elif spec.osft is not None and old.osft is not None:
        # The saved factors have the shapes these give.
        for field in ("unfreeze_rank_ratio", "target_modules", "freeze_non_targets"):
            a, b = getattr(old.osft, field), getattr(spec.osft, field)
            if a != b and (field != "target_modules" or (a and b)):
                problems.append(f"OSFT {field} is {a!r} in the checkpoint, {b!r} here")
    if spec.dpo != old.dpo:
        problems.append(f"the DPO settings differ ({old.dpo} in the checkpoint)")
    for field in ("type", "lr", "weight_decay", "warmup_steps", "warmup_ratio"):
        a, b = getattr(old.optim, field), getattr(spec.optim, field)
        if a != b:
            problems.append(f"optimizer {field} is {a!r} in the checkpoint, {b!r} here")
    for field in _SAME_TRAIN:
        a, b = getattr(old.train, field), getattr(spec.train, field)
        if a != b and field == "max_grad_norm":
            problems.append(
                f"max_grad_norm is {a if a else 'off'} in the checkpoint, {b if b else 'off'} "
                'here (leave it out of hyperparam_search_config["kfp"]: a resumed job clips '
                "as its checkpoint was trained)"
            )
        elif a != b:
            problems.append(f"{field} is {a!r} in the checkpoint, {b!r} here")
    if spec.data.data_format != old.data.data_format:
        problems.append(f"data_format is {old.data.data_format!r} in the checkpoint")
    if spec.train.epochs < state.resume_epoch:
        problems.append(
            f"it has trained {state.resume_epoch - 1} epoch(s) and {state.position} step(s) "
            f"into the next; send n_epochs >= {state.resume_epoch} to train further"
        )
    if problems:
        raise InvalidRequest(
            f"checkpoint_dir {where} cannot be resumed by this request: "
            + "; ".join(problems)
            + ". Only n_epochs (more: train further), validation settings, device and "
            "logger_config may change"
        )


def check_rows(state: TrainingState, train_rows: int, where: str) -> None:
    """The data position means something only on the same rows."""
    if train_rows != state.train_rows:
        raise InvalidRequest(
            f"{where} was trained on {state.train_rows} training rows and this job has "
            f"{train_rows}: resume with the same dataset (and validation split)"
        )
