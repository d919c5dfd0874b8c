"""End to end: a fine-tune from a `messages`-shaped dataset that lives in S3, registered by its
s3:// URI; read in the prepare-data step (never through the server), sampled at submit."""

from __future__ import annotations

import json

import pytest
from conftest import data_s3_client

from .helpers import new_id, submit, training_config, wait_done

pytestmark = pytest.mark.e2e


def test_finetune_from_messages_in_s3(client, server, data_s3, tiny_models):
    rows = [{"messages": [{"role": "system", "content": "be brief"},
                          {"role": "user", "content": f"Greet {name}."},
                          {"role": "assistant", "content": f"Hello, {name}!"}]}
            for name in ("Ada", "Bo", "Cy", "Di", "Ed", "Flo")]  # fmt: skip
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    data_s3_client(data_s3).put_object(Bucket="user-data", Key="chat/train.jsonl", Body=body)
    dataset = new_id("s3-chat")
    client.beta.datasets.register(
        purpose="post-training/messages",
        source={"type": "uri", "uri": "s3://user-data/chat/train.jsonl"},
        dataset_id=dataset,
    )
    job = new_id("s3")
    # data_format says instruct: the rows are recognised by their `messages` column.
    tc = training_config(dataset, n_epochs=1, max_steps_per_epoch=1)
    submit(client, job, str(tiny_models / "hf"), dataset, training_config=tc)
    status = wait_done(client, job, timeout=300)
    assert status["status"] == "completed", status["resources_allocated"].get("error")
    assert len(status["checkpoints"]) == 1
    # prepare-data read every row from S3 (the job's input is the URI, nothing staged).
    record = json.loads((server.jobs_dir / job / "job.json").read_text())
    assert record["spec"]["data"]["uri"] == "s3://user-data/chat/train.jsonl"
    log = (server.jobs_dir / job).rglob("*.log")
    assert any("prepare-data: 6 training rows" in p.read_text(errors="replace") for p in log)
