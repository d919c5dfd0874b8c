"""OpenAI's fine-tuning jobs on the provider's jobs (service.jobs): create, retrieve, list,
cancel, events, checkpoints.

A job created here is a provider job whose id is its OpenAI id (`ftjob-...`); what OpenAI's
object carries beyond the provider's record (files, method, suffix, metadata, ...) is kept
beside it, in `<job>/openai.json` (versioned), written before the job may start. This face
shows only the jobs created through it, and of those only its caller's (others: 404).
"""

from __future__ import annotations

import asyncio
import csv
import io
import math
import os
import shutil
import time
import uuid
from functools import partial
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ..boundary import storage
from ..boundary.files import read_json, write_json
from ..boundary.job_outputs import JobOutputs
from ..config import KFPPostTrainingConfig
from ..core.errors import InvalidRequest
from ..core.outputs import CHECKPOINTS, MERGED, CheckpointInfo, epoch_dir
from ..core.spec import DPOSpec
from ..core.stage_results import Evaluation
from ..core.tracking import TrackingSpec, parse_logger_config
from ..core.versioned import Unreadable, read_versioned
from ..jobs.backend import DatasetSource, Observed
from ..jobs.leader import job_lock
from ..jobs.record import JobRecord, Owner, held_by_pause
from ..service.jobs import JobService
from ..service.paths import PathRoots
from ..service.submission import Lora, Submission, Training
from . import training_files
from .errors import bad, not_found
from .files import FileStore
from .requests import CreateJob

FACE_FILE = "openai.json"
FACE_FORMAT = 1
STATUS = {"scheduled": "queued", "in_progress": "running", "completed": "succeeded",
          "failed": "failed", "cancelled": "cancelled"}  # fmt: skip


class FaceJob(BaseModel):
    """What OpenAI's job object carries beyond the provider's record."""

    format_version: int = FACE_FORMAT
    id: str
    created_at: int
    model: str
    training_file: str
    validation_file: str | None = None
    method: dict[str, Any]
    hyperparameters: dict[str, Any]
    suffix: str | None = None
    seed: int
    metadata: dict[str, str] | None = None
    integrations: list[dict[str, Any]] | None = None
    owner: Owner
    # Set by DELETE /v1/models/{fine_tuned_model}: its weights are gone.
    model_deleted_at: int | None = None


def _epoch_count(value: object, default: int) -> int:
    return default if value in (None, "auto") else int(value)  # type: ignore[call-overload]


def auto_batch_size(rows: int) -> int:
    """OpenAI's documented rule for "auto": about 0.2 % of the examples, at most 256."""
    return max(1, min(256, round(rows * 0.002)))


