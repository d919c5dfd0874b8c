"""What a request's tracking needs from outside the server before a job starts: its local
folders writable, its MLflow tracking server answering."""

from __future__ import annotations

import os
from pathlib import Path

from ..core.errors import InvalidRequest, Unavailable
from ..core.tracking import TrackingSpec, local_dirs


def check_writable(spec: TrackingSpec | None) -> None:
    """The local folders a job logs to (core.tracking.local_dirs) can be made by the server: a
    400 naming the field otherwise. Absolute paths in local mode only: parse_logger_config
    refused the rest."""
    for path, where in local_dirs(spec) if spec is not None else []:
        _check_dir(path, where)


def _check_dir(path: str, where: str) -> None:
    p = Path(path)
    existing = next((a for a in (p, *p.parents) if a.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise InvalidRequest(
            f"{where} {path!r} is not writable by the server ({existing} "
            f"{'is not a directory' if existing and not existing.is_dir() else 'is read-only'}); "
            "choose a directory it can write"
        )


def check_reachable(spec: TrackingSpec | None, timeout: float) -> None:
    """An MLflow tracking server must answer before a job that logs to it starts (503 with the
    reason when it does not). Any HTTP answer below 500 counts: authentication is checked by
    the step, whose credentials may live in a Kubernetes Secret."""
    if spec is None or spec.mlflow is None or timeout <= 0:
        return
    uri = spec.mlflow.tracking_uri
    if not uri.startswith(("http://", "https://")):
        return
    verify: str | bool = os.environ.get("MLFLOW_TRACKING_SERVER_CERT_PATH") or (
        os.environ.get("MLFLOW_TRACKING_INSECURE_TLS", "").lower() != "true"
    )
    url = f"{uri.rstrip('/')}/health"
    import httpx  # at submit only; the job's processes import this module too

    try:
        answer = httpx.get(url, timeout=timeout, verify=verify, follow_redirects=False)
    except httpx.HTTPError as e:
        raise Unavailable(
            f"the MLflow tracking server {uri} does not answer ({type(e).__name__}: {e}); start "
            "it, or fix or drop logger_config.mlflow"
        ) from None
    if answer.status_code >= 500:
        raise Unavailable(
            f"the MLflow tracking server {uri} answers {answer.status_code} on {url}; check "
            "that it runs, or drop logger_config.mlflow"
        )
