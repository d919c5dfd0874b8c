"""The train step of a job on several nodes: stage its inputs, hand training to a Kubeflow
Trainer v2 TrainJob, follow it to the end, and never leave it running behind a cancelled step.

The step runs in a KFP pod and talks to the Kubernetes API with the pipeline's service account
(in-cluster; a kubeconfig elsewhere). It needs create/get/list/watch/delete on `trainjobs`
(trainer.kubeflow.org) and get on pods. Cancelling is covered three ways: the TrainJob is
owned by this step's pod (deleted with it), a SIGTERM (KFP terminating the run) deletes it
here, and the provider's kill() deletes the TrainJobs labelled with the job's id.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..core import storage
from ..core.errors import Upstream
from ..core.locations import Location, parse
from ..core.outputs import ERROR, PROGRESS, RESULT
from ..core.spec import JobSpec
from ..core.trainjob import (
    GROUP,
    PLAN_ENV,
    PLURAL,
    VERSION,
    NodePlan,
    condition,
    manifest,
    trainjob_name,
)

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
REQUEST_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds of every Kubernetes API call


def plan_from_env() -> NodePlan:
    raw = os.environ.get(PLAN_ENV)
    if not raw:
        raise RuntimeError(
            f"this job trains on several nodes, but the step has no TrainJob plan ({PLAN_ENV}); "
            "several nodes run only in remote mode (remote.resources.nodes)"
        )
    return NodePlan.model_validate_json(raw)


def _kube() -> tuple[Any, str]:
    """A Kubernetes API client and the namespace to work in: the pod's service account in the
    cluster, else the current kubeconfig context."""
    from kubernetes import client, config

    if os.environ.get("KUBERNETES_SERVICE_HOST") and (SERVICE_ACCOUNT / "token").is_file():
        config.load_incluster_config()
        namespace = (SERVICE_ACCOUNT / "namespace").read_text().strip()
        return client.ApiClient(), namespace
    _, active = config.list_kube_config_contexts()
    namespace = active.get("context", {}).get("namespace") or "default"
    return config.new_client_from_config(), namespace


def _staging(output_uri: str) -> Location:
    """Where the nodes' inputs go: beside the job's output prefix (jobs/<id>/nodes)."""
    out = parse(output_uri)
    if out.scheme != "s3":
        raise RuntimeError(f"several nodes need the job's output in S3 (got {output_uri})")
    base = out.key[: -len("/output")] if out.key.endswith("/output") else out.key
    return Location("s3", out.root, base).join("nodes")


def stage(
    spec: JobSpec, model: str | Path, output_uri: str, train_path: str, val_path: str | None
) -> str:
    """Upload what the nodes need (rows, weights not in S3 yet, the job file); its URI."""
    s3 = storage.client()
    to = _staging(output_uri)
    train_uri = to.join("train.jsonl")
    storage.upload_file(Path(train_path), train_uri, s3)
    val_uri = None
    if val_path:
        val_uri = to.join("validation.jsonl")
        storage.upload_file(Path(val_path), val_uri, s3)
    if isinstance(model, Path):  # fetched here (Hub, PVC): the nodes read it from S3
        target = to.join("model")
        for p in sorted(model.rglob("*")):
            if p.is_file():
                storage.upload_file(p, target.join(p.relative_to(model).as_posix()), s3)
        model_uri = str(target)
        print(f"train: staged the weights to {model_uri}", flush=True)
    else:
        model_uri = model
    job_uri = to.join("job.json")
    storage.write_json(job_uri, {
        "spec": spec.model_dump_json(), "model_uri": model_uri, "output_uri": output_uri,
        "train_uri": str(train_uri), "val_uri": str(val_uri) if val_uri else None,
    }, s3)  # fmt: skip
    return str(job_uri)


def _owner(api: Any, namespace: str) -> dict[str, Any] | None:
    """This step's pod (HOSTNAME is its name), to own the TrainJob; None when it cannot be
    read (the SIGTERM handler and the provider's kill() still delete the TrainJob)."""
    from kubernetes import client

    name = os.environ.get("HOSTNAME")
    if not name:
        return None
    try:
        pod = client.CoreV1Api(api).read_namespaced_pod(
            name, namespace, _request_timeout=REQUEST_TIMEOUT
        )
    except Exception as e:
        print(f"train: cannot read this pod {name} ({getattr(e, 'status', '') or e}); the "
              "TrainJob gets no ownerReference (grant get on pods)", flush=True)  # fmt: skip
        return None
    return {"name": name, "uid": pod.metadata.uid}


class TrainJobFailed(RuntimeError):
    """The TrainJob's Failed condition: it ended by itself, nothing to delete."""


class _Cancelled(SystemExit):
    """SIGTERM: KFP terminates the run (or the pod is deleted)."""


@contextlib.contextmanager
def _sigterm_raises() -> Iterator[None]:
    def handler(signum: int, frame: Any) -> None:
        raise _Cancelled(128 + signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: nothing to install
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _TrainJob:
    def __init__(self, api: Any, namespace: str, name: str) -> None:
        from kubernetes import client

        self.objects = client.CustomObjectsApi(api)
        self.namespace, self.name = namespace, name

    def create(self, body: dict[str, Any]) -> None:
        try:
            self.objects.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, body, _request_timeout=REQUEST_TIMEOUT
            )
        except Exception as e:
            if getattr(e, "status", None) == 409:  # a retried step: follow the one there
                print(f"train: TrainJob {self.name} exists already; following it", flush=True)
                return
            raise _api_error(e, f"creating TrainJob {self.namespace}/{self.name}") from None

    def get(self) -> dict[str, Any]:
        return self.objects.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, self.name, _request_timeout=REQUEST_TIMEOUT
        )

    def delete(self) -> None:
        try:
            self.objects.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, self.name,
                propagation_policy="Background", _request_timeout=REQUEST_TIMEOUT,
            )  # fmt: skip
            print(f"train: deleted TrainJob {self.namespace}/{self.name}", flush=True)
        except Exception as e:
            if getattr(e, "status", None) != 404:
                print(f"train: could not delete TrainJob {self.name}: {e}", flush=True)


