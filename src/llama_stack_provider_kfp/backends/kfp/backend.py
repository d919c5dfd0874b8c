"""kfp backend: the same pipeline, compiled to IR and run on a KFP v2 cluster.

The job's record keeps the KFP run id; state comes from the KFP API, progress, errors and
checkpoints from the job's S3 prefix (KFP's API gives no artifact URIs). Inputs from this
machine are staged to that prefix before the run starts.
"""

from __future__ import annotations

import json
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ...config import RemoteConfig
from ...core import data_uri, storage
from ...core.errors import Refused, Unsupported, Upstream
from ...core.locations import Location, parse
from ...core.model_source import ModelError, hub_model, inspect_s3_model, pvc_model
from ...core.outputs import JobOutputs, StepError, write_cancel
from ...core.resume import TrainingState, load_state
from ...core.spec import ModelSpec
from ...jobs.backend import DatasetSource, JobInputs, Observed, StagedInputs
from ...jobs.record import JobRecord, RunnerHandle, Status
from ...jobs.store import JobStore
from .connection import (
    Kube,
    check_backend_version,
    connection,
    explain,
    login_page,
    request_timeout,
)
from .placement import remote_placement
from .pods import PodTrouble, diagnose, stuck

log = logging.getLogger(__name__)

# V2beta1RuntimeState -> the provider's job status
STATE_MAP: dict[str, Status] = {
    "PENDING": "scheduled",
    "RUNTIME_STATE_UNSPECIFIED": "scheduled",
    "RUNNING": "in_progress",
    "PAUSED": "in_progress",
    "CANCELING": "in_progress",
    "SUCCEEDED": "completed",
    "SKIPPED": "failed",
    "FAILED": "failed",
    "CANCELED": "cancelled",
}
TERMINAL_STATES = ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED")


