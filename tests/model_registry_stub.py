"""A STAND-IN for the Kubeflow Model Registry's REST API, on loopback, for tests.

The real server is a Go service with a MySQL/PostgreSQL database that ships only as container
images, which cannot run on these machines. This stand-in serves the subset of
`/api/model_registry/v1` that the `model-registry` 0.3.18 client uses to register a model
(registered models, model versions, model artifacts, the lookups by name, a version's
artifacts), keeping state in memory.

Its shapes are not ours: every request body is parsed with the client's own generated OpenAPI
models (the `mr_openapi` package shipped inside `model-registry`) and refused with 400 when it
carries a field those models do not declare (the generated models would silently drop it) or
fails their validation; every answer is built from those models and serialized by them. As the
real deployment does (kube-rbac-proxy / an Istio policy in front of the server), a missing or
wrong bearer token gets 401; duplicate names get 409.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from mr_openapi import models as m
from pydantic import BaseModel, ValidationError

BASE = "/api/model_registry/v1"


def unknown_fields(cls: type[BaseModel], body: Any, path: str = "") -> list[str]:
    """Keys of `body` that the generated model `cls` does not declare (by their JSON names),
    custom properties included (each checked against its metadataType's model)."""
    if not isinstance(body, dict):
        return []
    known = {f.alias or n for n, f in cls.model_fields.items()}
    out = [f"{path}{k}" for k in body if k not in known]
    for key, value in (body.get("customProperties") or {}).items():
        kind = value.get("metadataType") if isinstance(value, dict) else None
        value_cls = getattr(m, str(kind), None)
        if value_cls is None:
            out.append(f"{path}customProperties.{key}.metadataType={kind!r}")
        else:
            out += unknown_fields(value_cls, value, f"{path}customProperties.{key}.")
    return out


class _Refusal(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


class RegistryState:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.next_id = 1
        self.models: dict[str, m.RegisteredModel] = {}
        self.versions: dict[str, m.ModelVersion] = {}
        self.artifacts: dict[str, m.ModelArtifact] = {}
        self.version_artifacts: dict[str, list[str]] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path), for tests to read

    def new_id(self) -> str:
        self.next_id += 1
        return str(self.next_id - 1)


def _parse(cls: type[BaseModel], body: Any) -> Any:
    extra = unknown_fields(cls, body)
    if extra:
        raise _Refusal(400, f"unknown field(s) for {cls.__name__}: {', '.join(extra)}")
    try:
        return cls.from_dict(body)  # type: ignore[attr-defined]
    except (ValidationError, ValueError) as e:
        raise _Refusal(400, f"invalid {cls.__name__}: {e}") from None


def _stamp() -> dict[str, str]:
    now = str(int(time.time() * 1000))
    return {"createTimeSinceEpoch": now, "lastUpdateTimeSinceEpoch": now}


def _page(cls: type[BaseModel], items: list[BaseModel], query: dict[str, str]) -> dict:
    size = int(query.get("pageSize") or 100)
    return cls.from_dict({  # type: ignore[attr-defined]
        "items": [i.to_dict() for i in items[:size]],  # type: ignore[attr-defined]
        "nextPageToken": "", "pageSize": size, "size": min(size, len(items)),
    }).to_dict()  # fmt: skip


class ModelRegistryStub:
    """The stand-in on a free loopback port; `token` is the bearer token it accepts."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.state = RegistryState()
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def _serve(self, method: str) -> None:
                url = urlparse(self.path)
                stub.state.requests.append((method, url.path))
                try:
                    if self.headers.get("Authorization") != f"Bearer {stub.token}":
                        raise _Refusal(401, "Unauthorized")
                    body = None
                    if method == "POST":
                        length = int(self.headers.get("Content-Length") or 0)
                        try:
                            body = json.loads(self.rfile.read(length) or b"null")
                        except json.JSONDecodeError:
                            raise _Refusal(400, "the body is not JSON") from None
                    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                    with stub.state.lock:
                        status, answer = stub.route(method, url.path, query, body)
                except _Refusal as r:
                    status = r.status
                    answer = m.Error(code=str(r.status), message=r.message).to_dict()
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> ModelRegistryStub:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ---- routes -------------------------------------------------------------------------

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        s = self.state
        if not path.startswith(BASE + "/"):
            raise _Refusal(404, f"no route {path}")
        parts = path[len(BASE) + 1 :].strip("/").split("/")
        match (method, parts):
            case ("GET", ["registered_models"]):
                return 200, _page(m.RegisteredModelList, list(s.models.values()), query)
            case ("POST", ["registered_models"]):
                new = _parse(m.RegisteredModelCreate, body)
                if any(x.name == new.name for x in s.models.values()):
                    raise _Refusal(409, f"registered model {new.name!r} already exists")
                rm = m.RegisteredModel.from_dict({**new.to_dict(), "id": s.new_id(), **_stamp()})
                s.models[rm.id] = rm
                return 201, rm.to_dict()
            case ("GET", ["registered_model"]):
                found = [x for x in s.models.values() if x.name == query.get("name")]
                return self._one(found, "registered model")
            case ("GET", ["registered_models", rid]):
                return self._one([s.models[rid]] if rid in s.models else [], "registered model")
            case ("GET", ["registered_models", rid, "versions"]):
                items = [v for v in s.versions.values() if v.registered_model_id == rid]
                return 200, _page(m.ModelVersionList, items, query)
            case ("POST", ["model_versions"]):
                new = _parse(m.ModelVersionCreate, body)
                if new.registered_model_id not in s.models:
                    raise _Refusal(404, f"no registered model {new.registered_model_id}")
                if any(v.registered_model_id == new.registered_model_id and v.name == new.name
                       for v in s.versions.values()):  # fmt: skip
                    raise _Refusal(409, f"model version {new.name!r} already exists")
                mv = m.ModelVersion.from_dict({**new.to_dict(), "id": s.new_id(), **_stamp()})
                s.versions[mv.id] = mv
                return 201, mv.to_dict()
            case ("GET", ["model_version"]):
                found = [v for v in s.versions.values() if v.name == query.get("name")
                         and v.registered_model_id == query.get("parentResourceId")]  # fmt: skip
                return self._one(found, "model version")
            case ("GET", ["model_versions", vid]):
                return self._one([s.versions[vid]] if vid in s.versions else [], "model version")
            case ("POST", ["model_versions", vid, "artifacts"]):
                if vid not in s.versions:
                    raise _Refusal(404, f"no model version {vid}")
                if not isinstance(body, dict) or body.get("artifactType") != "model-artifact":
                    raise _Refusal(400, "this stand-in stores model artifacts only")
                new = _parse(m.ModelArtifact, body)
                if new.id is not None:
                    raise _Refusal(400, "a new artifact has no id")
                ma = m.ModelArtifact.from_dict({**new.to_dict(), "id": s.new_id(), **_stamp()})
                s.artifacts[ma.id] = ma
                s.version_artifacts.setdefault(vid, []).append(ma.id)
                return 201, m.Artifact(ma).to_dict()
            case ("GET", ["model_versions", vid, "artifacts"]):
                items = [m.Artifact(s.artifacts[a]) for a in s.version_artifacts.get(vid, [])]
                return 200, _page(m.ArtifactList, items, query)
            case ("GET", ["model_artifact"]):
                ids = s.version_artifacts.get(query.get("parentResourceId") or "", [])
                found = [s.artifacts[a] for a in ids if s.artifacts[a].name == query.get("name")]
                return self._one(found, "model artifact")
        raise _Refusal(404, f"no route {method} {path}")

    @staticmethod
    def _one(found: list[Any], what: str) -> tuple[int, Any]:
        if not found:
            raise _Refusal(404, f"no such {what}")
        return 200, found[0].to_dict()
