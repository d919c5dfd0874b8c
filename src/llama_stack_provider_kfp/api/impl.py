"""The provider's implementation of llama-stack's post-training API.

Each method: check and translate the request (api.translate, api.datasets), hand a JobSpec to
the scheduler, answer from what the backend observes (api.responses). Which backend runs the
jobs was decided once, at construction; nothing here depends on it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
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
    TrainingConfig,
)

from ..config import KFPPostTrainingConfig
from ..core.errors import Forbidden, InvalidRequest, JobNotFound, Unsupported
from ..core.tracking import parse_logger_config
from ..jobs.backend import DatasetSource
from ..jobs.record import JobRecord, check_job_id
from ..jobs.store import UnreadableRecord
from ..service.jobs import JobService
from ..service.paths import PathRoots
from ..service.submission import Submission
from . import responses, translate
from .access import READ, UPDATE, Access
from .datasets import dataset_source, sample_reader
from .errors import as_http_errors


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
        self.jobs = JobService(config)
        self.store, self.backend, self.scheduler = (
            self.jobs.store,
            self.jobs.backend,
            self.jobs.scheduler,
        )

    async def initialize(self) -> None:
        pass

    async def shutdown(self) -> None:
        # Jobs run outside the server and outlive it unless told otherwise.
        await asyncio.to_thread(self.jobs.shutdown)

    # ---- submit -------------------------------------------------------------------------

    @as_http_errors
    async def supervised_fine_tune(self, request: SupervisedFineTuneRequest) -> PostTrainingJob:
        user = self.access.user()
        self.jobs.check_new_job(request.job_uuid, user.principal if user else None)
        config = self._config_for(request.hyperparam_search_config)
        extension = (request.hyperparam_search_config or {}).get("kfp")
        translate.check_algorithm_choice(request.algorithm_config, extension)
        lora = translate.check_algorithm(request.algorithm_config)
        osft = request.algorithm_config is None and config.algorithm == "osft"
        translate.check_osft_settings(config, osft, extension)
        translate.check_training(request.training_config, config.world())
        tracking = parse_logger_config(request.logger_config, config.mode)
        name = translate.model_name(request)
        submission = Submission(
            request.job_uuid, name, request.checkpoint_dir,
            translate.training(request.training_config), lora, None, tracking=tracking,
            config=config, osft=osft, descriptor_repo=translate.descriptor_repo(name),
            named=frozenset(extension or ()),
        )  # fmt: skip
        return await self._submit(submission, request.training_config, user)

    @as_http_errors
    async def preference_optimize(self, request: PreferenceOptimizeRequest) -> PostTrainingJob:
        user = self.access.user()
        self.jobs.check_new_job(request.job_uuid, user.principal if user else None)
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
        submission = Submission(
            request.job_uuid, request.finetuned_model, None,
            translate.training(request.training_config), lora, dpo, tracking=tracking,
            config=config, osft=osft, descriptor_repo=translate.descriptor_repo(
                request.finetuned_model), named=frozenset(extension or ()),
        )  # fmt: skip
        return await self._submit(submission, request.training_config, user)

    def _config_for(self, hyperparam_search_config: dict | None) -> KFPPostTrainingConfig:
        """The provider config with the request's own settings (DESIGN.md "Per-request
        extensions": hyperparam_search_config["kfp"])."""
        return self.config.for_request((hyperparam_search_config or {}).get("kfp"))

    def _paths(self, user: User | None) -> PathRoots | None:
        if user is None:
            return None

        def may_read(job_uuid: str) -> bool:
            try:
                found = self.store.entry(job_uuid)
            except InvalidRequest:  # not a job folder's name
                return False
            return found is not None and self.access.allows(READ, job_uuid, found.owner, user)

        return self.jobs.path_roots(may_read)

    async def _submit(
        self, sub: Submission, tc: TrainingConfig, user: User | None
    ) -> PostTrainingJob:
        dc = tc.data_config
        assert dc is not None  # check_training refused it missing
        fmt, sample = sub.data_format, sub.config.submit_sample_rows
        reader = sample_reader(sub.config)

        async def find_datasets(
            check_uri: Callable[[str, str], None] | None,
        ) -> tuple[DatasetSource, DatasetSource | None]:
            async def find(dataset_id: str) -> DatasetSource:
                return await dataset_source(self.datasets_api, self.datasetio_api, dataset_id,
                                            fmt, sample, reader, check_uri)  # fmt: skip

            validation = dc.validation_dataset_id
            return await find(dc.dataset_id), (await find(validation) if validation else None)

        await self.jobs.submit(sub, self.access.owner(user), self._paths(user), find_datasets)
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


def _submitted_at(found: JobRecord | UnreadableRecord) -> datetime:
    return found.written_at if isinstance(found, UnreadableRecord) else found.scheduled_at
