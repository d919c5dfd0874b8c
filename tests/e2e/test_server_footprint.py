"""The server process never loads torch: a submit, a status call and a finished job's
checkpoints are answered from small files (torch lives in the pipeline's steps only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.demo_data import instruct_rows
from llama_stack_provider_kfp.client import job_artifacts, job_status

from .helpers import new_id, register_rows, submit, training_config, wait_done

pytestmark = pytest.mark.e2e


def _mapped_libraries(pid: int) -> str:
    return Path(f"/proc/{pid}/maps").read_text()


def test_server_has_not_loaded_libtorch(client, server, tiny_models, tmp_path):
    ds = register_rows(client, tmp_path, instruct_rows(8))
    job = new_id("footprint")
    submit(client, job, str(tiny_models / "hf"), ds,
           training_config=training_config(ds, n_epochs=1))  # fmt: skip
    job_status(client, job)
    maps = _mapped_libraries(server.proc.pid)
    assert "pydantic_core" in maps  # the server's own libraries are listed: the check reads
    assert "libtorch" not in maps
    assert wait_done(client, job)["status"] == "completed"
    assert job_artifacts(client, job)["checkpoints"]
    assert "libtorch" not in _mapped_libraries(server.proc.pid)
