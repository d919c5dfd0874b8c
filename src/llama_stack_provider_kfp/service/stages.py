"""The stages a request asks for -> the JobSpec's evaluation and registry (pure checks).

Which stages run: the per-request config's `stages` when set, else train plus evaluate when
`evaluation.enabled` and register when `registry.kind` is set. A request naming only
evaluate/register runs them on the finished checkpoint its checkpoint_dir names.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from ..config import KFPPostTrainingConfig
from ..core.errors import InvalidRequest
from ..core.spec import EvaluationSpec, GateSpec, RegistrySpec
from ..core.tracking import TrackingSpec

_EXT = 'hyperparam_search_config["kfp"]'


def wanted(config: KFPPostTrainingConfig) -> list[str]:
    """The stages after prepare-data this job runs, in order."""
    if config.stages is not None:
        named = set(config.stages)
        if not named:
            raise InvalidRequest(f"{_EXT}.stages is empty: name train, evaluate and/or register")
        return [s for s in ("train", "evaluate", "register") if s in named]
    out = ["train"]
    if config.evaluation.enabled:
        out.append("evaluate")
    if config.registry.kind != "none":
        out.append("register")
    return out


def evaluation_spec(config: KFPPostTrainingConfig, stages: list[str]) -> EvaluationSpec | None:
    if "evaluate" not in stages:
        return None
    return EvaluationSpec(**config.evaluation.model_dump(exclude={"enabled"}))


def default_model_name(base_model: str, algorithm: str) -> str:
    """<base model's last path part>-<algorithm>, in the characters registries accept."""
    base = PurePosixPath(base_model.rstrip("/")).name or "model"
    return re.sub(r"[^A-Za-z0-9._-]+", "-", f"{base}-{algorithm}").strip("-")


def registry_spec(
    config: KFPPostTrainingConfig,
    stages: list[str],
    job_uuid: str,
    base_model: str,
    algorithm: str,
    tracking: TrackingSpec | None,
) -> RegistrySpec | None:
    if "register" not in stages:
        return None
    rc = config.registry
    if rc.kind == "none":
        raise InvalidRequest(
            "the register stage is asked for but registry.kind is none: set registry.kind to "
            f"mlflow or kubeflow (provider config, or {_EXT}.registry.kind)"
        )
    uri = rc.uri
    if not uri and rc.kind == "mlflow" and tracking is not None and tracking.mlflow is not None:
        uri = tracking.mlflow.tracking_uri
    if not uri:
        where = "the Kubeflow Model Registry's address (https://host:port)"
        if rc.kind == "mlflow":
            where = "an MLflow tracking server (http(s)://...), or track the job there"
        raise InvalidRequest(f"registry.uri is not set: name {where} (provider config, or "
                             f"{_EXT}.registry.uri)")  # fmt: skip
    gate = GateSpec(**rc.gate.model_dump()) if rc.gate is not None else None
    if gate is not None and "evaluate" not in stages:
        raise InvalidRequest(
            f"registry.gate compares the tuned model with the base on {gate.metric!r}, which "
            "the evaluate stage measures: enable evaluation (evaluation.enabled: true) or drop "
            "the gate"
        )
    return RegistrySpec(
        kind=rc.kind,
        uri=uri,
        model_name=rc.model_name or default_model_name(base_model, algorithm),
        version_name=job_uuid,
        alias=rc.alias,
        gate=gate,
        token_env=rc.token_env if rc.kind == "kubeflow" else None,
        token_file=str(rc.token_file) if rc.kind == "kubeflow" and rc.token_file else None,
        token_secret=rc.token_secret if rc.kind == "kubeflow" else None,
        author=rc.author,
        description=f"{algorithm} fine-tune of {base_model} (llama-stack job {job_uuid})",
    )
