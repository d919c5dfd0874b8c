"""The jobs of one provider config, for every front end: the store, the backend and the
scheduler built once, and the one submit path (every check that can be made before anything is
created, then the job).

Front ends (api/, openai_api/) decide who the caller is and what they may see; they hand this
module a Submission, the job's owner, the path rules that apply to the caller, and how to find
the request's datasets.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path

from ..backends import select_backend
from ..boundary import pause_points
from ..boundary.eval_task_files import read_task_file
from ..boundary.registry_probe import check_registry_reachable
from ..boundary.tracking_checks import check_reachable, check_writable
from ..config import KFPPostTrainingConfig
from ..core.engines import JobTraits, select_engine
from ..core.errors import InvalidRequest, LimitReached
from ..core.eval_tasks import check_evaluation, lm_eval_problem
from ..core.http_policy import HttpPolicy
from ..core.locations import Location
from ..core.resume import check_resume, check_rows
from ..core.spec import EngineChoice, EvaluationSpec, ModelSpec, algorithm
from ..jobs.backend import DatasetSource, JobInputs, JobPreparer
from ..jobs.record import JobRecord, Owner, check_job_id, now
from ..jobs.scheduler import JobScheduler
from ..jobs.store import JobStore
from . import stages
from .paths import PathRoots
from .submission import (
    Submission,
    build_spec,
    check_batch_split,
    check_finished_checkpoint,
    check_osft_sharding,
    lora_spec,
    lora_targets,
    osft_spec,
    resume_engine,
    resumed_clipping,
)

# Finds a request's datasets (train, validation), refusing a URI the caller may not name
# (check_uri(uri, what), None without auth) before anything is read.
FindDatasets = Callable[
    [Callable[[str, str], None] | None], Awaitable[tuple[DatasetSource, DatasetSource | None]]
]


class JobService:
    def __init__(self, config: KFPPostTrainingConfig) -> None:
        self.config = config
        self.store = JobStore(config.work_dir)
        backend = select_backend(config, self.store)
        self.backend: JobPreparer = backend  # the scheduler runs the jobs with the same one
        self.scheduler = JobScheduler(
            self.store,
            backend,
            config.max_concurrent_jobs,
            observation_max_age=config.observation_max_age_seconds,
        )

    def shutdown(self) -> None:
        # Jobs run outside the server and outlive it unless told otherwise.
        self.scheduler.shutdown(self.config.cancel_jobs_on_shutdown)

    def path_roots(self, may_read_job: Callable[[str], bool]) -> PathRoots:
        """The locations an authenticated caller may name (service.paths)."""
        config = self.config
        roots = config.allowed_path_roots
        if roots is None:
            from huggingface_hub.constants import HF_HUB_CACHE

            roots = [*config.model_dirs, Path(HF_HUB_CACHE)]
        remote = config.remote
        s3_jobs = (
            Location("s3", remote.s3_bucket, f"{remote.s3_prefix.strip('/')}/jobs".lstrip("/"))
            if remote.s3_bucket
            else None
        )
        return PathRoots(roots, config.work_dir, may_read_job, s3_jobs, config.allowed_claims)

    def check_new_job(self, job_uuid: str, principal: str | None) -> None:
        # Ids are global (the KFP backend finds runs by name): one taken by another user is
        # refused too, which tells the caller that it exists (README "Several users").
        check_job_id(job_uuid)
        if self.store.exists(job_uuid):
            raise InvalidRequest(
                f"job_uuid {job_uuid!r} is already used by another job; choose a new one"
            )
        limit = self.config.max_jobs_per_user
        if principal is not None and limit is not None:
            mine = [j for j in self.scheduler.active() if (r := self.store.load(j)) is not None
                    and r.owner is not None and r.owner.principal == principal]  # fmt: skip
            if len(mine) >= limit:
                raise LimitReached(
                    f"you have {len(mine)} job(s) queued or running and the server allows "
                    f"{limit} per user (max_jobs_per_user); wait for one to end or cancel one"
                )

    async def submit(
        self,
        sub: Submission,
        owner: Owner | None,
        paths: PathRoots | None,
        find_datasets: FindDatasets,
        before_start: Callable[[Path, JobRecord], None] | None = None,
    ) -> JobRecord:
        """Everything that can be checked before anything is created, then the job.
        `before_start(job_dir, record)` writes what a front end keeps beside the record (it
        runs before the scheduler may start the job; a failure there discards the job)."""
        config = sub.config
        stage_names = sub.stages  # refuses a bad `stages` before anything is read
        check_osft_sharding(sub)
        if paths is not None:  # with auth: which locations this user may name
            paths.check(sub.checkpoint_dir, "checkpoint_dir")
            paths.check_model(sub.model)
            for task_file in config.evaluation.task_files if "evaluate" in stage_names else []:
                paths.check(task_file, "evaluation task file")
        backend = self.backend
        # A checkpoint of this provider is resumed: its base weights are the model.
        where = sub.checkpoint_dir or sub.model
        trained = "train" not in stage_names  # evaluate/register checkpoint_dir, the tuned one
        if trained:
            check_finished_checkpoint(sub.checkpoint_dir)
            state = None
        else:
            state = await asyncio.to_thread(backend.training_state, where)
        if trained:  # the request's model is the base the checkpoint is compared with
            model = await asyncio.to_thread(
                backend.resolve_model, sub.model, None, sub.descriptor_repo
            )
        elif state is not None:
            model = await asyncio.to_thread(
                backend.resolve_model, state.spec["model"]["name"], state.base_model, None
            )
        else:
            model = await asyncio.to_thread(
                backend.resolve_model, sub.model, sub.checkpoint_dir, sub.descriptor_repo
            )
        targets = lora_targets(sub.lora, model) if sub.lora is not None else None
        lora = lora_spec(sub.lora, targets)
        osft = osft_spec(config.osft, model) if sub.osft else None
        fits_torchtune = targets is None or targets.torchtune_attn is not None
        traits = JobTraits.of(
            model, algorithm(lora, sub.dpo, osft), fits_torchtune, config.world(), config.nodes()
        )
        if trained:
            engine = EngineChoice(name="none", reason=f"nothing to train: {', '.join(stage_names)}"
                                  f" of {where}")  # fmt: skip
        elif state is not None:
            engine = resume_engine(state, traits, config.engine, where)
        else:
            engine = select_engine(traits, config.engine)
        check_batch_split(sub.training.batch_size, config.world(), engine.name)
        train, validation = await find_datasets(paths.check_dataset if paths else None)
        await asyncio.to_thread(_check_evaluation, stages.evaluation_spec(config, stage_names),
                                model, config.data_sources.http_policy())  # fmt: skip
        # Reachable, before anything is created: the cluster, and a tracking server.
        await asyncio.to_thread(backend.check)
        await asyncio.to_thread(check_writable, sub.tracking)
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
                backend.stage, sub.job_uuid, job_dir, JobInputs(train, validation)
            )
            spec = build_spec(sub, lora, model, staged, engine, osft)
            if trained:
                spec = spec.model_copy(update={"trained_checkpoint": sub.checkpoint_dir})
            elif state is not None:
                spec = spec.model_copy(update={"resume_from": where})
                spec = resumed_clipping(spec, state, sub.named)
                check_resume(state, spec, where)
                if isinstance(train, list) and (validation is not None or
                                                not spec.data.validation_fraction):  # fmt: skip
                    check_rows(state, len(train), where)
            record = JobRecord(job_uuid=sub.job_uuid, spec=spec, scheduled_at=now(), owner=owner)
            if before_start is not None:
                await asyncio.to_thread(before_start, job_dir, record)
            await asyncio.to_thread(self.scheduler.submit, record)
        except BaseException:
            self.store.discard(sub.job_uuid)
            raise
        return record


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
