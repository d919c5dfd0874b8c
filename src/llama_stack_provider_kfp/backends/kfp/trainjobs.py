"""Kubeflow Trainer v2 from the server's side (jobs on several nodes): is the API served, and
deleting a job's TrainJobs on cancel (KFP's terminate stops only the train step's pod)."""

from __future__ import annotations

import logging
from typing import Any

from ...core.errors import Unsupported
from ...core.trainjob import GROUP, PLURAL, VERSION, job_selector

log = logging.getLogger(__name__)

ALTERNATIVE = (
    "install Kubeflow Trainer v2 (with a torch ClusterTrainingRuntime, remote.training_runtime) "
    "in the cluster, or set remote.resources.nodes: 1 (several GPUs on one node still train "
    "together); Training Operator v1's PyTorchJob is the documented alternative, not "
    "implemented by this provider"
)


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


def delete_for_job(api: Any, namespace: str, job_uuid: str, timeout: Any) -> list[str]:
    """Delete the TrainJobs labelled with the job's id; their names."""
    from kubernetes import client

    objects = client.CustomObjectsApi(api)
    found = objects.list_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, label_selector=job_selector(job_uuid),
        _request_timeout=timeout,
    )  # fmt: skip
    deleted = []
    for item in found.get("items", []):
        name = item["metadata"]["name"]
        try:
            objects.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Background",
                _request_timeout=timeout,
            )  # fmt: skip
        except Exception as e:
            if getattr(e, "status", None) != 404:  # gone already: fine
                raise
        deleted.append(name)
    return deleted
