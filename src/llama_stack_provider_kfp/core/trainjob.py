"""A Kubeflow Trainer v2 TrainJob for a job that trains on several nodes (plain data only).

The kfp backend turns the provider config into a `NodePlan` (placement) and hands it to the
train step as an environment variable; the step stages the inputs to S3, builds the TrainJob
from the plan with `manifest()`, creates it and follows it. Shapes follow
`trainer.kubeflow.org/v1alpha1` as Trainer v2.3 serves it (`spec.trainer` for image, command,
env, numNodes, resourcesPerNode, numProcPerNode; `spec.runtimePatches` for the pods' node
selector, tolerations, volumes). Secrets appear by reference only (`valueFrom.secretKeyRef`).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from pydantic import BaseModel, Field

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"
# Labels naming the job, on the TrainJob (kill() finds it by them) and on its pods.
JOB_LABEL = "llama-stack-kfp/job"
APP_LABEL = "app.kubernetes.io/managed-by"
APP = "llama-stack-provider-kfp"
# The pod template and container of Trainer's torch runtimes that run the training code.
NODE = "node"
# Who owns the runtime patch (Trainer keys patches by manager).
MANAGER = "llama-stack-provider-kfp"
# The env variable that carries the plan (JSON) into the train step.
PLAN_ENV = "KFP_STEP_TRAINJOB_PLAN"
NODE_MAIN = "llama_stack_provider_kfp.training.node_main"


class NodePlan(BaseModel):
    """What the provider config says about the nodes; the step adds the job's own parts."""

    nodes: int = Field(ge=2)
    procs_per_node: int = Field(ge=1)
    runtime: str
    image: str
    resources: dict[str, dict[str, str]] = {}  # requests / limits (corev1 ResourceRequirements)
    env: list[dict[str, Any]] = []  # corev1 EnvVar: value, or valueFrom.secretKeyRef
    node_selector: dict[str, str] = {}
    tolerations: list[dict[str, str]] = []
    image_pull_secrets: list[str] = []
    volumes: list[dict[str, Any]] = []  # corev1 Volume
    volume_mounts: list[dict[str, Any]] = []  # corev1 VolumeMount of the node container
    service_account: str | None = None
    api_grace_seconds: float = 300.0
    poll_seconds: float = 10.0


def trainjob_name(job_uuid: str) -> str:
    """An RFC 1035 label (Trainer requires one, at most 63 characters) naming the job."""
    slug = re.sub(r"[^a-z0-9-]+", "-", job_uuid.lower()).strip("-")[:40].strip("-")
    digest = hashlib.sha256(job_uuid.encode()).hexdigest()[:8]
    return f"lsk-{slug}-{digest}" if slug else f"lsk-{digest}"


def label_value(job_uuid: str) -> str:
    """A label value for the job id (at most 63 characters of [-_.A-Za-z0-9])."""
    value = re.sub(r"[^A-Za-z0-9_.-]+", "-", job_uuid).strip("-_.")
    if len(value) > 63 or value != job_uuid:
        value = f"{value[:54].strip('-_.')}-{hashlib.sha256(job_uuid.encode()).hexdigest()[:8]}"
    return value


def job_selector(job_uuid: str) -> str:
    return f"{JOB_LABEL}={label_value(job_uuid)}"


def node_command(procs_per_node: int, job_uri: str) -> list[str]:
    """What each node runs: node_main fetches the staged inputs and starts torchrun, which
    reads the node count, node rank and master address/port from the runtime's PET_* env."""
    return ["python", "-m", NODE_MAIN, "--nproc-per-node", str(procs_per_node), job_uri]


def manifest(
    plan: NodePlan,
    *,
    job_uuid: str,
    namespace: str,
    job_uri: str,
    owner: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The TrainJob object to create. `owner`: the train step's pod (name, uid), so that
    Kubernetes deletes the TrainJob with the pod."""
    labels = {JOB_LABEL: label_value(job_uuid), APP_LABEL: APP}
    metadata: dict[str, Any] = {
        "name": trainjob_name(job_uuid),
        "namespace": namespace,
        "labels": labels,
        "annotations": {"llama-stack-kfp/job-uuid": job_uuid},
    }
    if owner is not None:
        metadata["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Pod", "name": owner["name"], "uid": owner["uid"],
             "blockOwnerDeletion": False, "controller": False}
        ]  # fmt: skip
    trainer: dict[str, Any] = {
        "image": plan.image,
        "command": node_command(plan.procs_per_node, job_uri),
        "env": list(plan.env),
        "numNodes": plan.nodes,
        "numProcPerNode": plan.procs_per_node,
    }
    if plan.resources:
        trainer["resourcesPerNode"] = plan.resources
    pod: dict[str, Any] = {}
    if plan.node_selector:
        pod["nodeSelector"] = dict(plan.node_selector)
    if plan.tolerations:
        pod["tolerations"] = [dict(t) for t in plan.tolerations]
    if plan.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": n} for n in plan.image_pull_secrets]
    if plan.service_account:
        pod["serviceAccountName"] = plan.service_account
    if plan.volumes:
        pod["volumes"] = list(plan.volumes)
        pod["containers"] = [{"name": NODE, "volumeMounts": list(plan.volume_mounts)}]
    spec: dict[str, Any] = {
        "runtimeRef": {"name": plan.runtime, "apiGroup": GROUP, "kind": "ClusterTrainingRuntime"},
        "trainer": trainer,
    }
    # The nodes' pods carry the job's labels too (kubectl get pods -l llama-stack-kfp/job=...).
    template: dict[str, Any] = {"metadata": {"labels": labels}}
    if pod:
        template["spec"] = pod
    spec["runtimePatches"] = [{
            "manager": MANAGER,
            "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
                {"name": NODE, "template": {"spec": {"template": template}}}
            ]}}},
    }]  # fmt: skip
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": metadata, "spec": spec}


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The TrainJob's status condition of this type when it is True (Complete, Failed)."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return dict(c)
    return None
