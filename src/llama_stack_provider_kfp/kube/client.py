"""A Kubernetes API client found as kubectl finds one: the current kubeconfig context, else
the pod's own service account (code running in the cluster), else none."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class Kube:
    """A Kubernetes API client and what its configuration says."""

    api: Any  # kubernetes.client.ApiClient
    namespace: str | None
    token: str | None  # the bearer token the configuration held when it was loaded
    in_cluster: bool
    service_account_dir: Path

    def read_token(self) -> str | None:
        """The bearer token, read again: the kubelet rotates a service account's token, and a
        new `oc login` rewrites the kubeconfig's."""
        if self.in_cluster:
            return _read(self.service_account_dir / "token")
        try:
            from kubernetes import config as kubeconfig

            return _bearer(kubeconfig.new_client_from_config())
        except Exception:
            return self.token


def _read(path: Path) -> str | None:
    return (path.read_text().strip() or None) if path.is_file() else None


def _bearer(api: Any) -> str | None:
    bearer = api.configuration.api_key.get("authorization", "")
    return bearer.removeprefix("Bearer ").strip() or None


def _in_cluster(sa: Path) -> Kube | None:
    """The pod's own service account. Its token is short-lived and rotated by the kubelet:
    the client re-reads the file (try_refresh_token)."""
    if not os.environ.get("KUBERNETES_SERVICE_HOST") or not (sa / "token").is_file():
        return None
    from kubernetes import client as k8s
    from kubernetes.config.incluster_config import InClusterConfigLoader

    conf = k8s.Configuration()  # this client's own, not the process-wide default
    InClusterConfigLoader(
        token_filename=str(sa / "token"), cert_filename=str(sa / "ca.crt"), try_refresh_token=True
    ).load_and_set(conf)
    return Kube(k8s.ApiClient(conf), _read(sa / "namespace"), _read(sa / "token"), True, sa)


def connect(service_account_dir: Path = SERVICE_ACCOUNT) -> Kube | None:
    """The current kubeconfig context (as kubectl picks it), else the pod's service account
    (`service_account_dir`), else None."""
    try:
        from kubernetes import config as kubeconfig

        _, active = kubeconfig.list_kube_config_contexts()
        api = kubeconfig.new_client_from_config()
    except Exception:
        return _in_cluster(service_account_dir)
    namespace = active.get("context", {}).get("namespace")
    return Kube(api, namespace, _bearer(api), False, service_account_dir)
