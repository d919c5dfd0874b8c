"""The provider's implementation of llama-stack's post-training API.

Each method: check and translate the request (api.translate, api.datasets), hand a JobSpec to
the scheduler, answer from what the backend observes (api.responses). Which backend runs the
jobs was decided once, at construction; nothing here depends on it.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

from llama_stack.core.access_control.datatypes import AccessRule
from llama_stack.core.datatypes import User
from llama_stack.providers.inline.post_training.torchtune.post_training import (
    TorchtunePostTrainingImpl,
)
from llama_stack_api import (
    CancelTrainingJobRequest,
    DatasetIO,
    Datasets,
    GetTrainingJobArtifactsRequest,
    GetTrainingJobStatusRequest,
    ListPostTrainingJobsResponse,
    PostTrainingJob,
    PostTrainingJobArtifactsResponse,
    PostTrainingJobStatusResponse,
    PreferenceOptimizeRequest,
    SupervisedFineTuneRequest,
)

from ..backends import select_backend
from ..config import KFPPostTrainingConfig
from ..core import pause_points
from ..core.engines import JobTraits, select_engine
from ..core.errors import Forbidden, InvalidRequest, JobNotFound, LimitReached, Unsupported
from ..core.eval_tasks import check_evaluation, lm_eval_problem, read_task_file
from ..core.http_data import HttpPolicy
from ..core.registry_probe import check_registry_reachable
from ..core.resume import check_resume, check_rows
from ..core.spec import EngineChoice, EvaluationSpec, ModelSpec, algorithm
from ..core.tracking import check_reachable, parse_logger_config
from ..jobs.backend import JobInputs, JobPreparer
from ..jobs.record import JobRecord, check_job_id, now
from ..jobs.scheduler import JobScheduler
from ..jobs.store import JobStore, UnreadableRecord
from . import responses, stages, translate
from .access import READ, UPDATE, Access
from .datasets import dataset_source, sample_reader
from .errors import as_http_errors
from .paths import PathRoots


class KFPPostTrainingImpl(TorchtunePostTrainingImpl):
    """llama-stack's torchtune provider, with its jobs run as Kubeflow Pipelines.

    The parent's __init__ is not called: it starts llama-stack's in-memory scheduler thread,
    which this provider replaces with file-backed job records and a backend.
    """

    def __init__(
        self,
        config: KFPPostTrainingConfig,
        datasetio_api: DatasetIO,
        datasets: Datasets,
        policy: list[AccessRule] | None = None,
    ) -> None:
        self.config = config
        self.access = Access(policy)
        self.datasetio_api = datasetio_api
        self.datasets_api = datasets
        self.store = JobStore(config.work_dir)
        backend = select_backend(config, self.store)
        self.backend: JobPreparer = backend  # the scheduler runs the jobs with the same one
        self.scheduler = JobScheduler(
            self.store,
            backend,
            config.max_concurrent_jobs,
            observation_max_age=config.observation_max_age_seconds,
        )

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        # Jobs run outside the server and outlive it unless told otherwise.
        await asyncio.to_thread(self.scheduler.shutdown, self.config.cancel_jobs_on_shutdown)

    # ---- submit -------------------------------------------------------------------------

    @as_http_errors
    async def supervised_fine_tune(self, request: SupervisedFineTuneRequest) -> PostTrainingJob:
        user = self.access.user()
        self._check_new_job(request.job_uuid, user)
        config = self._config_for(request.hyperparam_search_config)
        extension = (request.hyperparam_search_config or {}).get("kfp")
        translate.check_algorithm_choice(request.algorithm_config, extension)
        lora = translate.check_algorithm(request.algorithm_config)
        osft = request.algorithm_config is None and config.algorithm == "osft"
        translate.check_osft_settings(config, osft, extension)
        translate.check_training(request.training_config, config.world())
        tracking = parse_logger_config(request.logger_config, config.mode)
        name = translate.model_name(request)
        submission = translate.Submission(
            request.job_uuid, name, request.checkpoint_dir, request.training_config, lora, None,
            tracking=tracking, config=config, osft=osft, named=frozenset(extension or ()),
        )  # fmt: skip
        return await self._submit(submission, user)

    @as_http_errors
    async def preference_optimize(self, request: PreferenceOptimizeRequest) -> PostTrainingJob:
        user = self.access.user()
        self._check_new_job(request.job_uuid, user)
        config = self._config_for(request.hyperparam_search_config)
        dpo = translate.check_dpo(request.algorithm_config)
        translate.check_training(request.training_config, config.world())
        tracking = parse_logger_config(request.logger_config, config.mode)
        dc = request.training_config.data_config
        if dc is not None and dc.packed:
            raise Unsupported("packed=true packs supervised fine-tuning rows only; for DPO send "
                              "packed=false")  # fmt: skip
        # The 0.6.1 DPO request has no LoRA fields: the provider's (or the request's extension's)
        # algorithm, else dpo.full / dpo's LoRA.
        osft = config.algorithm == "osft"
        extension = (request.hyperparam_search_config or {}).get("kfp")
        translate.check_osft_settings(config, osft, extension)
        lora = None if config.algorithm else translate.dpo_lora(config.dpo)
        submission = translate.Submission(
            request.job_uuid, request.finetuned_model, None, request.training_config, lora, dpo,
            tracking=tracking, config=config, osft=osft, named=frozenset(extension or ()),
        )  # fmt: skip
        return await self._submit(submission, user)

    def _config_for(self, hyperparam_search_config: dict | None) -> KFPPostTrainingConfig:
        """The provider config with the request's own settings (DESIGN.md "Per-request
        extensions": hyperparam_search_config["kfp"])."""
        return self.config.for_request((hyperparam_search_config or {}).get("kfp"))

    def _paths(self, user: User | None) -> PathRoots | None:
        if user is None:
            return None
        config = self.config
        roots = config.allowed_path_roots
        if roots is None:
            from huggingface_hub.constants import HF_HUB_CACHE

            roots = [*config.model_dirs, Path(HF_HUB_CACHE)]

        def may_read(job_uuid: str) -> bool:
            try:
                found = self.store.entry(job_uuid)
            except InvalidRequest:  # not a job folder's name
                return False
            return found is not None and self.access.allows(READ, job_uuid, found.owner, user)

        return PathRoots(roots, config.work_dir, may_read)

    def _check_new_job(self, job_uuid: str, user: User | None) -> None:
        # Ids are global (the KFP backend finds runs by name): one taken by another user is
        # refused too, which tells the caller that it exists (README "Several users").
        check_job_id(job_uuid)
        if self.store.exists(job_uuid):
            raise InvalidRequest(
                f"job_uuid {job_uuid!r} is already used by another job; choose a new one"
            )
        limit = self.config.max_jobs_per_user
        if user is not None and limit is not None:
            mine = [j for j in self.scheduler.active() if (r := self.store.load(j)) is not None
                    and r.owner is not None and r.owner.principal == user.principal]  # fmt: skip
            if len(mine) >= limit:
                raise LimitReached(
                    f"you have {len(mine)} job(s) queued or running and the server allows "
                    f"{limit} per user (max_jobs_per_user); wait for one to end or cancel one"
                )

    async def _submit(self, sub: translate.Submission, user: User | None) -> PostTrainingJob:
        """Everything that can be checked before anything is created, then the job."""
        config = sub.config
        stage_names = sub.stages  # refuses a bad `stages` before anything is read
        paths = self._paths(user)  # with auth: which local paths this user may name
        if paths is not None:
            paths.check(sub.checkpoint_dir, "checkpoint_dir")
            paths.check_model(sub.model)
            for task_file in config.evaluation.task_files if "evaluate" in stage_names else []:
                paths.check(task_file, "evaluation task file")
        # A checkpoint of this provider is resumed: its base weights are the model.
        where = sub.checkpoint_dir or sub.model
        trained = "train" not in stage_names  # evaluate/register checkpoint_dir, the tuned one
        if trained:
            translate.check_finished_checkpoint(sub.checkpoint_dir)
            state = None
        else:
            state = await asyncio.to_thread(self.backend.training_state, where)
        if trained:  # the request's model is the base the checkpoint is compared with
            model = await asyncio.to_thread(
                self.backend.resolve_model, sub.model, None, translate.descriptor_repo(sub.model)
            )
        elif state is not None:
            model = await asyncio.to_thread(
                self.backend.resolve_model, state.spec["model"]["name"], state.base_model, None
            )
        else:
            model = await asyncio.to_thread(
                self.backend.resolve_model,
                sub.model,
                sub.checkpoint_dir,
                translate.descriptor_repo(sub.model),
            )
        targets = translate.lora_targets(sub.lora, model) if sub.lora is not None else None
        lora_spec = translate.lora_spec(sub.lora, targets)
        osft_spec = translate.osft_spec(config.osft, model) if sub.osft else None
        fits_torchtune = targets is None or targets.torchtune_attn is not None
        traits = JobTraits.of(
            model,
            algorithm(lora_spec, sub.dpo, osft_spec),
            fits_torchtune,
            config.world(),
            config.nodes(),
        )
        if trained:
            engine = EngineChoice(name="none", reason=f"nothing to train: {', '.join(stage_names)}"
                                  f" of {where}")  # fmt: skip
        elif state is not None:
            engine = translate.resume_engine(state, traits, config.engine, where)
        else:
            engine = select_engine(traits, config.engine)
        dc = sub.training.data_config
        assert dc is not None  # check_training refused it missing
        translate.check_batch_split(dc.batch_size, config.world(), engine.name)
        fmt, sample = sub.data_format, config.submit_sample_rows
        reader = sample_reader(config)
        check_uri = paths.check_dataset if paths is not None else None
        train = await dataset_source(
            self.datasets_api, self.datasetio_api, dc.dataset_id, fmt, sample, reader, check_uri
        )
        validation = (
            await dataset_source(
                self.datasets_api,
                self.datasetio_api,
                dc.validation_dataset_id,
                fmt,
                sample,
                reader,
                check_uri,
            )
            if dc.validation_dataset_id
            else None
        )
        await asyncio.to_thread(_check_evaluation, stages.evaluation_spec(config, stage_names),
                                model, config.data_sources.http_policy())  # fmt: skip
        # Reachable, before anything is created: the cluster, and a tracking server.
        await asyncio.to_thread(self.backend.check)
        await asyncio.to_thread(
            check_reachable, sub.tracking, config.tracking_probe_timeout_seconds
        )
        if "register" in stage_names:
            rc = config.registry
            uri = rc.uri or (sub.tracking.mlflow.tracking_uri
                             if sub.tracking and sub.tracking.mlflow else None)  # fmt: skip
            await asyncio.to_thread(check_registry_reachable, rc.kind, uri,
                                    rc.probe_timeout_seconds)  # fmt: skip
        job_dir = self.store.reserve(sub.job_uuid)
        try:
            if pause_points.armed("submit.reserved", sub.job_uuid):  # tests only
                await asyncio.to_thread(pause_points.reach, "submit.reserved", sub.job_uuid)
            staged = await asyncio.to_thread(
                self.backend.stage, sub.job_uuid, job_dir, JobInputs(train, validation)
            )
            spec = translate.build_spec(sub, lora_spec, model, staged, engine, osft_spec)
            if trained:
                spec = spec.model_copy(update={"trained_checkpoint": sub.checkpoint_dir})
            elif state is not None:
                spec = spec.model_copy(update={"resume_from": where})
                spec = translate.resumed_clipping(spec, state, sub.named)
                check_resume(state, spec, where)
                if isinstance(train, list) and (validation is not None or
                                                not spec.data.validation_fraction):  # fmt: skip
                    check_rows(state, len(train), where)
            record = JobRecord(job_uuid=sub.job_uuid, spec=spec, scheduled_at=now(),
                               owner=self.access.owner(user))  # fmt: skip
            await asyncio.to_thread(self.scheduler.submit, record)
        except BaseException:
            self.store.discard(sub.job_uuid)
            raise
        return PostTrainingJob(job_uuid=sub.job_uuid)

    # ---- tracking -----------------------------------------------------------------------

    def _entry(self, job_uuid: str) -> JobRecord | UnreadableRecord:
        """The job, if it exists and the caller may read it: another user's job answers
        exactly like one that does not exist."""
        check_job_id(job_uuid)
        found = self.store.entry(job_uuid)
        if found is None or not self._may(READ, found):
            raise JobNotFound(job_uuid)
        return found

    def _may(self, action: Any, found: JobRecord | UnreadableRecord) -> bool:
        return self.access.allows(action, found.job_uuid, found.owner, self.access.user())

    def _record(self, job_uuid: str, doing: str) -> JobRecord:
        found = self._entry(job_uuid)
        if isinstance(found, UnreadableRecord):
            raise InvalidRequest(f"job {job_uuid!r} cannot be {doing}: its {found.reason}")
        return found

    @as_http_errors
    async def get_training_jobs(self) -> ListPostTrainingJobsResponse:
        found = [e for e in map(self.store.entry, self.store.list_ids())
                 if e is not None and self._may(READ, e)]  # fmt: skip
        found.sort(key=_submitted_at)
        return ListPostTrainingJobsResponse(
            data=[PostTrainingJob(job_uuid=e.job_uuid) for e in found]
        )

    @as_http_errors
    async def get_training_job_status(
        self, request: GetTrainingJobStatusRequest
    ) -> PostTrainingJobStatusResponse:
        found = self._entry(request.job_uuid)
        return await asyncio.to_thread(self._status, found)  # may call the cluster and S3

    def _status(self, found: JobRecord | UnreadableRecord) -> PostTrainingJobStatusResponse:
        job_dir = self.store.job_dir(found.job_uuid)
        if isinstance(found, UnreadableRecord):
            return responses.unreadable(found, job_dir, self.store.own_outputs(found.job_uuid))
        seen = self.scheduler.observe(found)
        return responses.status(found, seen, self.backend.outputs(found), job_dir)

    @as_http_errors
    async def cancel_training_job(self, request: CancelTrainingJobRequest) -> None:
        record = self._record(request.job_uuid, "cancelled")
        if not self._may(UPDATE, record):  # it may read the job, so it may know this
            raise Forbidden(
                f"the server's access policy does not let you cancel job {record.job_uuid!r} "
                "(action update on post_training_job)"
            )
        await asyncio.to_thread(self.scheduler.cancel, record.job_uuid)

    @as_http_errors
    async def get_training_job_artifacts(
        self, request: GetTrainingJobArtifactsRequest
    ) -> PostTrainingJobArtifactsResponse:
        found = self._entry(request.job_uuid)
        if isinstance(found, UnreadableRecord):
            outputs = self.store.own_outputs(found.job_uuid)
            checkpoints = await asyncio.to_thread(
                responses.checkpoints, found.job_uuid, outputs
            ) if outputs else []  # fmt: skip
        else:
            checkpoints = await asyncio.to_thread(
                responses.checkpoints, found.job_uuid, self.backend.outputs(found)
            )
        return PostTrainingJobArtifactsResponse(job_uuid=found.job_uuid, checkpoints=checkpoints)


def _check_evaluation(
    evaluation: EvaluationSpec | None, model: ModelSpec, http: HttpPolicy
) -> None:
    """The evaluate stage's task files parse and name their tasks; lm-eval can load the
    model when tasks are named (task names are checked against lm-eval's index in
    prepare-data: that index costs seconds)."""
    if evaluation is None:
        return
    tasks = check_evaluation(evaluation, partial(read_task_file, http=http))
    if tasks and (why := lm_eval_problem(model)):
        raise InvalidRequest(f"evaluation tasks {', '.join(tasks)} cannot run: {why}")


def _submitted_at(found: JobRecord | UnreadableRecord) -> datetime:
    return found.written_at if isinstance(found, UnreadableRecord) else found.scheduled_at
