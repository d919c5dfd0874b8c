"""The submit-time reachability probe of the register stage's registry: a plain HTTP GET.

Never a registry client: the model-registry client patches asyncio globally when it is
created, and the server must not import mlflow (it is the train step's library). Any HTTP
answer below 500 counts as reachable: credentials are the step's (a Kubernetes Secret
remotely), checked when it registers.

    mlflow    GET <uri>/health      (http/https tracking servers)
    kubeflow  GET <uri>/api/model_registry/v1/registered_models?pageSize=1
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Literal
from urllib.parse import urlparse

from ..core.errors import InvalidRequest, Unavailable
from ..core.locations import check_http_url

KUBEFLOW_API = "/api/model_registry/v1"
_SKIP = (
    "set registry.probe_timeout_seconds: 0 to skip this check for a registry only the "
    "cluster reaches"
)


def probe_url(kind: Literal["mlflow", "kubeflow"], uri: str) -> str | None:
    """The URL the probe reads, or None where there is nothing to GET (a local MLflow store).
    A URI that is neither is a 400 naming the setting."""
    parsed = urlparse(uri)
    base = uri.rstrip("/")
    if parsed.scheme in ("http", "https"):
        check_http_url(uri, "registry.uri")
        if parsed.password is not None:
            raise InvalidRequest(
                "registry.uri carries a password: credentials go in the step's environment "
                "(MLFLOW_TRACKING_TOKEN, the registry token's variable or file), never the URI"
            )
        if kind == "mlflow":
            return f"{base}/health"
        return f"{base}{KUBEFLOW_API}/registered_models?pageSize=1"
    if kind == "kubeflow":
        raise InvalidRequest(
            f"registry.uri {uri!r}: the Kubeflow Model Registry is an HTTP service; use "
            "https://<host>[:<port>] (http:// for an in-cluster Service without TLS)"
        )
    local_path = not parsed.scheme and uri.startswith("/")
    if parsed.scheme in ("sqlite", "file", "postgresql", "mysql", "mssql") or local_path:
        _needs_full_mlflow(uri, parsed.scheme or "file")
        return None
    raise InvalidRequest(
        f"registry.uri {uri!r}: use an MLflow tracking server (http:// or https://), or a "
        "local store (sqlite:///<absolute path>) with the full mlflow package installed"
    )


def _needs_full_mlflow(uri: str, scheme: str) -> None:
    """A database or file store is opened by the step itself: mlflow-skinny (the `tracking`
    extra) only talks to a server; the store needs the full `mlflow` package."""
    if scheme == "file":
        return  # mlflow-skinny carries the file store
    try:
        importlib.metadata.distribution("mlflow")
    except importlib.metadata.PackageNotFoundError:
        raise InvalidRequest(
            f"registry.uri {uri!r} is an MLflow database store, which the full `mlflow` package "
            "opens (pip install mlflow==3.17.2); the `tracking` extra installs mlflow-skinny, "
            "which only talks to a tracking server: use its http(s):// URI instead"
        ) from None


def check_registry_reachable(
    kind: Literal["none", "mlflow", "kubeflow"], uri: str | None, timeout: float
) -> None:
    """Raise before a job starts when its registry cannot work: a URI that is no registry's
    (InvalidRequest, 400), or one that does not answer within `timeout` seconds or answers
    5xx (Unavailable, 503). `timeout` 0 skips the network part."""
    if kind == "none":
        return
    if not uri:
        raise InvalidRequest(
            f"registry.kind {kind!r} needs registry.uri"
            + (" (or the request's logger_config.mlflow.tracking_uri)" if kind == "mlflow" else "")
        )
    url = probe_url(kind, uri)
    if url is None or timeout <= 0:
        return
    import httpx  # at submit only

    what = "MLflow tracking server" if kind == "mlflow" else "Kubeflow Model Registry"
    try:
        answer = httpx.get(url, timeout=timeout, verify=_verify(kind), follow_redirects=False)
    except httpx.HTTPError as e:
        raise Unavailable(
            f"the {what} {uri} (registry.uri) does not answer within {timeout:g} s "
            f"({type(e).__name__}: {e}); start it or fix registry.uri, or {_SKIP}"
        ) from None
    if answer.status_code >= 500:
        raise Unavailable(
            f"the {what} {uri} (registry.uri) answers {answer.status_code}; check that it "
            f"runs, or {_SKIP}"
        )


def _verify(kind: str) -> str | bool:
    if kind == "mlflow":
        return os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or (
            os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() != "true"
        )
    return os.environ.get("MODEL_REGISTRY_CA_CERT") or True
