"""The llama-stack face of the provider: the only module that knows llama-stack types.

Requests are checked here, before anything is created, and turned into a JobSpec; the rest of
the package sees only that.
"""

from __future__ import annotations

import asyncio
import math
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from llama_stack.providers.inline.post_training.torchtune.post_training import (
    TorchtunePostTrainingImpl,
)
from llama_stack_api import (
    CancelTrainingJobRequest,
    Checkpoint,
    DatasetIO,
    Datasets,
    GetTrainingJobArtifactsRequest,
    GetTrainingJobStatusRequest,
    JobStatus,
    ListPostTrainingJobsResponse,
    LoraFinetuningConfig,
    PostTrainingJob,
    PostTrainingJobArtifactsResponse,
    PostTrainingJobStatusResponse,
    PostTrainingMetric,
    PreferenceOptimizeRequest,
    QATFinetuningConfig,
    ResourceNotFoundError,
    SupervisedFineTuneRequest,
)
from llama_stack_api.common.errors import DatasetNotFoundError
from llama_stack_api.datasetio.models import IterRowsRequest
from llama_stack_api.datasets.models import GetDatasetRequest

from . import data_uri, storage
from .config import KFPPostTrainingConfig
from .http_errors import as_http_errors
from .job_outputs import list_checkpoints, read_progress, read_result
from .job_store import JobRecord, JobStore, check_job_id, now
from .model_source import ModelError, hub_model, inspect_s3_model, pvc_model, resolve_model
from .placement import remote_placement
from .rows import RowError, to_messages
from .runners.local import LocalRunner
from .runners.remote import RemoteRunner
from .scheduler import JobScheduler
from .spec import DataSpec, JobSpec, LoraSpec, ModelSpec, OptimSpec, TrainSpec

LORA_EXAMPLE = (
    "algorithm_config={'type': 'LoRA', 'lora_attn_modules': ['q_proj', 'v_proj'], "
    "'apply_lora_to_mlp': True, 'apply_lora_to_output': False, 'rank': 8, 'alpha': 16}"
)
_ATTN_MODULES = ("q_proj", "k_proj", "v_proj", "output_proj")


def _descriptor_repo(model: str) -> str | None:
    """The Hugging Face repo llama-stack's model registry lists for a descriptor."""
    try:
        from llama_stack.models.llama.sku_list import resolve_model as resolve_sku
    except ImportError:  # pragma: no cover
        return None
    sku = resolve_sku(model)
    return getattr(sku, "huggingface_repo", None) if sku else None


def _check_training(tc) -> None:
    problems = []
    if tc.n_epochs < 1:
        problems.append(f"n_epochs must be >= 1 (got {tc.n_epochs})")
    if tc.max_steps_per_epoch is not None and tc.max_steps_per_epoch < 1:
        problems.append(f"max_steps_per_epoch must be >= 1 (got {tc.max_steps_per_epoch})")
    if tc.gradient_accumulation_steps < 1:
        problems.append(
            f"gradient_accumulation_steps must be >= 1 (got {tc.gradient_accumulation_steps})"
        )
    if tc.max_validation_steps is not None and tc.max_validation_steps < 1:
        problems.append(
            f"max_validation_steps must be >= 1 or null (got {tc.max_validation_steps})"
        )
    if (tc.dtype or "bf16") not in ("bf16", "fp32"):
        problems.append(f"dtype {tc.dtype!r} is not supported: use 'bf16' or 'fp32'")
    dc, oc = tc.data_config, tc.optimizer_config
    if dc is None:
        problems.append("training_config.data_config is required (dataset_id, batch_size, ...)")
    elif dc.batch_size < 1:
        problems.append(f"data_config.batch_size must be >= 1 (got {dc.batch_size})")
    if oc is None:
        problems.append("training_config.optimizer_config is required (optimizer_type, lr, ...)")
    else:
        if not (math.isfinite(oc.lr) and oc.lr > 0):
            problems.append(f"optimizer_config.lr must be a positive number (got {oc.lr})")
        if not (math.isfinite(oc.weight_decay) and oc.weight_decay >= 0):
            problems.append(f"optimizer_config.weight_decay must be >= 0 (got {oc.weight_decay})")
        if oc.num_warmup_steps < 0:
            problems.append(
                f"optimizer_config.num_warmup_steps must be >= 0 (got {oc.num_warmup_steps})"
            )
    if problems:
        raise ValueError("invalid training_config: " + "; ".join(problems))
    if dc.packed:
        raise NotImplementedError("data_config.packed=true is not supported yet; send packed=false")


