"""The register stage inside its step (training.registry), against a real MLflow server
(`mlflow server`, SQLite store, on loopback) and a Kubeflow Model Registry STAND-IN
(tests/model_registry_stub.py: the real one is a Go service with a database, container images
only), with the real `mlflow` and `model-registry` clients. Checkpoints are local folders or
S3 prefixes on moto's S3-compatible server (the object-storage stand-in)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from fake_backend import spec as any_spec
from mlflow_server import MLflowServer, free_port
from model_registry_stub import BASE, ModelRegistryStub
from s3_server import s3_server

from llama_stack_provider_kfp.boundary import storage
from llama_stack_provider_kfp.boundary.files import write_json
from llama_stack_provider_kfp.boundary.job_outputs import JobOutputs
from llama_stack_provider_kfp.core.errors import InvalidRequest, Refused, Unavailable
from llama_stack_provider_kfp.core.locations import parse
from llama_stack_provider_kfp.core.outputs import TrainResult
from llama_stack_provider_kfp.core.spec import GateSpec, JobSpec, RegistrySpec
from llama_stack_provider_kfp.core.stage_results import Comparison, Evaluation
from llama_stack_provider_kfp.training.registry import register_job
from llama_stack_provider_kfp.training.steps import register_job_step

TOKEN = "kf-bearer-token-never-logged-xyz"
TRAIN = TrainResult(train_rows=8, validation_rows=2, samples_seen=8, global_step=4,
                    device="cpu", dtype="fp32", peak_memory_mb=10.0, train_seconds=1.0,
                    final_loss=1.25, final_metrics={"validation_loss": 1.5,
                                                    "perplexity": 4.48})  # fmt: skip


def _evaluation(base_loss: float, tuned_loss: float) -> Evaluation:
    return Evaluation(checkpoint="x", base_model="m", held_out_rows=2, results={
        "held_out": {"loss": Comparison.of(base_loss, tuned_loss)},
        "my_task": {"acc": Comparison.of(0.25, 0.5)},
    })  # fmt: skip


def _job(tmp: Path, job_uuid: str, registry: RegistrySpec) -> tuple[JobSpec, str]:
    """A finished job's output folder with one epoch checkpoint (merged weights + adapter)."""
    out = tmp / job_uuid
    epoch = out / "checkpoints" / "epoch_1"
    for sub, name in (("merged", "model.safetensors"), ("adapter", "adapter_model.safetensors")):
        (epoch / sub).mkdir(parents=True)
        (epoch / sub / name).write_bytes(f"{job_uuid}-{sub}".encode())
    (epoch / "merged" / "config.json").write_text("{}")
    return any_spec(job_uuid, out).model_copy(update={"registry": registry}), str(epoch)


# ---- MLflow ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    srv = MLflowServer(tmp_path_factory.mktemp("mlflow"))
    try:
        srv.wait_ready()
        yield srv.url
    finally:
        srv.stop()


def _mlflow(url: str, **kw) -> RegistrySpec:
    return RegistrySpec(kind="mlflow", uri=url, model_name="m-lora", version_name="unused", **kw)


