"""End to end: seed 000's flow on this machine. A fine-tune from a `messages`-shaped dataset
that lives in S3, registered by its s3:// URI (read in the prepare-data step, never through
the server; sampled at submit), evaluated on held-out rows and on a custom lm-eval task whose
files are in S3 too, and registered in a Kubeflow Model Registry (the stand-in of
tests/model_registry_stub.py: the real one is a Go service with a database)."""

from __future__ import annotations

import json

import pytest
from conftest import SERVER_SECRETS, data_s3_client
from eval_task import write_task
from model_registry_stub import ModelRegistryStub

from .helpers import new_id, submit, training_config, wait_done

pytestmark = pytest.mark.e2e


def test_seed_000_flow_from_s3_to_the_kubeflow_model_registry(client, server, data_s3,
                                                              tiny_models, tmp_path):  # fmt: skip
    names = ("Ada", "Bo", "Cy", "Di", "Ed", "Flo", "Gus", "Hal", "Ida", "Jo", "Kai", "Lu")
    rows = [{"messages": [{"role": "system", "content": "be brief"},
                          {"role": "user", "content": f"Greet {name}."},
                          {"role": "assistant", "content": f"Hello, {name}!"}]}
            for name in names]  # fmt: skip
    body = "".join(json.dumps(r) + "\n" for r in rows).encode()
    s3 = data_s3_client(data_s3)
    s3.put_object(Bucket="user-data", Key="chat/train.jsonl", Body=body)
    write_task(tmp_path)
    for name in ("tiny_mc.yaml", "tiny_mc.jsonl"):
        s3.put_object(Bucket="user-data", Key=f"evals/{name}", Body=(tmp_path / name).read_bytes())
    dataset = new_id("s3-chat")
    client.beta.datasets.register(
        purpose="post-training/messages",
        source={"type": "uri", "uri": "s3://user-data/chat/train.jsonl"},
        dataset_id=dataset,
    )
    job = new_id("s3")
    # data_format says instruct: the rows are recognised by their `messages` column.
    tc = training_config(dataset, n_epochs=1, max_steps_per_epoch=2)
    with ModelRegistryStub(SERVER_SECRETS["MODEL_REGISTRY_TOKEN"]) as registry:
        stages = {"kfp": {
            "validation_fraction": 0.25,
            "evaluation": {"enabled": True, "task_files": ["s3://user-data/evals/tiny_mc.yaml"],
                           "samples": 1, "max_new_tokens": 4},
            "registry": {"kind": "kubeflow", "uri": registry.url, "model_name": "greeter"},
        }}  # fmt: skip
        submit(client, job, str(tiny_models / "hf"), dataset, training_config=tc,
               hyperparam_search_config=stages)  # fmt: skip
        status = wait_done(client, job, timeout=300)
    res = status["resources_allocated"]
    assert status["status"] == "completed", res.get("error")
    assert [s["status"] for s in res["stages"]] == ["completed"] * 4
    assert len(status["checkpoints"]) == 1
    # prepare-data read every row from S3 (the job's input is the URI, nothing staged).
    record = json.loads((server.jobs_dir / job / "job.json").read_text())
    assert record["spec"]["data"]["uri"] == "s3://user-data/chat/train.jsonl"
    logs = "".join(p.read_text(errors="replace") for p in (server.jobs_dir / job).rglob("*.log"))
    assert "prepare-data: " in logs and f"{res['rows']['train']} training rows" in logs
    assert res["rows"]["train"] + res["rows"]["validation"] == len(names)
    assert set(res["evaluation"]["results"]) == {"held_out", "tiny_mc"}
    (version,) = registry.state.versions.values()
    (artifact,) = registry.state.artifacts.values()
    assert res["registry"]["registered"] and res["registry"]["version_id"] == version.id
    assert version.name == job  # a new version per job, named by it
    assert artifact.uri == f"{status['checkpoints'][0]['path']}/merged"
    # The token went by reference: in no record, status or log.
    token = SERVER_SECRETS["MODEL_REGISTRY_TOKEN"]
    assert token not in json.dumps(record) + json.dumps(status) + logs
