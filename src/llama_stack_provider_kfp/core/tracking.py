"""Experiment tracking a request asks for (its `logger_config`): MLflow, TensorBoard, W&B.

Parsed and checked here at submit (boundary.tracking_checks: writable, reachable); the train
step (training.tracking) logs to what the TrackingSpec describes. A TrackingSpec never holds
a credential: those come from the environment of the step (locally: the server's), or
remotely from the Kubernetes Secret named by `remote.tracking_secret`, under the names in
CREDENTIAL_ENV.

    {"mlflow": {"tracking_uri", "experiment_name", "run_name", "tags"},
     "tensorboard": {"log_dir"},
     "wandb": {"project", "entity", "name", "mode", "group", "job_type", "notes", "tags", "dir"}}
"""

from __future__ import annotations

import re
from pathlib import PurePath
from typing import Any, Literal
from urllib.parse import parse_qsl, urlparse

from pydantic import BaseModel, ConfigDict, ValidationError

from .errors import InvalidRequest
from .locations import check_http_url

# What a tracking library reads its credentials from (the step's environment).
CREDENTIAL_ENV = (
    "MLFLOW_TRACKING_TOKEN",
    "MLFLOW_TRACKING_USERNAME",
    "MLFLOW_TRACKING_PASSWORD",
    "WANDB_API_KEY",
)
DEFAULT_EXPERIMENT = "llama-stack-post-training"
# Words of a key name that say it holds a credential (api_key, accessToken, MLFLOW_PASSWORD;
# not tokenizer or author).
_SECRET_WORD = re.compile(
    r"(?:^|_)(token|secret|password|passwd|api_?key|credentials?|auth|authorization|"
    r"private_key|access_key|secret_key)(?:$|_)"
)


def looks_secret(key: str) -> bool:
    words = re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", key).lower()
    return bool(_SECRET_WORD.search(re.sub(r"[^a-z0-9]+", "_", words)))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MLflowTracking(_Strict):
    tracking_uri: str
    experiment_name: str = DEFAULT_EXPERIMENT
    run_name: str | None = None  # None: the job_uuid
    tags: dict[str, str] = {}


class TensorBoardTracking(_Strict):
    log_dir: str | None = None  # None: tensorboard/ in the job's output


class WandbTracking(_Strict):
    project: str = DEFAULT_EXPERIMENT
    entity: str | None = None
    name: str | None = None  # None: the job_uuid
    mode: Literal["online", "offline", "disabled"] = "online"
    group: str | None = None
    job_type: str | None = None
    notes: str | None = None
    tags: list[str] = []
    dir: str | None = None  # None: the job's output (wandb/ below it)


class TrackingSpec(_Strict):
    mlflow: MLflowTracking | None = None
    tensorboard: TensorBoardTracking | None = None
    wandb: WandbTracking | None = None


_SECTIONS: dict[str, type[_Strict]] = {
    "mlflow": MLflowTracking,
    "tensorboard": TensorBoardTracking,
    "wandb": WandbTracking,
}
_USE_ENV = (
    "never send credentials in a request: set MLFLOW_TRACKING_TOKEN (or "
    "MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD) or WANDB_API_KEY in the server's "
    "environment, or in remote mode put them in the Kubernetes Secret named by "
    "remote.tracking_secret"
)


def _secret_keys(value: Any, path: str) -> list[str]:
    if isinstance(value, dict):
        found = [f"{path}.{k}" for k in value if looks_secret(str(k))]
        for k, v in value.items():
            found += _secret_keys(v, f"{path}.{k}")
        return found
    return []


def parse_logger_config(
    raw: dict[str, Any] | None, mode: Literal["local", "remote"]
) -> TrackingSpec | None:
    """The request's logger_config as a TrackingSpec (None: no tracking); any problem is a 400
    saying what to change. Local paths must be absolute, and are refused in remote mode (a
    remote step could not write them); boundary.tracking_checks checks they are writable."""
    if not raw:
        return None
    if not isinstance(raw, dict):
        raise InvalidRequest("logger_config must be an object with mlflow, tensorboard or wandb")
    secrets = _secret_keys(raw, "logger_config")
    if secrets:
        raise InvalidRequest(f"{', '.join(secrets)} looks like a credential; {_USE_ENV}")
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise InvalidRequest(
            f"logger_config: unknown tracker(s) {unknown}; use any of {list(_SECTIONS)}"
        )
    sections: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        if name not in raw:
            continue
        body = raw[name] if raw[name] is not None else {}
        if not isinstance(body, dict):
            raise InvalidRequest(f"logger_config.{name} must be an object (got {body!r})")
        extra = sorted(set(body) - set(cls.model_fields))
        if extra:
            raise InvalidRequest(
                f"logger_config.{name}: unknown key(s) {extra}; known: {list(cls.model_fields)}"
            )
        try:
            sections[name] = cls.model_validate(body)
        except ValidationError as e:
            problems = "; ".join(
                f"logger_config.{name}.{'.'.join(map(str, err['loc']))}: {err['msg']}"
                for err in e.errors()
            )
            raise InvalidRequest(problems) from None
    spec = TrackingSpec(**sections)
    _check_locations(spec, mode)
    return spec


def local_dirs(spec: TrackingSpec) -> list[tuple[str, str]]:
    """The local folders a TrackingSpec writes to, each with the request field naming it."""
    found = []
    if spec.mlflow is not None:
        path = mlflow_file_path(spec.mlflow.tracking_uri)
        if path is not None:
            found.append((path, "logger_config.mlflow.tracking_uri"))
    if spec.tensorboard is not None and spec.tensorboard.log_dir is not None:
        found.append((spec.tensorboard.log_dir, "logger_config.tensorboard.log_dir"))
    if spec.wandb is not None and spec.wandb.dir is not None:
        found.append((spec.wandb.dir, "logger_config.wandb.dir"))
    return found


def _check_locations(spec: TrackingSpec, mode: Literal["local", "remote"]) -> None:
    for path, where in local_dirs(spec):
        if mode == "remote":
            raise InvalidRequest(
                f"{where} {path!r} would be written inside the step's pod and lost: in remote "
                "mode use an MLflow tracking server, and omit TensorBoard's log_dir and W&B's "
                "dir (they default to the job's output prefix)"
            )
        if not PurePath(path).is_absolute():
            raise InvalidRequest(f"{where} {path!r} must be an absolute path")


def mlflow_file_path(uri: str) -> str | None:
    """The local store of a `file:` tracking URI; None for an http(s) server. A malformed or
    unsupported URI, or one that carries a credential, is a 400."""
    where = "logger_config.mlflow.tracking_uri"
    parsed = urlparse(uri)
    if parsed.scheme in ("http", "https"):
        if parsed.password is not None or any(looks_secret(k) for k, _ in parse_qsl(parsed.query)):
            raise InvalidRequest(f"{where} carries a credential; {_USE_ENV}")
        check_http_url(uri, where)
        return None
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost") or not parsed.path.startswith("/"):
            raise InvalidRequest(f"{where} {uri!r}: write a local store as file:///<absolute path>")
        return parsed.path
    raise InvalidRequest(
        f"{where} {uri!r}: use an MLflow tracking server (http:// or https://) or a local "
        "store (file:///<absolute path>)"
    )