def test_mlflow_registers_a_new_version_per_job_with_tags_alias_and_run(mlflow_url, tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_url)
    # Job 1 tracked its training on the same server (the train step's tracking.json).
    experiment = client.create_experiment("tracking-for-registry")
    run = client.create_run(experiment).info.run_id
    job, ckpt = _job(tmp_path, "job-1", _mlflow(mlflow_url, description="first"))
    write_json(
        Path(job.output_uri) / "tracking.json",
        {
            "mlflow": {
                "run_id": run,
                "tracking_uri": mlflow_url,
                "run_url": f"{mlflow_url}/#/runs/{run}",
            }
        },
    )
    first = register_job(job, ckpt, _evaluation(2.0, 1.5), TRAIN, {"pipeline_run": "run-abc"})

    assert (first.kind, first.registered, first.name, first.version) == ("mlflow", True,
                                                                         "m-lora", "1")  # fmt: skip
    v1 = client.get_model_version("m-lora", "1")
    # A local checkpoint is uploaded into the job's tracking run (the server refuses a local
    # path as a source), and the version is linked to that run.
    assert v1.run_id == run and v1.source == f"runs:/{run}/model" and first.run_id == run
    assert v1.description == "first"
    got = Path(client.download_artifacts(run, "model", str(tmp_path / "dl")))
    assert (got / "model.safetensors").read_bytes() == b"job-1-merged"
    tags = v1.tags
    assert tags["job_uuid"] == "job-1" and tags["base_model"] == "m"
    assert tags["algorithm"] == "lora" and tags["pipeline_run"] == "run-abc"
    assert tags["checkpoint"] == ckpt and tags["adapter"] == f"{ckpt}/adapter"
    assert tags["format"] == "safetensors/1"
    assert float(tags["train/final_loss"]) == 1.25 and float(tags["train/validation_loss"]) == 1.5
    assert float(tags["eval/held_out/loss/tuned"]) == 1.5
    assert float(tags["eval/held_out/loss/delta"]) == -0.5
    assert float(tags["eval/my_task/acc/base"]) == 0.25
    assert client.get_model_version_by_alias("m-lora", "candidate").version == "1"

    # Job 2: weights on S3, no tracking run. A new version (never an overwrite), its source
    # the S3 prefix as it is, and the alias moves to it.
    with s3_server():
        s3 = storage.client()
        s3.create_bucket(Bucket="models")
        prefix = parse("s3://models/jobs/job-2/checkpoints/epoch_1")
        storage.write_bytes(prefix.join("merged", "model.safetensors"), b"w", s3)
        job2, _ = _job(tmp_path, "job-2", _mlflow(mlflow_url))
        second = register_job(job2, str(prefix), None, TRAIN, {})
    assert second.version == "2" and second.uri == f"{prefix}/merged"
    v2 = client.get_model_version("m-lora", "2")
    assert v2.source == f"{prefix}/merged" and not v2.run_id
    assert "adapter" not in v2.tags  # none was written under the S3 checkpoint
    assert client.get_model_version_by_alias("m-lora", "candidate").version == "2"
    assert client.get_model_version("m-lora", "1").source == f"runs:/{run}/model"


def test_mlflow_gate_that_fails_registers_nothing_and_records_why(mlflow_url, tmp_path):
    from mlflow import MlflowClient

    gate = GateSpec(metric="held_out/loss", min_delta=0.1)
    job, ckpt = _job(tmp_path, "job-gated", _mlflow(mlflow_url, gate=gate).model_copy(
        update={"model_name": "m-gated"}))  # fmt: skip
    worse = register_job(job, ckpt, _evaluation(1.5, 1.45), TRAIN, {})
    assert not worse.registered and worse.version is None and worse.gate is not None
    assert (worse.gate.base, worse.gate.tuned, worse.gate.passed) == (1.5, 1.45, False)
    assert "does not beat" in worse.gate.reason
    assert MlflowClient(mlflow_url).search_registered_models("name = 'm-gated'") == []

    better = register_job(job, ckpt, _evaluation(1.5, 1.2), TRAIN, {})
    assert better.registered and better.version == "1" and better.gate and better.gate.passed

    with pytest.raises(InvalidRequest, match="held_out/loss"):
        register_job(job, ckpt, None, TRAIN, {})  # no evaluation: the gate cannot decide


def test_a_local_mlflow_store_takes_the_local_checkpoint_as_it_is(tmp_path):
    """A sqlite:/// store (the full mlflow package, no server between): no upload."""
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/registry.db"
    job, ckpt = _job(tmp_path, "job-db", _mlflow(uri))
    done = register_job(job, ckpt, None, TRAIN, {})
    assert (done.version, done.uri, done.url, done.run_id) == ("1", f"{ckpt}/merged", None, None)
    version = MlflowClient(uri, registry_uri=uri).get_model_version_by_alias("m-lora", "candidate")
    assert version.source == f"{ckpt}/merged" and version.tags["train/final_loss"] == "1.25"


