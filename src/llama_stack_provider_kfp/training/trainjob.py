"""The train step of a job on several nodes: stage its inputs, hand training to a Kubeflow
Trainer v2 TrainJob, follow it to the end, and never leave it running behind a cancelled step.

The step runs in a KFP pod and talks to the Kubernetes API (`kube`) with the pipeline's service
account (a kubeconfig context where one is set, as kubectl does). It needs
create/get/list/watch/delete on `trainjobs` (trainer.kubeflow.org) and get on pods. Cancelling
is covered three ways: the TrainJob is owned by this step's pod (deleted with it), a SIGTERM
(KFP terminating the run) deletes it here, and the provider's kill() deletes the TrainJobs
labelled with the job's id.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..boundary import storage
from ..core.errors import Upstream
from ..core.locations import Location, parse
from ..core.outputs import ERROR, PROGRESS, RESULT
from ..core.spec import JobSpec
from ..kube.client import connect
from ..kube.trainjob import PLAN_ENV, NodePlan, TrainJobs, condition, manifest, trainjob_name
from .context import NodeJob

REQUEST_TIMEOUT = (5.0, 30.0)  # (connect, read) seconds of every Kubernetes API call


def plan_from_env() -> NodePlan:
    raw = os.environ.get(PLAN_ENV)
    if not raw:
        raise RuntimeError(
            f"this job trains on several nodes, but the step has no TrainJob plan ({PLAN_ENV}); "
            "several nodes run only in remote mode (remote.resources.nodes)"
        )
    return NodePlan.model_validate_json(raw)


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
    job = NodeJob(spec=spec.model_dump_json(), model_uri=model_uri, output_uri=output_uri,
                  train_uri=str(train_uri), val_uri=str(val_uri) if val_uri else None)  # fmt: skip
    storage.write_json(job_uri, job.model_dump(mode="json"), s3)
    return str(job_uri)


def _owner(jobs: TrainJobs) -> dict[str, Any] | None:
    """This step's pod (HOSTNAME is its name), to own the TrainJob; None when it cannot be
    read (the SIGTERM handler and the provider's kill() still delete the TrainJob)."""
    name = os.environ.get("HOSTNAME")
    if not name:
        return None
    try:
        return jobs.pod_owner(name)
    except Exception as e:
        print(f"train: cannot read this pod {name} ({getattr(e, 'status', '') or e}); the "
              "TrainJob gets no ownerReference (grant get on pods)", flush=True)  # fmt: skip
        return None


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


def _delete(jobs: TrainJobs, name: str) -> None:
    try:
        if jobs.delete(name):
            print(f"train: deleted TrainJob {jobs.namespace}/{name}", flush=True)
    except Exception as e:
        print(f"train: could not delete TrainJob {name}: {e}", flush=True)


def follow(jobs: TrainJobs, name: str, plan: NodePlan, output: Location) -> None:
    """Until the TrainJob's Complete condition; its Failed condition (reason and message, with
    the nodes' own error when they left one) fails the step."""
    s3 = storage.client()
    shown = None
    for obj in jobs.polls(name, plan.poll_seconds, plan.api_grace_seconds):
        if isinstance(obj, Exception):
            print(f"train: cannot read TrainJob {name} ({type(obj).__name__}); retrying",
                  flush=True)  # fmt: skip
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
                f"TrainJob {jobs.namespace}/{name} failed ({failed.get('reason') or 'Failed'})"
                f": {failed.get('message') or 'no message'}{why}"
            )
        shown = _progress_line(output, s3, shown)


def run_on_nodes(
    spec: JobSpec, model: str | Path, output_uri: str, train_path: str, val_path: str | None
) -> dict[str, Any]:
    """Stage, create the TrainJob, follow it; rank 0's result.json once it completed."""
    plan = plan_from_env()
    job_uri = stage(spec, model, output_uri, train_path, val_path)
    kube = connect()
    if kube is None:
        raise RuntimeError(
            "several nodes: no Kubernetes API reachable from the train step (neither the pod's "
            "service account nor a kubeconfig)"
        )
    jobs = TrainJobs(kube.api, kube.namespace or "default", REQUEST_TIMEOUT)
    name = trainjob_name(spec.job_uuid)
    body = manifest(plan, job_uuid=spec.job_uuid, namespace=jobs.namespace, job_uri=job_uri,
                    owner=_owner(jobs))  # fmt: skip
    with _sigterm_raises():
        if not jobs.create(body):
            print(f"train: TrainJob {name} exists already; following it", flush=True)
        print(f"train: TrainJob {jobs.namespace}/{name}: {plan.nodes} nodes x "
              f"{plan.procs_per_node} ranks, runtime {plan.runtime}", flush=True)  # fmt: skip
        try:
            follow(jobs, name, plan, parse(output_uri))
        except BaseException as e:
            if not isinstance(e, TrainJobFailed):
                _delete(jobs, name)  # cancelled, or lost track of it: it must not train on
            raise
    result = storage.read_json(parse(output_uri).join(RESULT))
    if not isinstance(result, dict):
        raise RuntimeError(f"TrainJob {name} completed, but rank 0 left no {RESULT}")
    result.pop("format_version", None)  # written again, versioned, by the step
    return result