def _check_lora(lc: LoraFinetuningConfig, model: ModelSpec) -> None:
    problems = []
    bad = [m for m in lc.lora_attn_modules if m not in _ATTN_MODULES]
    if bad:
        problems.append(f"unknown lora_attn_modules {bad}; choose from {list(_ATTN_MODULES)}")
    if not (lc.lora_attn_modules or lc.apply_lora_to_mlp or lc.apply_lora_to_output):
        problems.append("no module to adapt: name lora_attn_modules or set apply_lora_to_mlp")
    if lc.rank < 1:
        problems.append(f"rank must be >= 1 (got {lc.rank})")
    if lc.alpha <= 0:
        problems.append(f"alpha must be > 0 (got {lc.alpha})")
    if lc.apply_lora_to_output and model.arch and model.arch.tie_word_embeddings:
        problems.append(
            f"{model.name} ties its output projection to the embeddings; "
            "set apply_lora_to_output=false"
        )
    if problems:
        raise ValueError("invalid LoRA algorithm_config: " + "; ".join(problems))


class KFPPostTrainingImpl(TorchtunePostTrainingImpl):
    """llama-stack's torchtune provider, with its jobs run as Kubeflow Pipelines.

    The parent's __init__ is not called: it starts llama-stack's in-memory scheduler thread,
    which this provider replaces with file-backed job records and a runner.
    """

    def __init__(
        self, config: KFPPostTrainingConfig, datasetio_api: DatasetIO, datasets: Datasets
    ) -> None:
        self.config = config
        self.datasetio_api = datasetio_api
        self.datasets_api = datasets
        self.store = JobStore(config.work_dir)
        self.remote = config.mode == "remote"
        if self.remote:
            if not config.remote.s3_bucket:
                raise ValueError("mode: remote needs remote.s3_bucket (where jobs stage data)")
            if config.remote.s3_endpoint_url:
                # The server's own boto3 clients (staging, progress) use the same endpoint.
                os.environ.setdefault("AWS_ENDPOINT_URL", config.remote.s3_endpoint_url)
            self.runner = RemoteRunner(self.store, config.remote, remote_placement(config.remote))
        else:
            self.runner = LocalRunner(self.store)
        self.scheduler = JobScheduler(
            self.store,
            self.runner,
            config.max_concurrent_jobs,
            # Local checks are file reads; remote ones are calls to the KFP API.
            poll_seconds=config.remote.poll_seconds if self.remote else 0.5,
        )

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        # Jobs run in their own sessions and outlive the server unless told otherwise.
        await asyncio.to_thread(self.scheduler.shutdown, self.config.cancel_jobs_on_shutdown)

    # ---- submit -------------------------------------------------------------------------

    @as_http_errors
    async def supervised_fine_tune(self, request: SupervisedFineTuneRequest) -> PostTrainingJob:
        check_job_id(request.job_uuid)
        if self.store.exists(request.job_uuid):
            raise ValueError(
                f"job_uuid {request.job_uuid!r} is already used by another job; choose a new one"
            )
        algo = request.algorithm_config
        if algo is None:
            raise ValueError(f"algorithm_config is required; for LoRA send {LORA_EXAMPLE}")
        if isinstance(algo, QATFinetuningConfig):
            raise NotImplementedError("QAT fine-tuning is not supported yet; use LoRA")
        if algo.quantize_base:
            raise NotImplementedError(
                "quantize_base (QLoRA) is not supported yet; send quantize_base=false"
            )
        tc = request.training_config
        _check_training(tc)
        if not request.model and not request.checkpoint_dir:
            raise ValueError(
                "name the base model: model='Llama3.2-1B-Instruct', a Hugging Face repo id or "
                "a directory, or checkpoint_dir=<directory with the weights>"
            )
        model_name = request.model or request.checkpoint_dir
        try:
            model = await asyncio.to_thread(self._resolve_model, model_name, request.checkpoint_dir)
        except ModelError as e:
            raise ValueError(str(e)) from None
        _check_lora(algo, model)

        dc = tc.data_config
        fmt = dc.data_format.value
        train_src = await self._dataset_source(dc.dataset_id, fmt)
        val_src = (
            await self._dataset_source(dc.validation_dataset_id, fmt)
            if dc.validation_dataset_id
            else None
        )

        if self.remote:
            await asyncio.to_thread(self.runner.check)  # endpoint and token, before anything
        job_dir = self.store.reserve(request.job_uuid)
        try:
            output_uri = self._output_uri(request.job_uuid, job_dir)
            train_uri = await self._materialize(train_src, job_dir, "train.jsonl")
            val_uri = (
                await self._materialize(val_src, job_dir, "validation.jsonl") if val_src else None
            )
            spec = JobSpec(
                job_uuid=request.job_uuid,
                model=model,
                data=DataSpec(
                    uri=train_uri,
                    data_format=fmt,
                    validation_uri=val_uri,
                    validation_fraction=self.config.validation_fraction,
                ),
                train=TrainSpec(
                    epochs=tc.n_epochs,
                    max_steps_per_epoch=tc.max_steps_per_epoch,
                    gradient_accumulation_steps=tc.gradient_accumulation_steps,
                    batch_size=dc.batch_size,
                    shuffle=dc.shuffle,
                    train_on_input=bool(dc.train_on_input),
                    dtype=tc.dtype or "bf16",
                    max_validation_steps=tc.max_validation_steps,
                    max_seq_len=self.config.max_seq_len,
                    seed=self.config.seed,
                    device=self.config.device,
                    enable_activation_checkpointing=bool(
                        tc.efficiency_config
                        and tc.efficiency_config.enable_activation_checkpointing
                    ),
                    enable_activation_offloading=bool(
                        tc.efficiency_config and tc.efficiency_config.enable_activation_offloading
                    ),
                ),
                lora=LoraSpec(
                    rank=algo.rank,
                    alpha=algo.alpha,
                    attn_modules=list(algo.lora_attn_modules),
                    apply_to_mlp=algo.apply_lora_to_mlp,
                    apply_to_output=algo.apply_lora_to_output,
                    use_dora=bool(algo.use_dora),
                ),
                optim=OptimSpec(
                    type=tc.optimizer_config.optimizer_type.value,
                    lr=tc.optimizer_config.lr,
                    weight_decay=tc.optimizer_config.weight_decay,
                    warmup_steps=tc.optimizer_config.num_warmup_steps,
                ),
                output_format=self.config.checkpoint_format or model.layout,
                output_uri=output_uri,
            )
            record = JobRecord(job_uuid=request.job_uuid, spec=spec, scheduled_at=now())
            await asyncio.to_thread(self.scheduler.submit, record)
        except BaseException:
            self.store.discard(request.job_uuid)
            raise
        return PostTrainingJob(job_uuid=request.job_uuid)

    async def _dataset_source(self, dataset_id: str, fmt: str) -> str | list[dict]:
        """The dataset's URI, or its rows when registered inline; checks a bounded sample."""
        try:
            dataset = await self.datasets_api.get_dataset(GetDatasetRequest(dataset_id=dataset_id))
        except DatasetNotFoundError:
            raise ValueError(
                f"dataset {dataset_id!r} is not registered; register it first "
                "(client.beta.datasets.register) or fix the dataset_id"
            ) from None
        source = dataset.source
        n = self.config.submit_sample_rows
        if source.type == "uri" and data_uri.has_credentials(source.uri):
            raise ValueError(
                f"dataset {dataset_id!r} carries a credential in its URI; register it without "
                "one and give the token through the environment (HF_TOKEN), which is never "
                "stored in job records or pipeline parameters"
            )
        if source.type == "uri":
            try:
                sample = await asyncio.to_thread(data_uri.sample_rows, source.uri, n)
            except data_uri.DataSourceError as e:
                raise ValueError(f"dataset {dataset_id!r}: {e}") from None
            found: str | list[dict] = source.uri
        else:
            # One call for all rows: each iterrows call rebuilds the whole dataset.
            page = await self.datasetio_api.iterrows(
                IterRowsRequest(dataset_id=dataset_id, limit=-1)
            )
            found = sample = list(page.data)
        if not sample:
            raise ValueError(f"dataset {dataset_id!r} is empty; it needs at least one row")
        for i, row in enumerate(sample[:n], 1):
            try:
                to_messages(row, fmt)
            except RowError as e:
                raise ValueError(
                    f"dataset {dataset_id!r} row {i} does not match data_format={fmt!r}: {e}. "
                    f"Expected columns: "
                    + (
                        "chat_completion_input (JSON list of messages) and expected_answer"
                        if fmt == "instruct"
                        else "dialog (JSON list of messages ending with the assistant's)"
                    )
                ) from None
        return found

    def _resolve_model(self, name: str, checkpoint_dir: str | None) -> ModelSpec:
        where = checkpoint_dir or name
        if self.remote:
            if storage.is_s3(where):
                return inspect_s3_model(name, where)
            if where.startswith("pvc://"):
                return pvc_model(name, where)
            if where.startswith("/") or where.startswith("."):
                raise ModelError(
                    f"in remote mode the weights must be reachable from the cluster: upload "
                    f"them with scripts/upload-model.py and pass checkpoint_dir='s3://...', "
                    f"or use pvc://<claim>/<path> (got {where!r})"
                )
            repo = where.removeprefix("hf://")
            return hub_model(name, _descriptor_repo(repo) or repo)
        return resolve_model(name, checkpoint_dir, self.config.model_dirs, _descriptor_repo(name))

    def _job_prefix(self, job_uuid: str) -> str:
        r = self.config.remote
        return storage.join(f"s3://{r.s3_bucket}", r.s3_prefix, "jobs", job_uuid)

    def _output_uri(self, job_uuid: str, job_dir: Path) -> str:
        if self.remote:
            return storage.join(self._job_prefix(job_uuid), "output")
        (job_dir / "output").mkdir()
        return str(job_dir / "output")

    async def _materialize(self, source: str | list[dict], job_dir: Path, name: str) -> str:
        """A dataset location the pipeline's steps can read: inline rows become a JSONL file;
        in remote mode, files on this machine are uploaded to the job's S3 prefix."""
        if isinstance(source, list):
            path = await asyncio.to_thread(data_uri.write_jsonl, source, job_dir / "input" / name)
            source = str(path)
        if not self.remote:
            return source
        if source.startswith("data:"):  # too big for a pipeline parameter: stage it as a file
            path = job_dir / "input" / name
            await asyncio.to_thread(data_uri.write_jsonl, data_uri.iter_rows(source), path)
            source = str(path)
        local = data_uri.local_file(source)
        if local is None:
            return source  # s3://, or a hub dataset the pod reads itself
        key = Path(name).stem + local.suffix  # keep the suffix: it says how to parse the file
        uri = storage.join(self._job_prefix(job_dir.name), "input", key)
        await asyncio.to_thread(storage.upload_file, local, uri)
        return uri

    # ---- tracking -----------------------------------------------------------------------

    def _record(self, job_uuid: str) -> JobRecord:
        check_job_id(job_uuid)
        record = self.store.load(job_uuid)
        if record is None:
            raise ResourceNotFoundError(
                job_uuid, "Post-training job", "alpha.post_training.job.list"
            )
        return record

    @staticmethod
    def _checkpoints(record: JobRecord) -> list[Checkpoint]:
        out = []
        for c in list_checkpoints(record.spec.output_uri):
            metrics = None
            if c.get("validation_loss") is not None:
                metrics = PostTrainingMetric(
                    epoch=c["epoch"],
                    train_loss=c.get("train_loss") or float("nan"),
                    validation_loss=c["validation_loss"],
                    perplexity=c["perplexity"],
                )
            out.append(
                Checkpoint(
                    identifier=f"{record.job_uuid}/epoch_{c['epoch']}",
                    created_at=datetime.fromisoformat(c["created_at"]),
                    epoch=c["epoch"],
                    post_training_job_id=record.job_uuid,
                    path=c["path"],
                    training_metrics=metrics,
                )
            )
        return out

    @as_http_errors
    async def get_training_jobs(self) -> ListPostTrainingJobsResponse:
        records = [r for r in map(self.store.load, self.store.list_ids()) if r is not None]
        records.sort(key=lambda r: r.scheduled_at)
        return ListPostTrainingJobsResponse(
            data=[PostTrainingJob(job_uuid=r.job_uuid) for r in records]
        )

    @as_http_errors
    async def get_training_job_status(
        self, request: GetTrainingJobStatusRequest
    ) -> PostTrainingJobStatusResponse:
        record = self._record(request.job_uuid)
        # Off the event loop: in remote mode this calls the KFP API and S3.
        return await asyncio.to_thread(self._status, record)

    def _status(self, record: JobRecord) -> PostTrainingJobStatusResponse:
        seen = self.runner.observe(record)
        output = record.spec.output_uri
        resources: dict[str, Any] = {"job_dir": str(self.store.job_dir(record.job_uuid))}
        if seen.note:
            resources["runner"] = seen.note
        resources.update(read_progress(output) or {})
        result = read_result(output)
        if result:
            resources["result"] = {k: v for k, v in result.items() if k != "epochs"}
        if seen.error:
            resources["error"] = seen.error
        return PostTrainingJobStatusResponse(
            job_uuid=record.job_uuid,
            status=JobStatus(seen.status),
            scheduled_at=record.scheduled_at,
            started_at=seen.started_at,
            completed_at=seen.completed_at,
            resources_allocated=resources,
            checkpoints=self._checkpoints(record),
        )

    @as_http_errors
    async def cancel_training_job(self, request: CancelTrainingJobRequest) -> None:
        record = self._record(request.job_uuid)
        seen = await asyncio.to_thread(self.runner.observe, record)
        if seen.status in ("completed", "failed", "cancelled"):
            raise ValueError(f"job {record.job_uuid!r} has already ended ({seen.status})")
        await asyncio.to_thread(self.scheduler.cancel, record.job_uuid)

    @as_http_errors
    async def get_training_job_artifacts(
        self, request: GetTrainingJobArtifactsRequest
    ) -> PostTrainingJobArtifactsResponse:
        record = self._record(request.job_uuid)
        checkpoints = await asyncio.to_thread(self._checkpoints, record)
        return PostTrainingJobArtifactsResponse(job_uuid=record.job_uuid, checkpoints=checkpoints)

    @as_http_errors
    async def preference_optimize(self, request: PreferenceOptimizeRequest) -> PostTrainingJob:
        raise NotImplementedError("preference optimization (DPO) is not supported yet")