def test_mlflow_that_does_not_answer_is_unavailable(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    url = f"http://127.0.0.1:{free_port()}"
    job, ckpt = _job(tmp_path, "job-x", _mlflow(url))
    with pytest.raises(Unavailable, match=f"the MLflow registry {url} does not answer"):
        register_job(job, ckpt, None, None, {})


# ---- Kubeflow Model Registry (stand-in) ------------------------------------------------


@pytest.fixture
def registry():
    with ModelRegistryStub(TOKEN) as stub:
        yield stub


def _kubeflow(url: str, version: str, **kw) -> RegistrySpec:
    return RegistrySpec(kind="kubeflow", uri=url, model_name="m-lora", version_name=version,
                        token_env="MODEL_REGISTRY_TOKEN", **kw)  # fmt: skip


def test_kubeflow_registers_model_version_and_artifact(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", TOKEN)
    job, ckpt = _job(
        tmp_path,
        "job-k1",
        _kubeflow(registry.url, "job-k1", author="team-a", description="tuned on support tickets"),
    )
    done = register_job(job, ckpt, _evaluation(2.0, 1.5), TRAIN,
                        {"pipeline_run": "run-123", "pipeline_run_name": "ft-run"})  # fmt: skip

    s = registry.state
    (rm,) = s.models.values()
    (mv,) = s.versions.values()
    (ma,) = s.artifacts.values()
    assert (rm.name, rm.owner) == ("m-lora", "team-a")
    assert (mv.name, mv.author, mv.description) == ("job-k1", "team-a", "tuned on support tickets")
    assert mv.registered_model_id == rm.id and s.version_artifacts[mv.id] == [ma.id]
    assert ma.uri == f"{ckpt}/merged"
    assert (ma.model_format_name, ma.model_format_version) == ("safetensors", "1")
    assert (ma.model_source_kind, ma.model_source_class) == ("kfp", "pipelinerun")
    assert (ma.model_source_id, ma.model_source_name) == ("run-123", "ft-run")
    meta = {k: v.actual_instance.to_dict() for k, v in (mv.custom_properties or {}).items()}
    assert meta["train/final_loss"] == {"double_value": 1.25, "metadataType": "MetadataDoubleValue"}
    assert meta["eval/held_out/loss/delta"]["double_value"] == -0.5
    assert meta["eval/my_task/acc/tuned"]["double_value"] == 0.5
    assert meta["job_uuid"]["string_value"] == "job-k1"
    assert meta["adapter"]["string_value"] == f"{ckpt}/adapter"
    assert meta["pipeline_run"]["string_value"] == "run-123"
    assert (done.registered, done.name, done.version) == (True, "m-lora", "job-k1")
    assert (done.model_id, done.version_id, done.artifact_id) == (rm.id, mv.id, ma.id)
    assert done.uri == ma.uri and done.checkpoint == ckpt
    assert TOKEN not in done.model_dump_json()
    # The client ran without patching asyncio for the whole process (nest_asyncio).
    assert asyncio.run.__module__ == "asyncio.runners"


def test_kubeflow_refuses_to_overwrite_a_version(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", TOKEN)
    job, ckpt = _job(tmp_path, "job-k2", _kubeflow(registry.url, "v1"))
    register_job(job, ckpt, None, TRAIN, {})
    with pytest.raises(InvalidRequest) as e:
        register_job(job, ckpt, None, TRAIN, {})
    assert "version 'v1' of 'm-lora' already exists" in str(e.value)
    assert "registry.version_name" in str(e.value)
    assert len(registry.state.versions) == 1 and len(registry.state.artifacts) == 1
    # Another version of the same model is a new version under it.
    other = job.model_copy(update={"registry": _kubeflow(registry.url, "v2")})
    assert register_job(other, ckpt, None, TRAIN, {}).version == "v2"
    assert len(registry.state.models) == 1 and len(registry.state.versions) == 2


def test_kubeflow_wrong_token_is_refused_without_showing_it(registry, tmp_path, monkeypatch,
                                                             capfd):  # fmt: skip
    wrong = "wrong-token-value-never-shown-123"
    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", wrong)
    job, ckpt = _job(tmp_path, "job-k3", _kubeflow(registry.url, "v1"))
    with pytest.raises(Refused) as e:
        register_job(job, ckpt, None, None, {})
    text = str(e.value)
    assert "refused the step's token (401" in text
    assert "environment variable MODEL_REGISTRY_TOKEN" in text
    out = capfd.readouterr()
    for secret in (wrong, TOKEN):
        assert secret not in text and secret not in out.out + out.err
    assert registry.state.models == {}


def test_kubeflow_token_from_a_file(registry, tmp_path, monkeypatch):
    monkeypatch.delenv("MODEL_REGISTRY_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")  # as `kubectl create secret --from-file` leaves it
    job, ckpt = _job(tmp_path, "job-k4", _kubeflow(registry.url, "v1", token_file=str(token_file)))
    assert register_job(job, ckpt, None, None, {}).registered
    missing = job.model_copy(update={"registry": _kubeflow(
        registry.url, "v2", token_file=str(tmp_path / "nope"))})  # fmt: skip
    with pytest.raises(InvalidRequest, match=r"registry\.token_file .*nope: cannot read it"):
        register_job(missing, ckpt, None, None, {})


def test_kubeflow_over_https_without_a_token_says_where_to_put_one(tmp_path, monkeypatch):
    monkeypatch.delenv("MODEL_REGISTRY_TOKEN", raising=False)
    monkeypatch.delenv("KF_PIPELINES_SA_TOKEN_PATH", raising=False)
    job, ckpt = _job(tmp_path, "job-k5", _kubeflow("https://mr.example", "v1"))
    with pytest.raises(InvalidRequest, match=r"needs a bearer token.*registry\.token_secret"):
        register_job(job, ckpt, None, None, {})


def test_the_register_step_writes_registry_json_and_its_stage(registry, tmp_path, monkeypatch):
    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", TOKEN)
    job, _ = _job(tmp_path, "job-k6", _kubeflow(registry.url, "job-k6"))
    write_json(Path(job.output_uri) / "result.json", TRAIN.model_dump(mode="json"))
    result = register_job_step(job.model_dump_json(), None, {"pipeline_run": "r-6"})
    out = JobOutputs(parse(job.output_uri))
    assert out.registration() == result and result.registered
    assert out.stage("register").status == "completed"
    meta = next(iter(registry.state.versions.values())).custom_properties
    assert meta["train/final_loss"].actual_instance.double_value == 1.25
    assert TOKEN not in (Path(job.output_uri) / "registry.json").read_text()


def test_the_stand_in_refuses_unknown_fields_and_wrong_tokens(registry):
    url = f"{registry.url}{BASE}/registered_models"
    auth = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(url, json={"name": "a"}, headers=auth).status_code == 201
    extra = httpx.post(url, json={"name": "b", "colour": "red"}, headers=auth)
    assert extra.status_code == 400 and "colour" in extra.json()["message"]
    bad_value = {"name": "c", "customProperties": {"k": {"double_value": 1.0,
                                                         "metadataType": "MetadataDoubleValue",
                                                         "unit": "s"}}}  # fmt: skip
    assert httpx.post(url, json=bad_value, headers=auth).status_code == 400
    assert httpx.post(url, json={"name": "a"}, headers=auth).status_code == 409
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": "Bearer nope"}).status_code == 401
    assert json.loads(httpx.get(url, headers=auth).text)["size"] == 1
