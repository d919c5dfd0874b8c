"""MLflow Model Registry: a registered model (created if missing), a new version per job (never
an overwrite: MLflow numbers versions itself), its tags, and the alias moved onto it.

The version's source is the checkpoint's `merged/` folder (the loadable model; the epoch
folder and a LoRA adapter are tags). An MLflow server accepts an `s3://` source as it is; it
refuses a local path unless it lies inside a run's artifacts (its guard against reading the
server's own disk), so a local checkpoint registered on a server is uploaded as the artifact
`model` of the job's tracking run (when the job logs to the same server) or of a run made for
the registration, and the source is `runs:/<run>/model`. A local store (`sqlite:///...`,
with the full mlflow package) takes the local path as it is.

Credentials come from the step's environment (MLFLOW_TRACKING_TOKEN, or
MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD; remotely the Secret named by
remote.tracking_secret), never from the job.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

from ...boundary.job_outputs import JobOutputs
from ...core.errors import InvalidRequest, Refused, Unavailable
from ...core.locations import parse
from ...core.spec import JobSpec
from ...core.stage_results import Registration
from ...core.tracking import DEFAULT_EXPERIMENT
from .entry import Entry

MODEL_ARTIFACT = "model"


def register(spec: JobSpec, entry: Entry) -> Registration:
    reg = spec.registry
    assert reg is not None
    # A server that stops answering must not hold the step for minutes (MLflow's defaults:
    # 7 retries with backoff, 120 s per request); the user's own settings win.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    from mlflow import MlflowClient

    uri = reg.uri
    server = uri.startswith(("http://", "https://"))
    with _errors(uri):
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        _ensure_model(client, reg.model_name)
        run_id, run_link = _tracking_run(spec, uri)
        source = entry.weights
        if entry.is_local and server:
            run_id = run_id or _registration_run(client, spec)
            client.log_artifacts(run_id, str(parse(entry.weights).path), MODEL_ARTIFACT)
            source = f"runs:/{run_id}/{MODEL_ARTIFACT}"
        tags = {**entry.facts, **{k: repr(v) for k, v in entry.metrics.items()},
                "format": f"{entry.format_name}/{entry.format_version}",
                "weights": entry.weights}  # fmt: skip
        version = client.create_model_version(
            reg.model_name, source, run_id=run_id, tags=tags, run_link=run_link,
            description=reg.description,
        )  # fmt: skip
        if reg.alias:
            client.set_registered_model_alias(reg.model_name, reg.alias, version.version)
    url = None
    if server:
        url = f"{uri.rstrip('/')}/#/models/{reg.model_name}/versions/{version.version}"
    return Registration(kind="mlflow", registered=True, name=reg.model_name,
                        version=str(version.version), uri=version.source or source,
                        model_id=reg.model_name, url=url, alias=reg.alias,
                        run_id=run_id, checkpoint=entry.checkpoint)  # fmt: skip


def _ensure_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name, tags={"created_by": "llama-stack-provider-kfp"})
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":  # another job made it: a new version
            raise


def _tracking_run(spec: JobSpec, uri: str) -> tuple[str | None, str | None]:
    """The job's MLflow tracking run (tracking.json) when it lives on the registry's server."""
    info = (JobOutputs(parse(spec.output_uri)).tracking() or {}).get("mlflow") or {}
    same = str(info.get("tracking_uri") or "").rstrip("/") == uri.rstrip("/")
    if not same or not info.get("run_id"):
        return None, None
    return str(info["run_id"]), info.get("run_url")


def _registration_run(client: Any, spec: JobSpec) -> str:
    """A run to hold a local checkpoint's upload when the job tracked no run on this server."""
    found = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    experiment = found.experiment_id if found else client.create_experiment(DEFAULT_EXPERIMENT)
    run = client.create_run(experiment, run_name=f"{spec.job_uuid}-register",
                            tags={"llama_stack.job_uuid": spec.job_uuid})  # fmt: skip
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


@contextlib.contextmanager
def _errors(uri: str) -> Iterator[None]:
    """MLflow's exceptions as errors by cause, saying what to change."""
    from mlflow.exceptions import MlflowException

    try:
        yield
    except MlflowException as e:
        msg = str(e.message)[:400]
        code = e.error_code
        if code in ("UNAUTHENTICATED", "PERMISSION_DENIED") or " 401 " in msg or " 403 " in msg:
            raise Refused(
                f"the MLflow registry {uri} refused the step's credentials ({msg}); set "
                "MLFLOW_TRACKING_TOKEN or MLFLOW_TRACKING_USERNAME/PASSWORD in the step's "
                "environment (remotely: the Secret named by remote.tracking_secret)"
            ) from None
        where = f"the MLflow registry {uri}"
        if code == "INVALID_PARAMETER_VALUE":
            raise InvalidRequest(f"{where} refused the registration: {msg}") from None
        unreachable = ("failed with exception", "Max retries")
        if any(s in msg for s in unreachable) or code == "TEMPORARILY_UNAVAILABLE":
            raise Unavailable(f"{where} does not answer: {msg}") from None
        raise Refused(f"{where} failed the registration ({code}): {msg}") from None
