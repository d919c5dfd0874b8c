"""Request builders and waiting, shared by the end-to-end tests."""

from __future__ import annotations

import copy
import time
import uuid
from pathlib import Path
from typing import Any

from harness.demo_data import DEMO_LORA
from llama_stack_provider_kfp.client import job_status, register_jsonl
from llama_stack_provider_kfp.core.data_uri import write_jsonl

LORA = DEMO_LORA


def training_config(dataset_id: str, **over: Any) -> dict[str, Any]:
    cfg = {
        "n_epochs": 2,
        "max_steps_per_epoch": 1000,
        "gradient_accumulation_steps": 1,
        "dtype": "fp32",
        "data_config": {
            "dataset_id": dataset_id,
            "batch_size": 4,
            "shuffle": True,
            "data_format": "instruct",
        },
        "optimizer_config": {
            "optimizer_type": "adamw",
            "lr": 2e-2,
            "weight_decay": 0.0,
            "num_warmup_steps": 2,
        },
    }
    for key, value in over.items():
        if key in ("data_config", "optimizer_config"):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


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
        hyperparam_search_config={},
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
