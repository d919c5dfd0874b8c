"""Kubeflow Model Registry, through the `model-registry` client inside the step: a registered
model (created if missing), a model version named by the job (refused if that name exists:
never an overwrite), and a model artifact whose URI is the checkpoint's `merged/` folder.

The version's metadata holds the training and evaluation metrics (scalars: the client takes
nothing else) and the job's facts; the artifact's model source fields name the pipeline run
(kind `kfp`, class `pipelinerun`), as the registry's UI shows lineage.

The bearer token is read here and handed to the client, never logged nor returned, from (first
found): the file `registry.token_file`, the environment variable `registry.token_env`
(remotely filled from the Secret `registry.token_secret`), then where the client itself looks
(the file named by KF_PIPELINES_SA_TOKEN_PATH, the pod's service-account token). A private CA:
the file named by MODEL_REGISTRY_CA_CERT.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from ...core.errors import InvalidRequest, Refused, Unavailable
from ...core.spec import JobSpec, RegistrySpec
from ...core.stage_results import Registration
from .entry import Entry

AUTHOR = "llama-stack-provider-kfp"
CA_ENV = "MODEL_REGISTRY_CA_CERT"
TOKEN_ENV = "MODEL_REGISTRY_TOKEN"  # registry.token_env's default (the Secret's key remotely)
_CLIENT_TOKEN_ENV = "KF_PIPELINES_SA_TOKEN_PATH"
_SA_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


def server_address(uri: str) -> tuple[str, int, bool]:
    """`https://host[:port]` as the client wants it: (scheme://host, port, is_secure)."""
    p = urlparse(uri)
    if p.scheme not in ("http", "https") or not p.hostname:
        raise InvalidRequest(f"registry.uri {uri!r}: use https://<host>[:<port>]")
    if p.path not in ("", "/"):
        raise InvalidRequest(
            f"registry.uri {uri!r}: the client serves /api/model_registry/v1 from the host's "
            "root; drop the path"
        )
    host = f"[{p.hostname}]" if ":" in p.hostname else p.hostname
    secure = p.scheme == "https"
    return f"{p.scheme}://{host}", p.port or (443 if secure else 80), secure


def bearer_token(reg: RegistrySpec) -> tuple[str | None, str]:
    """The token and where it came from (for messages: a name, never the value)."""
    if reg.token_file:
        try:
            return Path(reg.token_file).read_text().strip() or None, f"file {reg.token_file}"
        except OSError as e:
            raise InvalidRequest(
                f"registry.token_file {reg.token_file}: cannot read it in the step "
                f"({type(e).__name__}); mount the file or drop the setting"
            ) from None
    env = reg.token_env or TOKEN_ENV
    if os.environ.get(env, "").strip():
        return os.environ[env].strip(), f"environment variable {env}"
    path = os.environ.get(_CLIENT_TOKEN_ENV)
    for where, candidate in ((_CLIENT_TOKEN_ENV, path), ("service account", _SA_TOKEN)):
        if candidate and Path(candidate).is_file():
            with_value = Path(candidate).read_text().strip()
            if with_value:
                return with_value, f"{where} token file {candidate}"
    return None, "no token"


def register(spec: JobSpec, entry: Entry) -> Registration:
    reg = spec.registry
    assert reg is not None
    address, port, secure = server_address(reg.uri)
    token, token_from = bearer_token(reg)
    if secure and token is None:
        raise InvalidRequest(
            f"the Kubeflow Model Registry {reg.uri} needs a bearer token and the step has none: "
            f"set {reg.token_env or TOKEN_ENV} (remotely: registry.token_secret) or "
            "registry.token_file"
        )
    from model_registry import ModelRegistry

    name, version = reg.model_name, reg.version_name
    with _errors(reg.uri, token_from):
        client = ModelRegistry(
            address, port, author=reg.author or AUTHOR, is_secure=secure, user_token=token,
            custom_ca=os.environ.get(CA_ENV) or None, async_runner=_run,
        )  # fmt: skip
        if client.get_registered_model(name) and client.get_model_version(name, version):
            raise InvalidRequest(
                f"version {version!r} of {name!r} already exists in the Kubeflow Model Registry "
                f"{reg.uri}: a registration never overwrites one; name another version "
                "(registry.version_name) or another model (registry.model_name)"
            )
        source = _model_source(entry.facts)
        model = client.register_model(
            name, entry.weights, version=version, model_format_name=entry.format_name,
            model_format_version=entry.format_version, author=reg.author or AUTHOR,
            owner=reg.author or AUTHOR, version_description=reg.description,
            metadata=_metadata(entry), **source,
        )  # fmt: skip
        mv = client.get_model_version(name, version)
        artifact = client.get_model_artifact(name, version)
    return Registration(kind="kubeflow", registered=True, name=name, version=version,
                        uri=entry.weights, model_id=model.id,
                        version_id=mv.id if mv else None,
                        artifact_id=artifact.id if artifact else None,
                        checkpoint=entry.checkpoint)  # fmt: skip


def _run(coro: Any) -> Any:
    """Each client call on a loop of its own: no global asyncio patch (nest_asyncio), which
    the client applies when it is given no runner."""
    return asyncio.run(coro)


def _metadata(entry: Entry) -> dict[str, float | str]:
    return {**entry.facts, **entry.metrics,
            "weights": entry.weights}  # fmt: skip


def _model_source(facts: dict[str, str]) -> dict[str, str]:
    run = facts.get("pipeline_run")
    if not run:
        return {}
    out = {"model_source_kind": "kfp", "model_source_class": "pipelinerun",
           "model_source_id": run}  # fmt: skip
    if facts.get("pipeline_run_name"):
        out["model_source_name"] = facts["pipeline_run_name"]
    return out


class _errors:
    """The client's exceptions as errors by cause; never the token, only where it came from."""

    def __init__(self, uri: str, token_from: str) -> None:
        self.uri, self.token_from = uri, token_from

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: Any, e: BaseException | None, tb: Any) -> None:
        if e is None or isinstance(e, InvalidRequest | Refused | Unavailable):
            return
        import aiohttp
        from model_registry.exceptions import StoreError
        from mr_openapi import exceptions as api

        where = f"the Kubeflow Model Registry {self.uri}"
        if isinstance(e, api.UnauthorizedException | api.ForbiddenException):
            raise Refused(
                f"{where} refused the step's token ({e.status} {e.reason}; token from "
                f"{self.token_from}): check that it is current and may write to the registry"
            ) from None
        if isinstance(e, api.ServiceException):
            raise Unavailable(f"{where} does not answer ({e.status} {e.reason})") from None
        if isinstance(e, aiohttp.ClientError | OSError):
            raise Unavailable(f"{where} does not answer ({type(e).__name__}: {e})") from None
        if isinstance(e, api.ApiException):
            body = (e.body or "")[:300]
            raise Refused(
                f"{where} refused the registration ({e.status} {e.reason}: {body})"
            ) from None
        if isinstance(e, StoreError):
            raise Refused(f"{where}: {e}") from None
