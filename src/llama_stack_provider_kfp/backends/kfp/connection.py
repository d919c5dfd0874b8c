"""How the kfp backend reaches a cluster: endpoint, namespace and token.

From the provider config, else from the current kubeconfig context (namespace, the bearer
token `oc login` leaves) and, for the URL, the namespace's DataSciencePipelinesApplication
(OpenShift AI).
"""

from __future__ import annotations

import os

from ...config import RemoteConfig
from ...core.errors import Refused, Unavailable

DSPA = ("datasciencepipelinesapplications.opendatahub.io", "v1alpha1",
        "datasciencepipelinesapplications")  # fmt: skip


def _token(cfg: RemoteConfig) -> str | None:
    if os.environ.get(cfg.token_env):
        return os.environ[cfg.token_env]
    if cfg.token_file and cfg.token_file.is_file():
        return cfg.token_file.read_text().strip()
    return None


def connection(cfg: RemoteConfig) -> tuple[str, str, str | None]:
    """(url, namespace, token): from the config, else from the current kubeconfig context
    (namespace, bearer token as `oc login` leaves it) and, for the URL, the namespace's
    DataSciencePipelinesApplication (OpenShift AI)."""
    url, namespace, token = cfg.url, cfg.namespace, _token(cfg)
    if url and namespace and token:
        return url, namespace, token
    try:
        from kubernetes import client as k8s
        from kubernetes import config as kubeconfig

        _, active = kubeconfig.list_kube_config_contexts()
        api = kubeconfig.new_client_from_config()
    except Exception as e:
        if url and namespace:
            return url, namespace, token  # no kubeconfig: go without a token
        raise Unavailable(
            f"remote.url/namespace are not set and no kubeconfig context is usable ({e}); "
            "set remote.url and remote.namespace, or log in (`oc login`)"
        ) from None
    namespace = namespace or active.get("context", {}).get("namespace") or "default"
    if token is None:
        bearer = api.configuration.api_key.get("authorization", "")
        token = bearer.removeprefix("Bearer ").strip() or None
    if not url:
        try:
            items = k8s.CustomObjectsApi(api).list_namespaced_custom_object(
                DSPA[0], DSPA[1], namespace, DSPA[2]
            )["items"]
        except Exception as e:
            raise Refused(
                f"cannot list DataSciencePipelinesApplications in namespace {namespace!r} "
                f"({getattr(e, 'status', '')} {getattr(e, 'reason', e)}); set remote.url"
            ) from None
        v2 = [i for i in items if (i.get("spec") or {}).get("dspVersion") == "v2"]
        url = next(
            (
                i["status"]["components"]["apiServer"]["externalUrl"]
                for i in v2
                if (i.get("status") or {}).get("components", {}).get("apiServer", {})
                .get("externalUrl")
            ),
            None,
        )  # fmt: skip
        if not url:
            raise Refused(
                f"no ready DataSciencePipelinesApplication with dspVersion v2 in namespace "
                f"{namespace!r}; create a pipeline server there or set remote.url"
            )
    return url, namespace, token


def explain(e: Exception, url: str) -> Unavailable:
    """An error talking to KFP, as Refused (it answered no) or Unavailable (no answer)."""
    status = getattr(e, "status", None)
    if status in (401, 403):
        return Refused(
            f"KFP at {url} refused the token (HTTP {status}); set a valid bearer token in the "
            "token_env variable or token_file (e.g. `oc whoami -t`), with rights on the namespace"
        )
    text = str(e)
    if "certificate" in text.lower() or "SSL" in text:
        return Unavailable(f"TLS to {url} failed ({text}); set remote.ca_bundle or verify_ssl")
    if status is None:
        return Unavailable(f"KFP endpoint {url} is unreachable ({type(e).__name__}: {text[:200]})")
    return Refused(f"KFP at {url} answered HTTP {status}: {text[:300]}")
