"""kfp backend: the same pipeline, compiled to IR and run on a KFP v2 cluster.

The job's record keeps the KFP run id; state comes from the KFP API, progress, errors and
checkpoints from the job's S3 prefix. The parts, one module each: `connection` (the
kfp.Client and its token, shared by the scheduler's and the request threads), `staging` (S3:
models, datasets, outputs), `runs` (submit, adopt, terminate), `observation` (run state ->
Observed); `kube` (a tier of its own) the Kubernetes API and TrainJobs.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from ...boundary.job_outputs import JobOutputs, write_cancel
from ...config import RemoteConfig
from ...core.errors import Refused, Unsupported
from ...core.locations import parse
from ...core.resume import TrainingState
from ...core.spec import ModelSpec
from ...jobs.backend import JobInputs, Observed, StagedInputs
from ...jobs.record import JobRecord, RunnerHandle
from ...jobs.store import JobStore
from ...kube.trainjob import TrainJobs, check_served
from .connection import Connection
from .discovery import request_timeout
from .observation import TERMINAL_STATES, Observer
from .placement import remote_placement
from .runs import Runs
from .staging import Staging

log = logging.getLogger(__name__)


class KFPBackend:
    name = "kfp"

    def __init__(self, store: JobStore, cfg: RemoteConfig, save_on_cancel: bool = False) -> None:
        self.store = store
        self.cfg = cfg
        self.save_on_cancel = save_on_cancel
        self.poll_seconds = cfg.poll_seconds  # each check is a call to the KFP API
        self.observation_max_age = cfg.poll_seconds
        self.staging = Staging(cfg)
        self.connection = Connection(cfg)
        self.observer = Observer(cfg, self.connection, self.staging.outputs)
        self.runs = Runs(cfg, self.connection, remote_placement(cfg))
        self._trainer_served = threading.Event()  # checked once, by whichever thread first

    # ---- JobPreparer --------------------------------------------------------------------

    def check(self) -> None:
        """Fail early (at submit) when the endpoint cannot take a run, or, for several nodes,
        when the cluster has no Kubeflow Trainer v2."""
        session = self.connection.session()
        if self.cfg.resources.nodes <= 1 or self._trainer_served.is_set():
            return
        if session.kube is None:
            log.warning(
                "remote.resources.nodes > 1: no Kubernetes API reachable from the server to "
                "check for Kubeflow Trainer v2; the train step will"
            )
            return
        try:
            check_served(session.kube.api, request_timeout(self.cfg))
        except Unsupported:
            raise
        except Exception as e:
            status = getattr(e, "status", None)
            raise Refused(
                f"cannot read the cluster's API discovery to check for Kubeflow Trainer v2 "
                f"({status or type(e).__name__} {getattr(e, 'reason', '') or str(e)[:120]})"
            ) from None
        self._trainer_served.set()

    def resolve_model(
        self, name: str, checkpoint_dir: str | None, descriptor_repo: str | None
    ) -> ModelSpec:
        return self.staging.resolve_model(name, checkpoint_dir, descriptor_repo)

    def training_state(self, where: str) -> TrainingState | None:
        return self.staging.training_state(where)

    def stage(self, job_uuid: str, job_dir: Path, inputs: JobInputs) -> StagedInputs:
        return self.staging.stage(job_uuid, job_dir, inputs)

    def outputs(self, record: JobRecord) -> JobOutputs:
        return self.staging.outputs(record)

    # ---- JobRunner ----------------------------------------------------------------------

    def start(self, record: JobRecord) -> RunnerHandle:
        return self.runs.start(record)

    def handle(self, record: JobRecord) -> RunnerHandle | None:
        return record.runner

    def observe(self, record: JobRecord) -> Observed:
        return self.observer.observe(record)

    def forget(self, record: JobRecord) -> None:
        if record.runner is not None and record.runner.run_id is not None:
            self.observer.forget(record.runner.run_id)

    def rerun(self, record: JobRecord) -> None:
        pass  # the next run has a name of its own (runs.run_name): none is adopted twice

    def kill(self, record: JobRecord, grace_seconds: float = 5.0, save: bool = False) -> None:
        if record.runner is None or record.runner.run_id is None:
            return
        run_id = record.runner.run_id
        if record.spec.train.nodes > 1:
            self._delete_trainjobs(record)
        if self.observer.last_state(run_id) in TERMINAL_STATES:
            return  # KFP refuses to terminate a run that has ended
        if not (self.save_on_cancel or save):
            try:  # the train step then stops on SIGTERM without saving a checkpoint
                write_cancel(parse(record.spec.output_uri), self.staging.s3)
            except Exception as e:
                log.warning("cannot write the cancel marker of %s: %s", record.job_uuid, e)
        self.runs.terminate(run_id)

    def _delete_trainjobs(self, record: JobRecord) -> None:
        """KFP's terminate stops only the train step's pod: its TrainJob must go too (the
        step deletes it on SIGTERM and owns it; this covers a step killed without either)."""
        try:
            session = self.connection.session()  # learns where the Kubernetes API is
        except Exception:
            return
        if session.kube is None:
            return  # no Kubernetes API from here: the step's own cleanup has to do
        jobs = TrainJobs(session.kube.api, session.namespace, request_timeout(self.cfg))
        try:
            deleted = jobs.delete_for_job(record.job_uuid)
            if deleted:
                log.info("job %s: deleted TrainJob(s) %s", record.job_uuid, ", ".join(deleted))
        except Exception as e:
            log.warning("job %s: cannot delete its TrainJobs: %s", record.job_uuid, e)