class FaceJobs:
    def __init__(self, service: JobService, files: FileStore) -> None:
        self.service = service
        self.files = files
        self.config: KFPPostTrainingConfig = service.config

    # ---- create ---------------------------------------------------------------------------

    async def create(self, body: CreateJob, owner: Owner, paths: PathRoots | None) -> dict:
        method = body.method.type if body.method else "supervised"
        if method not in ("supervised", "dpo"):
            raise bad(f"method.type {method!r} is not supported by this server: use "
                      "'supervised' or 'dpo'", param="method.type", code="unsupported")  # fmt: skip
        if body.hyperparameters is not None and method != "supervised":
            raise bad("hyperparameters (top level) apply to supervised jobs; put them in "
                      "method.dpo.hyperparameters", param="hyperparameters")  # fmt: skip
        for integration in body.integrations or []:
            if integration.type != "wandb":
                raise bad(f"integration type {integration.type!r} is not supported: use "
                          "'wandb'", param="integrations")  # fmt: skip
        given = (body.method.supervised.hyperparameters if method == "supervised"
                 and body.method and body.method.supervised else None) or (
                 body.method.dpo.hyperparameters if method == "dpo" and body.method
                 and body.method.dpo else None) or body.hyperparameters  # fmt: skip
        try:
            config = self.config.for_request(body.kfp)
        except InvalidRequest as e:
            raise bad(str(e).replace('hyperparam_search_config["kfp"]', '"kfp"'),
                      param="kfp") from None  # fmt: skip
        train_path = await asyncio.to_thread(self.files.path, body.training_file, owner)
        val_id = body.validation_file
        val_path = await asyncio.to_thread(self.files.path, val_id, owner) if val_id else None
        dpo: DPOSpec | None = None
        if method == "dpo":
            train: DatasetSource = await asyncio.to_thread(
                training_files.preference_rows, train_path, "training_file", body.training_file,
                training_files.MIN_TRAINING_ROWS)  # fmt: skip
            rows = len(train)
            validation: DatasetSource | None = await asyncio.to_thread(
                training_files.preference_rows, val_path, "validation_file", val_id, 1
            ) if val_path and val_id else None  # fmt: skip
            beta = getattr(given, "beta", None)
            dpo = DPOSpec(beta=0.1 if beta in (None, "auto") else float(beta), loss_type="sigmoid")
        else:
            rows = await asyncio.to_thread(
                training_files.supervised_rows, train_path, "training_file", body.training_file,
                training_files.MIN_TRAINING_ROWS)  # fmt: skip
            if val_path and val_id:
                await asyncio.to_thread(training_files.supervised_rows, val_path,
                                        "validation_file", val_id, 1)  # fmt: skip
            train, validation = str(train_path), (str(val_path) if val_path else None)
        epochs = _epoch_count(getattr(given, "n_epochs", None), config.openai.default_epochs)
        raw_batch = getattr(given, "batch_size", None)
        batch = auto_batch_size(rows) if raw_batch in (None, "auto") else int(raw_batch)
        raw_lr = getattr(given, "learning_rate_multiplier", None)
        multiplier = 1.0 if raw_lr in (None, "auto") else float(raw_lr)
        defaults = config.optimizer_defaults
        updates: dict[str, Any] = {"optimizer_defaults": defaults.model_copy(
            update={"lr": defaults.lr * multiplier})}  # fmt: skip
        if body.seed is not None:
            updates["seed"] = body.seed
        config = config.model_copy(update=updates)
        face = config.openai
        lora = Lora(rank=face.lora_rank, alpha=face.lora_alpha, attn_modules=list(
            face.lora_modules)) if face.lora and config.algorithm is None else None  # fmt: skip
        job_id = f"ftjob-{uuid.uuid4().hex[:24]}"
        model, checkpoint = self._base(body.model, owner)
        sub = Submission(job_id, model, checkpoint, Training(epochs=epochs, batch_size=batch,
                         data_format="dialog"), lora, dpo, config=config,
                         osft=config.algorithm == "osft", tracking=_tracking(body, config),
                         named=frozenset(body.kfp or ()))  # fmt: skip
        hyper = {"batch_size": batch, "learning_rate_multiplier": multiplier, "n_epochs": epochs}
        method_body: dict[str, Any] = {"type": method}
        method_body[method] = {"hyperparameters": {**hyper, **(
            {"beta": dpo.beta} if dpo else {})}}  # fmt: skip
        face_job = FaceJob(
            id=job_id, created_at=int(time.time()), model=body.model,
            training_file=body.training_file, validation_file=body.validation_file,
            method=method_body, hyperparameters=hyper, suffix=body.suffix, seed=config.seed,
            metadata=body.metadata, owner=owner,
            integrations=[i.model_dump() for i in body.integrations] if body.integrations
            else None,
        )  # fmt: skip

        async def datasets(check: Any) -> tuple[DatasetSource, DatasetSource | None]:
            return train, validation

        def keep(job_dir: Path, record: JobRecord) -> None:
            write_json(job_dir / FACE_FILE, face_job.model_dump(mode="json"))

        self.service.check_new_job(job_id, owner.principal)
        record = await self.service.submit(sub, owner, paths, datasets, before_start=keep)
        return await asyncio.to_thread(self.job_object, record, face_job)

    def _base(self, model: str, owner: Owner) -> tuple[str, str | None]:
        """A `fine_tuned_model` (or checkpoint) name of the caller's own jobs starts from its
        merged weights; anything else is a model name as the llama-stack face reads it.
        Names are looked up exactly, never parsed."""
        if not model.startswith("ft:"):
            return model, None
        for record, face in self._owned(owner):
            outputs = self.service.backend.outputs(record)
            final = self._final_epoch(record, outputs)
            if final is not None and self.fine_tuned_model(record, face) == model:
                return final, None
            for c in outputs.checkpoints():
                if self._checkpoint_name(record, face, c) == model:
                    return f"{c.path}/{MERGED}", None
        raise not_found("model", model, param="model")

    # ---- read -----------------------------------------------------------------------------

    def _face(self, job_dir: Path) -> FaceJob | None:
        data = read_json(job_dir / FACE_FILE)
        if data is None:
            return None
        try:
            return read_versioned(FaceJob, data, FACE_FORMAT)[0]
        except Unreadable:
            return None

    def _owned(self, owner: Owner) -> list[tuple[JobRecord, FaceJob]]:
        store = self.service.store
        found = []
        for job_id in store.list_ids():
            face = self._face(store.job_dir(job_id))
            if face is None or face.owner.principal != owner.principal:
                continue
            record = store.load(job_id)
            if record is not None:
                found.append((record, face))
        found.sort(key=lambda rf: (rf[1].created_at, rf[1].id), reverse=True)  # newest first
        return found

    def get(self, job_id: str, owner: Owner) -> tuple[JobRecord, FaceJob]:
        store = self.service.store
        if not job_id.startswith("ftjob-") or not job_id[6:].isalnum():
            raise not_found("fine-tuning job", job_id)
        face = self._face(store.job_dir(job_id))
        record = store.load(job_id) if face is not None else None
        if face is None or record is None or face.owner.principal != owner.principal:
            raise not_found("fine-tuning job", job_id)
        return record, face

    def mine(
        self, owner: Owner, metadata: dict[str, str] | None
    ) -> list[tuple[JobRecord, FaceJob]]:
        mine = self._owned(owner)
        if metadata:
            mine = [(r, f) for r, f in mine if all(
                (f.metadata or {}).get(k) == v for k, v in metadata.items())]  # fmt: skip
        return mine

    def delete_model(self, model: str, owner: Owner) -> dict:
        """The fine-tuned model's weights (every checkpoint of its job) are deleted; the job
        stays, without a model to start from."""
        for record, face in self._owned(owner):
            if face.model_deleted_at is None and self.job_object(record, face)[
                    "fine_tuned_model"] == model:  # fmt: skip
                outputs = self.service.backend.outputs(record)
                where = outputs.location.join(CHECKPOINTS)
                with job_lock(self.service.store.job_dir(record.job_uuid)):
                    face.model_deleted_at = int(time.time())
                    write_json(self.service.store.job_dir(record.job_uuid) / FACE_FILE,
                               face.model_dump(mode="json"))  # fmt: skip
                if where.is_local:
                    shutil.rmtree(where.path, ignore_errors=True)
                else:
                    storage.delete_prefix(where)
                return {"id": model, "object": "model", "deleted": True}
        raise not_found("model", model, param="model")

    def pause(self, job_id: str, owner: Owner) -> dict:
        record, face = self.get(job_id, owner)
        engine = record.spec.engine.name
        why = None if engine == "huggingface" else (
            f"the {engine} engine does not save a checkpoint when it is stopped, so the job "
            "could not continue where it stopped; the huggingface engine does (provider "
            "config engine: huggingface, KFP_ENGINE)")  # fmt: skip
        record = self.service.scheduler.pause(record.job_uuid, why)
        return self.job_object(record, face)

    def resume(self, job_id: str, owner: Owner) -> dict:
        record, face = self.get(job_id, owner)
        record = self.service.scheduler.resume(record.job_uuid)
        return self.job_object(record, face)

    def cancel(self, job_id: str, owner: Owner) -> dict:
        record, face = self.get(job_id, owner)
        self.service.scheduler.cancel(record.job_uuid)
        record = self.service.store.load(job_id) or record
        return self.job_object(record, face)

    # ---- objects --------------------------------------------------------------------------

    def _final_epoch(self, record: JobRecord, outputs: JobOutputs) -> str | None:
        path = outputs.location.join(epoch_dir(record.spec.train.epochs), MERGED)
        local = outputs.location.is_local
        return str(path) if (not local or Path(str(path)).is_dir()) else None

    @staticmethod
    def fine_tuned_model(record: JobRecord, face: FaceJob) -> str:
        base = face.model.rstrip("/").rsplit("/", 1)[-1].rsplit(":", 1)[-1]
        return f"ft:{base}:{face.owner.principal}:{face.suffix or 'local'}:{record.job_uuid}"

    def _checkpoint_name(self, record: JobRecord, face: FaceJob, c: CheckpointInfo) -> str:
        return f"{self.fine_tuned_model(record, face)}:ckpt-step-{c.global_step or c.step or 0}"

    def job_object(self, record: JobRecord, face: FaceJob, seen: Observed | None = None) -> dict:
        seen = seen or self.service.scheduler.observe(record)
        outputs = self.service.backend.outputs(record)
        status = STATUS[seen.status]
        if held_by_pause(record, seen.status):
            status = "paused"  # OpenAI's API lists it; the SDK's status literal does not
        error, fine_tuned = None, None
        trained = seen.status == "completed"
        if status == "failed":
            err = seen.error
            stage = err.stage if err else None
            code = {"evaluate": "evaluation_failed", "register": "registration_failed"}.get(
                stage or "", "training_failed"
            )
            error = {"code": code, "message": err.message if err else "the job failed",
                     "param": None}  # fmt: skip
            trained = code != "training_failed"
        if trained and face.model_deleted_at is None:
            fine_tuned = self.fine_tuned_model(record, face)
        result = _safe(outputs.result)
        progress: dict[str, Any] = _safe(outputs.progress) or {}
        trained_tokens = None
        if result is not None and result.trained_tokens_per_second:
            trained_tokens = int(result.trained_tokens_per_second * result.train_seconds)
        eta = (progress.get("progress") or {}).get("eta_seconds")
        estimated = int(time.time() + eta) if status == "running" and eta else None
        result_files = []
        if seen.status in ("completed", "failed") and progress.get("loss_history"):
            checkpoints = partial(_safe, outputs.checkpoints)
            result_files = [self.files.add_result(
                record.job_uuid, "step_metrics.csv",
                lambda: _metrics_csv(progress, checkpoints() or []), face.owner).id]  # fmt: skip
            evaluation = _safe(outputs.evaluation)
            if evaluation is not None and evaluation.results:
                result_files.append(self.files.add_result(
                    record.job_uuid, "evaluation.csv", partial(_evaluation_csv, evaluation),
                    face.owner).id)  # fmt: skip
        return {
            "id": record.job_uuid, "object": "fine_tuning.job", "created_at": face.created_at,
            "error": error, "fine_tuned_model": fine_tuned,
            "finished_at": _ts(seen.completed_at or record.cancelled_at) if status in (
                "succeeded", "failed", "cancelled") else None,
            "hyperparameters": face.hyperparameters if face.method["type"] == "supervised"
            else {k: face.hyperparameters[k] for k in ("batch_size", "learning_rate_multiplier",
                                                       "n_epochs")},
            "model": face.model, "organization_id": f"org-{face.owner.principal}",
            "result_files": result_files, "seed": face.seed, "status": status,
            "trained_tokens": trained_tokens, "training_file": face.training_file,
            "validation_file": face.validation_file, "estimated_finish": estimated,
            "integrations": [{"type": "wandb", "wandb": i["wandb"]}
                             for i in face.integrations or []] or None,
            "metadata": face.metadata, "method": face.method,
        }  # fmt: skip

    def events(self, record: JobRecord, face: FaceJob) -> list[dict[str, Any]]:
        """Newest first: state changes as `message` events, each logged step as a `metrics`
        event (step, train_loss; the epoch's validation loss on its last step)."""
        seen = self.service.scheduler.observe(record)
        outputs = self.service.backend.outputs(record)
        progress = _safe(outputs.progress) or {}
        created = face.created_at
        started = _ts(seen.started_at) or created
        events: list[tuple[int, str, str, str, dict | None]] = [
            (created, "info", "message", f"Created fine-tuning job: {record.job_uuid}", None),
            (created, "info", "message", f"Validating training file: {face.training_file}",
             None),
            (created, "info", "message", "Files validated, moving job to queued state", None),
        ]  # fmt: skip
        if seen.status != "scheduled" or record.runs:
            first = _ts(record.scheduled_at) if record.runs else started
            events.append((first or started, "info", "message", "Fine-tuning job started",
                           None))  # fmt: skip
        if record.resumed_at is not None:
            run = len(record.runs) + 1
            events.append((_ts(record.resumed_at) or started, "info", "message",
                           f"Fine-tuning job resumed (run {run})", None))  # fmt: skip
        if record.paused_at is not None:
            events.append((_ts(record.paused_at) or started, "info", "message",
                           "Fine-tuning job paused", None))  # fmt: skip
        history = progress.get("loss_history") or []
        ended = _ts(seen.completed_at)
        last = max((int(s) for s, _ in history), default=0)
        span = max((ended or int(time.time())) - started, 0)
        valid = {c.global_step: c.validation_loss for c in _safe(outputs.checkpoints) or []
                 if c.step is None and c.validation_loss is not None}  # fmt: skip
        tps = (progress.get("progress") or {}).get("tokens_per_second")
        for logged, loss in history:
            step = int(logged)
            data: dict[str, Any] = {"step": step, "train_loss": loss,
                                    "total_steps": progress.get("total_steps")}  # fmt: skip
            if step in valid:
                data["valid_loss"] = valid[step]
            if tps is not None:
                data["tokens_per_second"] = tps
            at = started + (span * step // last if last else 0)
            events.append((at, "info", "metrics", f"Step {step}: training loss={loss:.4f}", data))
        evaluation = _safe(outputs.evaluation)
        if evaluation is not None and evaluation.results:
            # The evaluate stage: each task's metrics, tuned against base (extension "kfp").
            events.append((ended or started, "info", "metrics",
                           f"Evaluated against {evaluation.base_model}",
                           {"step": last, "evaluation": evaluation.flat()}))  # fmt: skip
        if seen.status == "completed":
            events.append((ended or started, "info", "message",
                           f"New fine-tuned model created: {self.fine_tuned_model(record, face)}",
                           None))  # fmt: skip
            events.append((ended or started, "info", "message",
                           "The job has successfully completed", None))  # fmt: skip
        elif seen.status == "failed":
            why = seen.error.message if seen.error else "no reason was recorded"
            events.append((ended or started, "error", "message", f"The job failed: {why}", None))
        elif seen.status == "cancelled":
            events.append((ended or started, "info", "message", "The job was cancelled", None))
        out = []
        for n, (at, level, kind, message, extra) in enumerate(events):
            out.append({"id": f"ftevent-{record.job_uuid[6:]}-{n:06d}",
                        "object": "fine_tuning.job.event", "created_at": at, "level": level,
                        "message": message, "type": kind, "data": extra or {}})  # fmt: skip
        return list(reversed(out))

    def checkpoints(self, record: JobRecord, face: FaceJob) -> list[dict[str, Any]]:
        """Newest first: every saved checkpoint (epochs and periodic steps)."""
        outputs = self.service.backend.outputs(record)
        found = _safe(outputs.checkpoints) or []
        out = []
        for c in found:
            step = c.global_step or c.step or 0
            out.append({
                "id": f"ftckpt-{record.job_uuid[6:]}-{c.name}", "object":
                "fine_tuning.job.checkpoint", "created_at": _ts(c.created_at) or 0,
                "fine_tuned_model_checkpoint": self._checkpoint_name(record, face, c),
                "fine_tuning_job_id": record.job_uuid, "step_number": step,
                "metrics": {"step": float(step), "train_loss": _num(c.train_loss),
                            "valid_loss": _num(c.validation_loss),
                            "full_valid_loss": _num(c.validation_loss)},
            })  # fmt: skip
        return list(reversed(out))


def _tracking(body: CreateJob, config: KFPPostTrainingConfig) -> TrackingSpec | None:
    """OpenAI's `wandb` integration as the provider's W&B tracking (training.tracking): the
    project, entity, run name and tags it gives; W&B's mode from the server's WANDB_MODE
    (online when unset); the API key from the server's (or the step's) WANDB_API_KEY."""
    wandb = next((i.wandb for i in body.integrations or [] if i.type == "wandb"), None)
    if wandb is None:
        return None
    section: dict[str, Any] = {"project": wandb.project, "tags": wandb.tags or []}
    if wandb.entity:
        section["entity"] = wandb.entity
    if wandb.name:
        section["name"] = wandb.name
    if os.environ.get("WANDB_MODE") in ("online", "offline", "disabled"):
        section["mode"] = os.environ["WANDB_MODE"]
    try:
        return parse_logger_config({"wandb": section}, config.mode)
    except InvalidRequest as e:
        raise bad(str(e).replace("logger_config.wandb", "integrations[0].wandb"),
                  param="integrations") from None  # fmt: skip


def _num(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def _safe(read: Any) -> Any:
    """An output read that storage may refuse: absent rather than an error (the job object
    still answers)."""
    try:
        return read()
    except Exception:
        return None


def _ts(when: Any) -> int | None:
    return int(when.timestamp()) if when is not None else None


def _evaluation_csv(evaluation: Evaluation) -> bytes:
    rows = "".join(f"{k},{v}\n" for k, v in sorted(evaluation.flat().items()))
    return f"metric,value\n{rows}".encode()


def _metrics_csv(progress: dict, checkpoints: list[CheckpointInfo]) -> bytes:
    """OpenAI's result file: one row per logged step."""
    valid = {c.global_step: c.validation_loss for c in checkpoints if c.step is None}
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["step", "train_loss", "valid_loss"])
    for step, loss in progress.get("loss_history") or []:
        writer.writerow([int(step), loss, valid.get(int(step), "")])
    return buf.getvalue().encode()