def _api_error(e: Exception, doing: str) -> RuntimeError:
    status = getattr(e, "status", None)
    if status == 404:
        return RuntimeError(
            f"{doing}: the cluster does not serve {GROUP}/{VERSION} TrainJobs (HTTP 404); "
            "install Kubeflow Trainer v2, or train on one node"
        )
    if status in (401, 403):
        return RuntimeError(
            f"{doing}: forbidden (HTTP {status}); the pipeline's service account needs "
            "create/get/list/watch/delete on trainjobs.trainer.kubeflow.org and get on pods"
        )
    return RuntimeError(f"{doing}: {getattr(e, 'reason', None) or e}")


def _progress_line(output: Location, s3: Any, last: Any) -> Any:
    """Print rank 0's progress when it moved; the step's log (and the status) shows it.
    Storage denying or failing the read is printed once and does not stop the following."""
    try:
        data = storage.read_json(output.join(PROGRESS), s3)
    except Upstream as e:
        if last != str(e):
            print(f"train: cannot read the progress ({e})", flush=True)
        return str(e)
    p = (data or {}).get("progress") or {}
    key = (p.get("step"), p.get("epoch"))
    if p and key != last:
        loss = p.get("loss")
        print(f"train: step {p.get('step')}/{p.get('total_steps')} epoch {p.get('epoch')}/"
              f"{p.get('total_epochs')}" + (f" loss {loss:.4f}" if loss is not None else ""),
              flush=True)  # fmt: skip
        return key
    return last


def follow(job: _TrainJob, plan: NodePlan, output: Location) -> None:
    """Until the TrainJob's Complete condition; its Failed condition (reason and message, with
    the nodes' own error when they left one) fails the step."""
    s3 = storage.client()
    answered, shown = time.monotonic(), None
    while True:
        try:
            obj = job.get()
            answered = time.monotonic()
        except Exception as e:
            if getattr(e, "status", None) == 404:
                raise RuntimeError(
                    f"TrainJob {job.namespace}/{job.name} was deleted before it finished"
                ) from None
            if time.monotonic() - answered > plan.api_grace_seconds:
                raise _api_error(e, f"following TrainJob {job.name} (no answer for "
                                    f"{plan.api_grace_seconds:.0f} s)") from None  # fmt: skip
            print(f"train: cannot read TrainJob {job.name} ({type(e).__name__}); retrying",
                  flush=True)  # fmt: skip
            time.sleep(plan.poll_seconds)
            continue
        if condition(obj, "Complete") is not None:
            _progress_line(output, s3, shown)
            return
        failed = condition(obj, "Failed")
        if failed is not None:
            try:
                node = storage.read_json(output.join(ERROR), s3)
            except Upstream as e:
                node = {"message": f"(their error.json is unreadable: {e})"}
            why = f"; on the nodes: {node['message']}" if isinstance(node, dict) and node.get(
                "message") else ""  # fmt: skip
            raise TrainJobFailed(
                f"TrainJob {job.namespace}/{job.name} failed ({failed.get('reason') or 'Failed'})"
                f": {failed.get('message') or 'no message'}{why}"
            )
        shown = _progress_line(output, s3, shown)
        time.sleep(plan.poll_seconds)


def run_on_nodes(
    spec: JobSpec, model: str | Path, output_uri: str, train_path: str, val_path: str | None
) -> dict[str, Any]:
    """Stage, create the TrainJob, follow it; rank 0's result.json once it completed."""
    plan = plan_from_env()
    job_uri = stage(spec, model, output_uri, train_path, val_path)
    api, namespace = _kube()
    name = trainjob_name(spec.job_uuid)
    body = manifest(plan, job_uuid=spec.job_uuid, namespace=namespace, job_uri=job_uri,
                    owner=_owner(api, namespace))  # fmt: skip
    job = _TrainJob(api, namespace, name)
    with _sigterm_raises():
        job.create(body)
        print(f"train: TrainJob {namespace}/{name}: {plan.nodes} nodes x "
              f"{plan.procs_per_node} ranks, runtime {plan.runtime}", flush=True)  # fmt: skip
        try:
            follow(job, plan, parse(output_uri))
        except BaseException as e:
            if not isinstance(e, TrainJobFailed):
                job.delete()  # cancelled, or lost track of it: it must not train on
            raise
    result = storage.read_json(parse(output_uri).join(RESULT))
    if not isinstance(result, dict):
        raise RuntimeError(f"TrainJob {name} completed, but rank 0 left no {RESULT}")
    result.pop("format_version", None)  # written again, versioned, by the step
    return result
