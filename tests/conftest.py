"""Shared fixtures: tiny models made on the fly and a real `llama stack run` server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.server import ROOT, Server
from llama_stack_provider_kfp.boundary.pause_points import Pauses


def pytest_collection_modifyitems(config, items) -> None:
    """`gpu` tests run only where CUDA is; elsewhere they are skipped, saying why."""
    gpu = [item for item in items if "gpu" in item.keywords]
    if not gpu:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA: torch.cuda.is_available() is False here")
    for item in gpu:
        item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """<dir>/hf and <dir>/meta: the same tiny random Llama-3.2-style model in both layouts."""
    out = tmp_path_factory.mktemp("tiny")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make-tiny-model.py"), "--out", str(out)],
        check=True,
        capture_output=True,
    )
    return out


# Credentials in the shared server's environment, as a user's would be: tests check that
# they never reach a log, a job record, a pipeline output or a status.
SERVER_SECRETS = {
    "HF_TOKEN": "hf_local_secret_never_logged",
    "KFP_TOKEN": "kfp-local-secret-xyz",
    # the register step's Kubeflow Model Registry token (registry.token_env)
    "MODEL_REGISTRY_TOKEN": "registry-local-secret-xyz",
}


@pytest.fixture(scope="session")
def hf_home(tmp_path_factory) -> Path:
    """The shared server's Hugging Face cache (offline); tests put tiny models in it under the
    repo ids users send (tests/hf_cache.py)."""
    return tmp_path_factory.mktemp("hf-home")


@pytest.fixture(scope="session")
def pauses(tmp_path_factory) -> Pauses:
    """Test-only pause points (boundary.pause_points), armed per job: every server the tests start
    gets `pauses.env`, and a job stops only where its test armed a point."""
    return Pauses(tmp_path_factory.mktemp("pauses"))


@pytest.fixture(scope="session")
def data_s3():
    """Users' datasets in S3 (moto on loopback, bucket `user-data`): the shared server reads
    them with the standard AWS environment, as a user's server would. Not exported to this
    process (tests upload with `data_s3_client`)."""
    from s3_server import s3_server

    with s3_server(export=False) as env:
        data_s3_client(env).create_bucket(Bucket="user-data")
        yield env


def data_s3_client(env: dict[str, str]):
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])  # fmt: skip


@pytest.fixture(scope="session")
def server(tmp_path_factory, hf_home, pauses, data_s3):
    # A tracking server that does not answer is refused within half a second.
    env = {**SERVER_SECRETS, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1",
           "KFP_TRACKING_PROBE_TIMEOUT": "0.5", **pauses.env, **data_s3}  # fmt: skip
    srv = Server(tmp_path_factory.mktemp("server"), env=env).start()
    yield srv
    srv.cleanup()


@pytest.fixture(scope="session")
def client(server):
    from llama_stack_client import LlamaStackClient

    return LlamaStackClient(base_url=server.base_url, max_retries=0, timeout=120)
