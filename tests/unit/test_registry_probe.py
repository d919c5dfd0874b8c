"""The register stage's submit-time probe (boundary.registry_probe): a plain HTTP GET on loopback
servers that answer, refuse, fail or hang; skipped with timeout 0."""

from __future__ import annotations

import importlib.metadata
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from llama_stack_provider_kfp.boundary import registry_probe
from llama_stack_provider_kfp.boundary.registry_probe import check_registry_reachable
from llama_stack_provider_kfp.core.errors import InvalidRequest, Unavailable


@contextmanager
def _server(status: int, delay: float = 0.0) -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            seen.append(self.path)
            time.sleep(delay)
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    finally:
        srv.shutdown()
        srv.server_close()


def _nobody() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


@pytest.mark.parametrize(
    ("kind", "path"),
    [("mlflow", "/health"), ("kubeflow", "/api/model_registry/v1/registered_models?pageSize=1")],
)
@pytest.mark.parametrize("status", [200, 401])  # credentials are the step's: 401 is an answer
def test_a_registry_that_answers_passes(kind, path, status):
    with _server(status) as (url, seen):
        check_registry_reachable(kind, url + "/", 2.0)
    assert seen == [path]


@pytest.mark.parametrize("kind", ["mlflow", "kubeflow"])
def test_nobody_listening_is_503_naming_the_setting_that_skips_it(kind):
    url = _nobody()
    with pytest.raises(Unavailable) as e:
        check_registry_reachable(kind, url, 2.0)
    assert url in str(e.value) and "registry.probe_timeout_seconds: 0" in str(e.value)


def test_a_5xx_answer_is_503():
    with _server(502) as (url, _), pytest.raises(Unavailable, match="answers 502"):
        check_registry_reachable("kubeflow", url, 2.0)


def test_a_registry_slower_than_the_timeout_is_503():
    with _server(200, delay=3.0) as (url, _), pytest.raises(Unavailable) as e:
        check_registry_reachable("mlflow", url, 0.5)
    assert "within 0.5 s (ReadTimeout" in str(e.value)


def test_timeout_0_skips_the_network_but_not_the_uri_checks():
    check_registry_reachable("kubeflow", _nobody(), 0)
    check_registry_reachable("none", None, 3.0)
    with pytest.raises(InvalidRequest, match="use https://"):
        check_registry_reachable("kubeflow", "grpc://mr.example:9090", 0)


@pytest.mark.parametrize(
    ("kind", "uri", "says"),
    [
        ("mlflow", None, "registry.uri (or the request's logger_config.mlflow.tracking_uri)"),
        ("kubeflow", "", "needs registry.uri"),
        ("kubeflow", "https://user:pw@mr.example", "carries a password"),
        ("mlflow", "http://:5000", "is not a URL"),
        ("mlflow", "databricks", "use an MLflow tracking server"),
    ],
)
def test_uris_that_cannot_work_are_400(kind, uri, says):
    with pytest.raises(InvalidRequest) as e:
        check_registry_reachable(kind, uri, 1.0)
    assert says in str(e.value)


def test_a_database_store_needs_the_full_mlflow(monkeypatch, tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    check_registry_reachable("mlflow", uri, 1.0)  # the test extra installs the full mlflow
    check_registry_reachable("mlflow", f"file://{tmp_path}/mlruns", 1.0)  # skinny has it

    real = importlib.metadata.distribution

    def without_full_mlflow(name: str):  # as where only the `tracking` extra is installed
        if name == "mlflow":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(registry_probe.importlib.metadata, "distribution", without_full_mlflow)
    with pytest.raises(InvalidRequest) as e:
        check_registry_reachable("mlflow", uri, 1.0)
    assert "full `mlflow` package" in str(e.value) and "mlflow-skinny" in str(e.value)