def _set_timeouts(client: Any, timeout: tuple[float, float]) -> None:
    """kfp_server_api sets no request timeout (and passes timeout=None to urllib3 explicitly,
    overriding any pool default): give every call of this client one, so a blackholed route
    fails instead of hanging a status call or the scheduler."""
    rest = client._run_api.api_client.rest_client  # one ApiClient serves all of kfp.Client's APIs
    request = rest.request

    def with_timeout(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return request(*args, _request_timeout=_request_timeout or timeout, **kwargs)

    rest.request = with_timeout


def _finished_at(run: Any) -> Any:
    """KFP reports 1970-01-01 for runs that have not finished: that is no completion time."""
    finished = getattr(run, "finished_at", None)
    if finished is None or getattr(finished, "year", 1970) <= 1970:
        return None
    return finished


def _failed_tasks(run: Any) -> list[dict[str, Any]]:
    """The run's failed tasks with KFP's reason (run_details.task_details[].error/state)."""
    details = getattr(getattr(run, "run_details", None), "task_details", None) or []
    found = []
    for task in details:
        state = getattr(task, "state", None)
        state = str(getattr(state, "value", state))
        message = getattr(getattr(task, "error", None), "message", None)
        if state == "FAILED" or message:
            found.append({"task": task.display_name, "state": state, "message": message})
    return found


class KFPBackend:
    name = "kfp"

    def __init__(self, store: JobStore, cfg: RemoteConfig, save_on_cancel: bool = False) -> None:
        if not cfg.s3_bucket:
            raise ValueError("mode: remote needs remote.s3_bucket (where jobs stage data)")
        self.store = store
        self.cfg = cfg
        self.save_on_cancel = save_on_cancel
        self.poll_seconds = cfg.poll_seconds  # each check is a call to the KFP API
        self.observation_max_age = cfg.poll_seconds
        self.placement = remote_placement(cfg)
        self.root = Location("s3", cfg.s3_bucket, cfg.s3_prefix.strip("/"))
        self._client: Any = None
        self._s3: Any = None
        self._last_state: dict[str, str] = {}
        self.kube: Kube | None = None
        self._trainer: Kube | None = None  # the Kubernetes API for TrainJobs (nodes > 1)
        self._trainer_checked = False
        self.url, self.namespace = cfg.url or "(discovered)", cfg.namespace

    @property
    def s3(self) -> Any:
        """The server's own S3 client, on the configured endpoint (not set process-wide)."""
        if self._s3 is None:
            ca = str(self.cfg.s3_ca_bundle) if self.cfg.s3_ca_bundle else None
            self._s3 = storage.client(
                self.cfg.s3_endpoint_url, ca_bundle=ca, timeout=self.cfg.request_timeout_seconds
            )
        return self._s3

    # ---- before a job exists ------------------------------------------------------------

    def resolve_model(
        self, name: str, checkpoint_dir: str | None, descriptor_repo: str | None
    ) -> ModelSpec:
        where = checkpoint_dir or name
        loc = parse(where)
        if loc.scheme == "s3":
            return inspect_s3_model(name, loc, self.s3)
        if loc.scheme == "pvc":
            return pvc_model(name, loc)
        if loc.scheme == "hf":
            return hub_model(name, loc.root)
        if where.startswith(("/", ".", "~")):
            raise ModelError(
                f"in remote mode the weights must be reachable from the cluster: upload "
                f"them with scripts/upload-model.py and pass checkpoint_dir='s3://...', "
                f"or use pvc://<claim>/<path> (got {where!r})"
            )
        # A llama-stack descriptor maps to its Hub repo; anything else is taken as a repo id.
        return hub_model(name, (descriptor_repo if where == name else None) or where)

    def training_state(self, where: str) -> TrainingState | None:
        """A checkpoint of this provider in S3 (the only place remote steps write them)."""
        loc = parse(where)
        if loc.scheme != "s3" or loc.key.endswith((".tar.gz", ".tgz")):
            return None
        # None for a missing object; S3 denying or failing the read raises (502 / 503).
        return load_state(lambda name: storage.read_json(loc.join(name), self.s3), where)

    def _job_prefix(self, job_uuid: str) -> Location:
        return self.root.join("jobs", job_uuid)

    def stage(self, job_uuid: str, job_dir: Path, inputs: JobInputs) -> StagedInputs:
        prefix = self._job_prefix(job_uuid)
        validation = inputs.validation
        return StagedInputs(
            train_uri=self._stage_dataset(inputs.train, job_dir, prefix, "train.jsonl"),
            validation_uri=(
                self._stage_dataset(validation, job_dir, prefix, "validation.jsonl")
                if validation is not None
                else None
            ),
            output_uri=str(prefix.join("output")),
        )

    def _stage_dataset(
        self, source: DatasetSource, job_dir: Path, prefix: Location, name: str
    ) -> str:
        """Inline rows and data: URIs (too big for a pipeline parameter) become a JSONL file;
        files on this machine are uploaded to the job's prefix; the rest the pod reads."""
        if isinstance(source, list):
            source = str(data_uri.write_jsonl(source, job_dir / "input" / name))
        elif source.startswith("data:"):
            path = job_dir / "input" / name
            source = str(data_uri.write_jsonl(data_uri.iter_rows(source), path))
        local = data_uri.local_file(source)
        if local is None:
            return source  # s3://, or a hub dataset the pod reads itself
        key = Path(name).stem + local.suffix  # keep the suffix: it says how to parse the file
        target = prefix.join("input", key)
        storage.upload_file(local, target, self.s3)  # Refused / Unavailable name the key
        return str(target)

    def outputs(self, record: JobRecord) -> JobOutputs:
        return JobOutputs(parse(record.spec.output_uri), self.s3)

    def client(self):
        if self._client is None:
            import kfp

            found = connection(self.cfg)
            url = self.url = found.url
            self.namespace = found.namespace
            self.kube = found.kube if self.cfg.inspect_pods else None
            self._trainer = found.kube
            try:
                # namespace= skips kfp's own healthz retry loop; check it ourselves.
                client = kfp.Client(
                    host=url,
                    existing_token=found.token,
                    namespace=found.namespace,
                    ssl_ca_cert=found.ca_bundle,
                    verify_ssl=self.cfg.verify_ssl,
                )
                _set_timeouts(client, request_timeout(self.cfg))
                raw = client._healthz_api.healthz_service_get_healthz(_preload_content=False)
            except Exception as e:
                raise explain(e, url) from None
            try:
                health = json.loads(raw.data or b"{}")
            except ValueError:
                raise login_page(url, "its health check with a page, not JSON") from None
            # kfp_server_api's model drops tag_name: read it from the raw answer.
            check_backend_version(health.get("tag_name") if isinstance(health, dict) else None,
                                  url)  # fmt: skip
            self._client = client
        return self._client

    def _call(self, fn: Any) -> Any:
        """fn(client), once more with a fresh client (the token read again) when KFP refused
        the token: an expired or rotated token costs one retry, not a failed call."""
        try:
            return fn(self.client())
        except Exception as e:
            if getattr(e, "status", None) not in (401, 403):
                raise
            self._client = None
        return fn(self.client())

    def _failed(self, e: Exception) -> Exception:
        """The error to raise for a failed KFP call. A refusal (expired or revoked token)
        drops the client: the next call reads the token again (environment variable, token
        file, kubeconfig or the service account's token), so a rotated token is picked up
        without a restart."""
        err = explain(e, self.url)
        if isinstance(err, Refused):
            self._client = None
        return err

    def check(self) -> None:
        """Fail early (at submit) when the endpoint cannot take a run, or, for several nodes,
        when the cluster has no Kubeflow Trainer v2."""
        self.client()
        if self.cfg.resources.nodes > 1 and not self._trainer_checked:
            from .trainjobs import check_served

            if self._trainer is None:
                log.warning(
                    "remote.resources.nodes > 1: no Kubernetes API reachable from the "
                    "server to check for Kubeflow Trainer v2; the train step will"
                )
                return  # fmt: skip
            try:
                check_served(self._trainer.api, request_timeout(self.cfg))
            except Unsupported:
                raise
            except Exception as e:
                status = getattr(e, "status", None)
                raise Refused(
                    f"cannot read the cluster's API discovery to check for Kubeflow Trainer v2 "
                    f"({status or type(e).__name__} {getattr(e, 'reason', '') or str(e)[:120]})"
                ) from None
            self._trainer_checked = True

    # ---- running ------------------------------------------------------------------------

    def start(self, record: JobRecord) -> RunnerHandle:
        from kfp import compiler

        from ...pipeline.definition import ComponentBuild, build_pipeline, pipeline_arguments

        job_uuid = record.job_uuid
        # Submitting is idempotent: a run this job already has (the server died after creating
        # it, or the create call's answer was lost) is adopted, never created twice.
        existing = self._find_run(record)
        if existing is not None:
            return RunnerHandle(run_id=existing)
        build = ComponentBuild(base_image=self.cfg.image, install_kfp_package=False)
        with tempfile.TemporaryDirectory() as tmp:
            package = Path(tmp) / "pipeline.yaml"
            placement = self.placement(record.spec)
            compiler.Compiler().compile(build_pipeline(build, record.spec, placement), str(package))
            try:
                result = self._call(lambda c: c.create_run_from_pipeline_package(
                    str(package),
                    arguments=pipeline_arguments(record.spec),
                    run_name=job_uuid,
                    experiment_name=self.cfg.experiment,
                    namespace=self.namespace,
                    service_account=self.cfg.service_account,
                ))  # fmt: skip
            except Exception as e:
                err = self._failed(e)
                # Refused the token: nothing was created. Anything else (a timeout, a 5xx from
                # a route) may have lost the answer to a run that exists.
                refused = getattr(e, "status", None) in (401, 403)
                found = None if refused else self._find_run(record)
                if found is not None:
                    log.warning("job %s: create-run answer lost; adopted run %s", job_uuid, found)
                    return RunnerHandle(run_id=found)
                raise err from None
        if not result.run_id:
            self._client = None  # the token expired; read it again next time
            raise login_page(self.url, "without a run id")
        return RunnerHandle(run_id=result.run_id)

    def _find_run(self, record: JobRecord) -> str | None:
        """The id of a run KFP already has for this job (run name = job_uuid, created after
        the job was submitted here), or None; None too when KFP cannot be asked."""
        name = json.dumps(
            {
                "predicates": [
                    {"key": "display_name", "operation": "EQUALS", "string_value": record.job_uuid}
                ]
            }
        )
        try:
            listed = self._call(lambda c: c.list_runs(namespace=self.namespace, filter=name,
                                                      page_size=20))  # fmt: skip
        except Exception as e:
            log.warning("job %s: cannot list runs to find it again: %s", record.job_uuid, e)
            return None
        since = record.scheduled_at.timestamp() - 60  # clock skew between server and KFP
        for run in getattr(listed, "runs", None) or []:
            created = getattr(run, "created_at", None)
            if run.display_name == record.job_uuid and (created is None or
                                                        created.timestamp() >= since):  # fmt: skip
                return str(run.run_id)
        return None

    def handle(self, record: JobRecord) -> RunnerHandle | None:
        return record.runner

    def observe(self, record: JobRecord) -> Observed:
        if record.runner is None or record.runner.run_id is None:
            return Observed("cancelled" if record.cancelled_at else "scheduled")
        if record.lost is not None:  # failed here (e.g. pending too long), whatever KFP says now
            return Observed("failed", completed_at=record.lost_at, error=record.lost)
        run_id = record.runner.run_id
        try:
            run = self._call(lambda c: c.get_run(run_id))
            raw_state = getattr(run, "state", None)
            if raw_state is None and getattr(run, "run_id", None) is None:
                raise login_page(self.url, "with an empty run")
        except Exception as e:
            err = explain(e, self.url)
            self._client = None  # reconnect next time, with the token read again
            last = self._last_state.get(run_id, "RUNNING")
            status = "cancelled" if record.cancelled_at else STATE_MAP.get(last, "in_progress")
            return Observed(status, note={"run_id": run_id, "state": last, "warning": str(err)})
        state = str(getattr(raw_state, "value", raw_state))
        self._last_state[run_id] = state
        status = STATE_MAP.get(state, "in_progress")
        note: dict[str, Any] = {"run_id": run_id, "state": state}
        step_error = self._step_error(record, note) if status == "failed" else None
        # The pods say why a run waits, or why it failed when the step could not say it.
        looking = state in ("PENDING", "RUNNING") or (status == "failed" and step_error is None)
        troubles = self._pods(run_id, note) if looking else []
        if troubles and status != "failed":
            note["pods"] = [t.as_dict() for t in troubles]
        gave_up = self._pending_too_long(run, state, troubles) if status != "failed" else None
        if gave_up is not None and record.cancelled_at is None:
            return Observed("failed", getattr(run, "created_at", None), lost=True, note=note,
                            error=StepError.model_validate(gave_up))  # fmt: skip
        if record.cancelled_at is not None and status != "completed":
            status = "cancelled"
        error: dict[str, Any] | None = None
        if status == "failed":
            error = step_error.model_dump(exclude_none=True) if step_error else {}
            failed_tasks = _failed_tasks(run)
            if failed_tasks:
                error["tasks"] = failed_tasks
            if troubles:
                error["pods"] = [t.as_dict() for t in troubles]
            # No error.json: the step never reached Python, or was killed (OOMKilled, image
            # pull, evicted): KFP's task details and the pods say why.
            first = next((t for t in failed_tasks if t.get("message")), None)
            why = (
                f": task {first['task']} failed: {first['message']}" if first
                else f": {troubles[0].text()}" if troubles else ""
            )  # fmt: skip
            error.setdefault("message", f"the KFP run ended {state}{why}")
            if getattr(run, "error", None) is not None:
                error["kfp_error"] = getattr(run.error, "message", str(run.error))
        return Observed(
            status,
            started_at=getattr(run, "created_at", None),
            completed_at=_finished_at(run)
            if status in ("completed", "failed", "cancelled")
            else None,
            error=StepError.model_validate(error) if error is not None else None,
            note=note,
        )

    def _step_error(self, record: JobRecord, note: dict[str, Any]) -> StepError | None:
        """The failed step's error.json; a note when storage denies or fails the read (the
        job still settles as failed, with KFP's own reason)."""
        try:
            return self.outputs(record).error()
        except Upstream as e:
            note["storage_warning"] = str(e)
            return None

    def _pods(self, run_id: str, note: dict[str, Any]) -> list[PodTrouble]:
        """The run's pod troubles; none when the Kubernetes API is not reachable from here
        (a note says why when it refused)."""
        if self.kube is None:
            return []
        from kubernetes import client as k8s

        try:
            return diagnose(k8s.CoreV1Api(self.kube.api), self.namespace or "default", run_id,
                            request_timeout(self.cfg))  # fmt: skip
        except Exception as e:
            status = getattr(e, "status", None)
            note["pods_warning"] = (
                f"cannot read the run's pods ({status or type(e).__name__} "
                f"{getattr(e, 'reason', '') or str(e)[:120]}); grant get/list on pods and "
                "events in the namespace, or set remote.inspect_pods: false"
            )
            return []

    def _pending_too_long(
        self, run: Any, state: str, troubles: list[PodTrouble]
    ) -> dict[str, Any] | None:
        """A run PENDING, or a pod of it not started, for longer than the limit: it will not
        start by itself (no node can meet its requests, an image cannot be pulled, a Secret
        is missing), and the job fails with the reason instead of waiting forever."""
        limit = self.cfg.pending_timeout_seconds
        reasons = "; ".join(t.text() for t in troubles[:3])
        late = stuck(troubles, limit)
        if late:
            waited = max(t.pending_seconds or 0.0 for t in late)
            message = (
                f"pod {late[0].pod} had not started after {waited:.0f} s (limit "
                f"remote.pending_timeout_seconds = {limit:.0f} s): {reasons}; the run was "
                "terminated"
            )
        else:
            created = getattr(run, "created_at", None)
            if state != "PENDING" or created is None:
                return None
            waited = (datetime.now(UTC) - created).total_seconds()
            if waited <= limit:
                return None
            message = (
                f"the KFP run was still PENDING after {waited:.0f} s (limit "
                f"remote.pending_timeout_seconds = {limit:.0f} s): "
                + (reasons or "its pods could not be scheduled or started (GPU or memory "
                   "requests no node can meet, an image that cannot be pulled, quota)")
                + "; the run was terminated"
            )  # fmt: skip
        found: dict[str, Any] = {"message": message, "tasks": _failed_tasks(run)}
        if troubles:
            found["pods"] = [t.as_dict() for t in troubles]
        return found

    def forget(self, record: JobRecord) -> None:
        if record.runner is not None and record.runner.run_id is not None:
            self._last_state.pop(record.runner.run_id, None)

    def _delete_trainjobs(self, record: JobRecord) -> None:
        """KFP's terminate stops only the train step's pod: its TrainJob must go too (the
        step deletes it on SIGTERM and owns it; this covers a step killed without either)."""
        from .trainjobs import delete_for_job

        try:
            self.client()  # learns where the Kubernetes API is
        except Exception:
            return
        if self._trainer is None:
            return  # no Kubernetes API from here: the step's own cleanup has to do
        try:
            deleted = delete_for_job(self._trainer.api, self.namespace or "default",
                                     record.job_uuid, request_timeout(self.cfg))  # fmt: skip
            if deleted:
                log.info("job %s: deleted TrainJob(s) %s", record.job_uuid, ", ".join(deleted))
        except Exception as e:
            log.warning("job %s: cannot delete its TrainJobs: %s", record.job_uuid, e)

    def kill(self, record: JobRecord, grace_seconds: float = 5.0) -> None:
        if record.runner is None or record.runner.run_id is None:
            return
        if record.spec.train.nodes > 1:
            self._delete_trainjobs(record)
        if self._last_state.get(record.runner.run_id) in TERMINAL_STATES:
            return  # KFP refuses to terminate a run that has ended
        if not self.save_on_cancel:
            try:  # the train step then stops on SIGTERM without saving a checkpoint
                write_cancel(parse(record.spec.output_uri), self.s3)
            except Exception as e:
                log.warning("cannot write the cancel marker of %s: %s", record.job_uuid, e)
        try:
            run_id = record.runner.run_id
            self._call(lambda c: c.terminate_run(run_id))
        except Exception as e:
            # It may have ended since the last poll: KFP refuses to terminate it, and there is
            # nothing left to stop.
            try:
                state = getattr(self.client().get_run(record.runner.run_id), "state", None)
            except Exception:
                state = None
            if str(getattr(state, "value", state)) in TERMINAL_STATES:
                return
            raise self._failed(e) from None
