"""Client-side helpers for the post-training job routes.

llama-stack-client 0.6.1's `job.status()`, `job.artifacts()` and `job.cancel()` call paths
the 0.6.1 server no longer serves (404), so these call the served routes directly through
the client's own HTTP layer (same auth, retries and base URL).
"""

from __future__ import annotations

from typing import Any

_JOBS = "/v1alpha/post-training/jobs"


def job_status(client: Any, job_uuid: str) -> dict[str, Any]:
    return client.get(f"{_JOBS}/{job_uuid}/status", cast_to=object)


def job_artifacts(client: Any, job_uuid: str) -> dict[str, Any]:
    return client.get(f"{_JOBS}/{job_uuid}/artifacts", cast_to=object)


def cancel_job(client: Any, job_uuid: str) -> None:
    client.post(f"{_JOBS}/{job_uuid}/cancel", cast_to=object)


def register_jsonl(client: Any, dataset_id: str, path: str) -> None:
    """Register a local JSONL file (read offline by the huggingface datasetio provider)."""
    client.beta.datasets.register(
        purpose="post-training/messages",
        source={"type": "uri", "uri": f"huggingface:///json?data_files={path}&split=train"},
        dataset_id=dataset_id,
    )
