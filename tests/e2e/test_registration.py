"""The provider is found by a real `llama stack run` in both declaration forms."""

from __future__ import annotations

import httpx
import pytest

from harness.server import Server

pytestmark = pytest.mark.e2e


def _post_training_providers(base_url: str) -> list[dict]:
    data = httpx.get(f"{base_url}/v1/providers", timeout=10).json()["data"]
    return [p for p in data if p["api"] == "post_training"]


def test_module_declaration(server):
    (p,) = _post_training_providers(server.base_url)
    assert p["provider_type"] == "remote::kfp"
    assert p["config"]["mode"] == "local"
    assert p["config"]["work_dir"] == str(server.work_dir)


def test_providers_d_declaration(tmp_path):
    srv = Server(tmp_path, config="run-external-dir.yaml").start()
    try:
        (p,) = _post_training_providers(srv.base_url)
        assert p["provider_type"] == "remote::kfp"
    finally:
        srv.stop()


def test_remote_mode_without_bucket_is_refused_at_start(tmp_path):
    srv = Server(tmp_path, env={"KFP_MODE": "remote"})
    with pytest.raises(RuntimeError, match=r"mode: remote needs remote\.s3_bucket"):
        srv.start()
    srv.stop()
