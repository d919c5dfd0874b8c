"""Kubeflow Trainer v2 TrainJobs for jobs that train on several nodes: the manifest, and the
calls that create, follow, find and delete them.

The kfp backend turns the provider config into a `NodePlan` (placement) and hands it to the
train step as an environment variable; the step builds the TrainJob from the plan with
`manifest()`, creates it and follows it; the server checks at submit that the cluster serves
TrainJobs and deletes a job's TrainJobs on cancel. The manifest is built from Kubeflow
Trainer's own models (`kubeflow-trainer-api`, the v2.3 CRD schema: `spec.trainer` for image,
command, env, numNodes, resourcesPerNode, numProcPerNode; `spec.runtimePatches` for the pods'
node selector, tolerations, volumes). Secrets appear by reference only
(`valueFrom.secretKeyRef`).
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Iterator
from typing import Any, Protocol

from pydantic import BaseModel, Field

from ..core.errors import Unsupported

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
KIND = "TrainJob"
# Labels naming the job, on the TrainJob (cancel finds it by them) and on its pods.
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

ALTERNATIVE = (
    "install Kubeflow Trainer v2 (with a torch ClusterTrainingRuntime, remote.training_runtime) "
    "in the cluster, or set remote.resources.nodes: 1 (several GPUs on one node still train "
    "together); Training Operator v1's PyTorchJob is the documented alternative, not "
    "implemented by this provider"
)


class NodePlan(BaseModel):
    """What the provider config says about the nodes; the step adds the job's own parts.
    Kubernetes objects are plain dicts here (corev1 shapes): the plan travels as JSON."""

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


class _FromDict[T](Protocol):
    def from_dict(self, obj: dict[str, Any]) -> T | None: ...


def _typed[T](model: _FromDict[T], objs: list[dict[str, Any]]) -> list[T]:
    """Plain corev1 dicts as Trainer's models (from_dict is None only for a None input)."""
    return [x for x in map(model.from_dict, objs) if x is not None]


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
    # Imported here: its 400 models take a second to import, which only the step pays.
    from kubeflow_trainer_api import models as m

    labels = {JOB_LABEL: label_value(job_uuid), APP_LABEL: APP}
    owners = None
    if owner is not None:
        owners = [m.IoK8sApimachineryPkgApisMetaV1OwnerReference(
            apiVersion="v1", kind="Pod", name=owner["name"], uid=owner["uid"],
            blockOwnerDeletion=False, controller=False,
        )]  # fmt: skip
    mounts = _typed(m.IoK8sApiCoreV1VolumeMount, plan.volume_mounts)
    pull = [m.IoK8sApiCoreV1LocalObjectReference(name=n) for n in plan.image_pull_secrets]
    pod = m.TrainerV1alpha1PodSpecPatch(
        nodeSelector=dict(plan.node_selector) or None,
        tolerations=_typed(m.IoK8sApiCoreV1Toleration, plan.tolerations) or None,
        imagePullSecrets=pull or None,
        serviceAccountName=plan.service_account or None,
        volumes=_typed(m.IoK8sApiCoreV1Volume, plan.volumes) or None,
        containers=[m.TrainerV1alpha1ContainerPatch(name=NODE, volumeMounts=mounts)]
        if plan.volumes
        else None,
    )
    # The nodes' pods carry the job's labels too (kubectl get pods -l llama-stack-kfp/job=...).
    template = m.TrainerV1alpha1PodTemplatePatch(
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(labels=labels),
        spec=pod if pod.to_dict() else None,
    )
    patch = m.TrainerV1alpha1RuntimePatch(
        manager=MANAGER,
        trainingRuntimeSpec=m.TrainerV1alpha1TrainingRuntimeSpecPatch(
            template=m.TrainerV1alpha1JobSetTemplatePatch(
                spec=m.TrainerV1alpha1JobSetSpecPatch(replicatedJobs=[
                    m.TrainerV1alpha1ReplicatedJobPatch(
                        name=NODE,
                        template=m.TrainerV1alpha1JobTemplatePatch(
                            spec=m.TrainerV1alpha1JobSpecPatch(template=template)
                        ),
                    )
                ])
            )
        ),
    )  # fmt: skip
    trainer = m.TrainerV1alpha1Trainer(
        image=plan.image,
        command=node_command(plan.procs_per_node, job_uri),
        env=_typed(m.IoK8sApiCoreV1EnvVar, plan.env),
        numNodes=plan.nodes,
        numProcPerNode=plan.procs_per_node,
        resourcesPerNode=m.IoK8sApiCoreV1ResourceRequirements.from_dict(plan.resources)
        if plan.resources
        else None,
    )
    job = m.TrainerV1alpha1TrainJob(
        apiVersion=f"{GROUP}/{VERSION}",
        kind=KIND,
        metadata=m.IoK8sApimachineryPkgApisMetaV1ObjectMeta(
            name=trainjob_name(job_uuid),
            namespace=namespace,
            labels=labels,
            annotations={"llama-stack-kfp/job-uuid": job_uuid},
            ownerReferences=owners,
        ),
        spec=m.TrainerV1alpha1TrainJobSpec(
            runtimeRef=m.TrainerV1alpha1RuntimeRef(
                name=plan.runtime, apiGroup=GROUP, kind="ClusterTrainingRuntime"
            ),
            trainer=trainer,
            runtimePatches=[patch],
        ),
    )
    return job.to_dict()


