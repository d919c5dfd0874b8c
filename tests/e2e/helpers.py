"""Request builders and waiting, shared by the end-to-end tests."""

from __future__ import annotations

import copy
import time
import uuid
from pathlib import Path
from typing import Any

from harness.demo_data import DEMO_LORA, training_config
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.client import job_status, register_jsonl

LORA = DEMO_LORA


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def register_rows(client, tmp: Path, rows: list[dict], name: str | None = None) -> str:
    dataset_id = name or new_id("ds")
    path = write_jsonl(rows, tmp / f"{dataset_id}.jsonl")
    register_jsonl(client, dataset_id, str(path))
    return dataset_id


def submit(client, job_uuid: str, model: str, dataset_id: str, **kw: Any) -> None:
    algo = kw.pop("algorithm_config", copy.deepcopy(LORA))
    tc = kw.pop("training_config", None) or training_config(dataset_id)
    client.alpha.post_training.supervised_fine_tune(
        job_uuid=job_uuid,
        model=model,
        algorithm_config=algo,
        training_config=tc,
        hyperparam_search_config=kw.pop("hyperparam_search_config", {}),
        logger_config=kw.pop("logger_config", {}),
        **kw,
    )


def wait_done(client, job_uuid: str, timeout: float = 600) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job_status(client, job_uuid)
        if status["status"] in ("completed", "failed", "cancelled"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_uuid} still {status['status']} after {timeout}s")
