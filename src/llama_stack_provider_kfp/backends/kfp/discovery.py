"""Where the cluster's KFP API is: from the provider config, else from the current kubeconfig
context or the pod's service account (the namespace) and, for the URL, the namespace's
DataSciencePipelinesApplication (OpenShift AI)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...config import RemoteConfig
from ...core.errors import Refused, Unavailable
from ...kube.client import Kube, connect

DSPA_GROUP, DSPA_PLURAL = (
    "datasciencepipelinesapplications.opendatahub.io",
    ("datasciencepipelinesapplications"),
)
# data-science-pipelines-operator serves v1 since 2.8.0 and only v1 since 2.17.0.
DSPA_VERSIONS = ("v1", "v1alpha1")


def request_timeout(cfg: RemoteConfig) -> tuple[float, float]:
    """(connect, read) seconds for every KFP and Kubernetes call."""
    read = cfg.request_timeout_seconds
    return min(5.0, read), read


@dataclass(frozen=True)
class Endpoint:
    url: str
    namespace: str
    ca_bundle: str | None
    kube: Kube | None  # None: the Kubernetes API is not reachable from here


def _list_dspas(custom_objects: Any, namespace: str, timeout: tuple[float, float]) -> list[dict]:
    """The namespace's DSPAs through the newest API version the cluster serves."""
    last: Exception | None = None
    for version in DSPA_VERSIONS:
        try:
            found = custom_objects.list_namespaced_custom_object(
                DSPA_GROUP, version, namespace, DSPA_PLURAL, _request_timeout=timeout
            )
            return list(found.get("items", []))
        except Exception as e:  # 404: this version is not served; try the next one
            last = e
            if getattr(e, "status", None) != 404:
                break
    raise last if last is not None else RuntimeError("no DSPA API version")


def _dspa_url(k: Kube, namespace: str, cfg: RemoteConfig) -> str:
    """The KFP API of the namespace's pipeline server: its route (externalUrl) from outside,
    its service (url) from inside the cluster, where the route may not even resolve."""
    from kubernetes import client as k8s

    try:
        items = _list_dspas(k8s.CustomObjectsApi(k.api), namespace, request_timeout(cfg))
    except Exception as e:
        raise Refused(
            f"cannot list DataSciencePipelinesApplications in namespace {namespace!r} "
            f"({getattr(e, 'status', '')} {getattr(e, 'reason', e)}); set remote.url"
        ) from None
    keys = ("url", "externalUrl") if k.in_cluster else ("externalUrl",)
    for item in items:
        if (item.get("spec") or {}).get("dspVersion") != "v2":
            continue
        server = ((item.get("status") or {}).get("components") or {}).get("apiServer") or {}
        for key in keys:
            if server.get(key):
                return str(server[key])
    raise Refused(
        f"no ready DataSciencePipelinesApplication with dspVersion v2 in namespace "
        f"{namespace!r}; create a pipeline server there or set remote.url"
    )


def find_endpoint(cfg: RemoteConfig) -> Endpoint:
    """Where KFP is, from the config, else from the current kubeconfig context or the pod's
    service account (namespace) and, for the URL, the namespace's DSPA."""
    k = connect(cfg.service_account_dir)
    namespace = cfg.namespace or (k.namespace if k else None)
    ca = str(cfg.ca_bundle) if cfg.ca_bundle else None
    url = cfg.url
    if not url or not namespace:
        if k is None:
            raise Unavailable(
                "remote.url/namespace are not set and neither a kubeconfig context nor a "
                "service account is usable; set remote.url and remote.namespace, or log in "
                "(`oc login`)"
            )
        namespace = namespace or "default"
    if not url:
        assert k is not None
        url = _dspa_url(k, namespace, cfg)
        service_ca = cfg.service_account_dir / "service-ca.crt"
        if k.in_cluster and ca is None and url.startswith("https") and service_ca.is_file():
            ca = str(service_ca)  # the pipeline server's service cert: OpenShift's service CA
    return Endpoint(url, namespace, ca, k)