def condition(obj: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """The TrainJob's status condition of this type when it is True (Complete, Failed)."""
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return dict(c)
    return None


def check_served(api: Any, timeout: Any) -> None:
    """Refuse (501) when the cluster's API discovery has no trainer.kubeflow.org/v1alpha1."""
    from kubernetes import client

    groups = client.ApisApi(api).get_api_versions(_request_timeout=timeout)
    for group in groups.groups or []:
        if group.name == GROUP and any(v.version == VERSION for v in group.versions or []):
            return
    raise Unsupported(
        f"remote.resources.nodes > 1 trains through Kubeflow Trainer v2 TrainJobs, but the "
        f"cluster does not serve {GROUP}/{VERSION}: {ALTERNATIVE}"
    )


def api_error(e: Exception, doing: str) -> RuntimeError:
    """A failed TrainJob call, with what to change."""
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


class TrainJobs:
    """The TrainJobs of one namespace through one Kubernetes API client; every call has a
    timeout ((connect, read) seconds)."""

    def __init__(self, api: Any, namespace: str, timeout: tuple[float, float]) -> None:
        from kubernetes import client

        self.api, self.namespace, self.timeout = api, namespace, timeout
        self.objects = client.CustomObjectsApi(api)

    def create(self, body: dict[str, Any]) -> bool:
        """Create it; False when it exists already (a retried step follows that one)."""
        try:
            self.objects.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, body, _request_timeout=self.timeout
            )
        except Exception as e:
            if getattr(e, "status", None) == 409:
                return False
            name = body["metadata"]["name"]
            raise api_error(e, f"creating TrainJob {self.namespace}/{name}") from None
        return True

    def get(self, name: str) -> dict[str, Any]:
        return self.objects.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name, _request_timeout=self.timeout
        )

    def delete(self, name: str) -> bool:
        """Delete it (its pods go with it); False when it was gone already."""
        try:
            self.objects.delete_namespaced_custom_object(
                GROUP, VERSION, self.namespace, PLURAL, name, propagation_policy="Background",
                _request_timeout=self.timeout,
            )  # fmt: skip
        except Exception as e:
            if getattr(e, "status", None) != 404:
                raise
            return False
        return True

    def delete_for_job(self, job_uuid: str) -> list[str]:
        """Delete the TrainJobs labelled with the job's id; their names."""
        found = self.objects.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, label_selector=job_selector(job_uuid),
            _request_timeout=self.timeout,
        )  # fmt: skip
        names = [item["metadata"]["name"] for item in found.get("items", [])]
        for name in names:
            self.delete(name)
        return names

    def pod_owner(self, pod: str) -> dict[str, Any]:
        """A pod as an owner of a TrainJob (name, uid): Kubernetes deletes the TrainJob with
        the pod."""
        from kubernetes import client

        read = client.CoreV1Api(self.api).read_namespaced_pod(
            pod, self.namespace, _request_timeout=self.timeout
        )
        return {"name": pod, "uid": read.metadata.uid}

    def polls(
        self, name: str, poll_seconds: float, grace_seconds: float
    ) -> Iterator[dict[str, Any] | Exception]:
        """The TrainJob every `poll_seconds`, or the error of a read that failed while the API
        has been silent for less than `grace_seconds`; raises once it was deleted or the API
        stayed silent longer. The caller stops on the conditions it waits for."""
        answered = time.monotonic()
        while True:
            try:
                obj = self.get(name)
                answered = time.monotonic()
            except Exception as e:
                if getattr(e, "status", None) == 404:
                    raise RuntimeError(
                        f"TrainJob {self.namespace}/{name} was deleted before it finished"
                    ) from None
                if time.monotonic() - answered > grace_seconds:
                    raise api_error(e, f"following TrainJob {name} (no answer for "
                                       f"{grace_seconds:.0f} s)") from None  # fmt: skip
                yield e
            else:
                yield obj
            time.sleep(poll_seconds)
