"""How the kfp backend reaches a cluster: endpoint, namespace and token.

From the provider config, else from the current kubeconfig context (namespace, the bearer
token `oc login` leaves) and, for the URL, the namespace's DataSciencePipelinesApplication
(OpenShift AI).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from ...config import RemoteConfig
from ...core.errors import Refused, Unavailable, Upstream
from ...kube.client import Kube, connect

DSPA_GROUP, DSPA_PLURAL = (
    "datasciencepipelinesapplications.opendatahub.io",
    ("datasciencepipelinesapplications"),
)
# data-science-pipelines-operator serves v1 since 2.8.0 and only v1 since 2.17.0.
DSPA_VERSIONS = ("v1", "v1alpha1")
# SDK 2.17's IR needs a 2.5+ API server: 2.2-2.3 reject its resource fields, the 2.4 driver
# kfp-kubernetes' secretNameParameter.
MIN_BACKEND = (2, 5)


def check_backend_version(tag: str | None, url: str) -> None:
    """Refuse a KFP API server older than MIN_BACKEND (its healthz `tag_name`)."""
    if not tag:
        return  # not reported: nothing to check
    parts = []
    for piece in tag.lstrip("v").split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    if tuple(parts) < MIN_BACKEND:
        raise Refused(
            f"KFP at {url} is version {tag}; this provider needs a KFP API server >= "
            f"{'.'.join(map(str, MIN_BACKEND))} (Red Hat OpenShift AI / DSPO with KFP 2.5+): "
            "older servers reject the pipelines the kfp 2.17 SDK compiles"
        )


def _list_dspas(custom_objects, namespace: str, timeout: tuple[float, float]) -> list[dict]:
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


def request_timeout(cfg: RemoteConfig) -> tuple[float, float]:
    """(connect, read) seconds for every KFP and Kubernetes call."""
    read = cfg.request_timeout_seconds
    return min(5.0, read), read


def _token(cfg: RemoteConfig) -> str | None:
    """Read at every (re)connection, so a rotated token file is picked up."""
    if os.environ.get(cfg.token_env):
        return os.environ[cfg.token_env]
    if cfg.token_file and cfg.token_file.is_file():
        return cfg.token_file.read_text().strip()
    return None


@dataclass
class Endpoint:
    url: str
    namespace: str
    token: str | None
    ca_bundle: str | None
    kube: Kube | None  # None: the Kubernetes API is not reachable from here


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


def connection(cfg: RemoteConfig) -> Endpoint:
    """Where KFP is and how to authenticate, from the config, else from the current kubeconfig
    context or the pod's service account (namespace, token) and, for the URL, the namespace's
    DataSciencePipelinesApplication (OpenShift AI)."""
    k = connect(cfg.service_account_dir)
    namespace = cfg.namespace or (k.namespace if k else None)
    token = _token(cfg) or (k.token if k else None)
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
    return Endpoint(url, namespace, token, ca, k)


def login_page(url: str, answered: str) -> Refused:
    """What an OAuth proxy's redirect to its login page looks like through kfp: no error, an
    answer without content."""
    return Refused(
        f"KFP at {url} answered {answered}: probably a login page (an OAuth proxy redirect); "
        "the token is missing or expired"
    )


def explain(e: Exception, url: str) -> Upstream:
    """An error talking to KFP, as Refused (it answered no) or Unavailable (no answer)."""
    if isinstance(e, Upstream):
        return e  # explained already (discovery, the login page)
    status = getattr(e, "status", None)
    if status in (401, 403):
        return Refused(
            f"KFP at {url} refused the token (HTTP {status}); set a valid bearer token in the "
            "token_env variable or token_file (e.g. `oc whoami -t`), with rights on the namespace"
        )
    text = str(e)
    if "timeout" in text.lower() or "timed out" in text.lower() or isinstance(e, TimeoutError):
        return Unavailable(
            f"KFP at {url} timed out: no answer within remote.request_timeout_seconds; the "
            "route or the API server is stuck"
        )
    if "certificate" in text.lower() or "SSL" in text:
        return Unavailable(f"TLS to {url} failed ({text}); set remote.ca_bundle or verify_ssl")
    if status is None:
        return Unavailable(f"KFP endpoint {url} is unreachable ({type(e).__name__}: {text[:200]})")
    if status >= 500:  # the API server or its route is down or overloaded: no answer to act on
        return Unavailable(f"KFP at {url} answered HTTP {status}: {text[:300]}")
    return Refused(f"KFP at {url} answered HTTP {status}: {text[:300]}")
