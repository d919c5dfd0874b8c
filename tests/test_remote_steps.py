"""Remote mode, layer by layer, without a cluster.

1. The compiled IR (pipeline + kfp-kubernetes platform spec) is validated with kfp's own
   loaders and protobuf schemas: resources, accelerator, placement, Secrets by reference, and
   no secret value anywhere in it.
2. Both steps run exactly as KFP's launcher runs them in a pod: the executor's `command` +
   `args` from the IR, with an executor input, through `python -m kfp.dsl.executor_main`.
   Data and a model tarball come from, and checkpoints and progress go to, an S3-compatible
   server on loopback (moto: the stand-in for MinIO/ODF/Ceph) through real boto3. The
   launcher's own artifact copying between steps is KFP's job: artifact URIs are local paths.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from eval_task import write_task
from fake_backend import spec as any_spec
from google.protobuf import json_format
from hf_cache import make_hf_cache
from kfp import compiler
from kfp.components import load_component_from_file
from kfp.kubernetes import kubernetes_executor_config_pb2
from kfp.pipeline_spec import pipeline_spec_pb2
from model_registry_stub import ModelRegistryStub
from s3_server import s3_server

from harness.demo_data import instruct_rows
from harness.server import ROOT
from llama_stack_provider_kfp.backends.kfp.placement import remote_placement
from llama_stack_provider_kfp.boundary import storage
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.boundary.job_outputs import JobOutputs
from llama_stack_provider_kfp.boundary.model_source import inspect_s3_model, pvc_model
from llama_stack_provider_kfp.config import RemoteConfig, RemoteResources
from llama_stack_provider_kfp.core.errors import InvalidRequest
from llama_stack_provider_kfp.core.locations import parse
from llama_stack_provider_kfp.core.spec import (
    DataSpec,
    EvaluationSpec,
    JobSpec,
    LoraSpec,
    OptimSpec,
    RegistrySpec,
    TrainSpec,
)
from llama_stack_provider_kfp.core.tracking import CREDENTIAL_ENV
from llama_stack_provider_kfp.kube.trainjob import PLAN_ENV, NodePlan
from llama_stack_provider_kfp.pipeline.definition import (
    ComponentBuild,
    build_pipeline,
    pipeline_arguments,
)
from llama_stack_provider_kfp.training.io import fetch_model

REGISTRY_TOKEN = "registry-token-xyz"
SECRET_VALUES = ("aws-secret-value-xyz", "hf_token_value_xyz", "bearer-token-xyz")


def _config(endpoint: str = "http://minio.example:9000", ca: str | None = "minio-ca/ca.pem"
            ) -> RemoteConfig:  # fmt: skip
    return RemoteConfig(
        url="https://kfp.example",
        namespace="team-a",
        image="registry.example/llama-stack-provider-kfp:0.1.0",
        image_pull_secrets=["pull-secret"],
        s3_bucket="kfp",
        s3_endpoint_url=endpoint,
        s3_credentials_secret="s3-credentials",
        s3_ca_bundle_configmap=ca,
        hf_token_secret="hf-token",
        tracking_secret="tracking-credentials",
        resources=RemoteResources(
            cpu_request="4", cpu_limit="8", memory_request="24Gi", memory_limit="32Gi",
            gpu_count=1, accelerator="amd.com/gpu", node_selector={"pool": "gpu"},
            tolerations=[{"key": "gpu", "operator": "Exists", "effect": "NoSchedule"}],
        ),
    )  # fmt: skip


def _compile(cfg: RemoteConfig, path: Path, spec: JobSpec | None = None) -> tuple[dict, dict]:
    build = ComponentBuild(base_image=cfg.image, install_kfp_package=False)
    job = spec or any_spec("compiled")  # the DAG is the same for every job
    compiler.Compiler().compile(build_pipeline(build, job, remote_placement(cfg)(spec)), str(path))
    pipeline, platform = yaml.safe_load_all(path.read_text())
    return pipeline, platform


def test_ir_for_several_gpus_requests_them_all_with_shared_memory(tmp_path):
    cfg = _config()
    cfg.resources.gpu_count = 4
    pipeline, platform = _compile(cfg, tmp_path / "pipeline.yaml")
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    train = pipeline["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert train["resources"]["accelerator"]["resourceCount"] == "4"
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    json_format.ParseDict(k8s, kubernetes_executor_config_pb2.KubernetesExecutorConfig())
    shm = [m for m in k8s["emptyDirMounts"] if m["mountPath"] == "/dev/shm"]
    assert shm == [{"volumeName": "shm", "mountPath": "/dev/shm", "medium": "Memory"}]
    prepare = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert "emptyDirMounts" not in prepare.get("exec-prepare-data", {})


def test_ir_is_valid_and_carries_placement_not_secrets(tmp_path, monkeypatch):
    for name, value in zip(
        ("AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "KFP_TOKEN"), SECRET_VALUES, strict=True
    ):
        monkeypatch.setenv(name, value)
    path = tmp_path / "pipeline.yaml"
    pipeline, platform = _compile(_config(), path)

    # kfp's own loaders and schemas accept it.
    assert load_component_from_file(str(path)).name == "llama-stack-sft-lora"
    json_format.ParseDict(pipeline, pipeline_spec_pb2.PipelineSpec())
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for cfg in executors.values():
        json_format.ParseDict(cfg, kubernetes_executor_config_pb2.KubernetesExecutorConfig())

    train = pipeline["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert train["image"] == "registry.example/llama-stack-provider-kfp:0.1.0"
    r = train["resources"]
    assert (r["resourceCpuRequest"], r["resourceCpuLimit"]) == ("4", "8")
    assert (r["resourceMemoryRequest"], r["resourceMemoryLimit"]) == ("24Gi", "32Gi")
    assert r["accelerator"]["resourceType"] == "amd.com/gpu"
    assert r["accelerator"]["resourceCount"] == "1"
    k8s = executors["exec-train"]
    assert {s["secretName"] for s in k8s["secretAsEnv"]} == {
        "s3-credentials",
        "hf-token",
        "tracking-credentials",
    }
    # Tracking credentials: the train step only, every key optional (a Secret holds the ones
    # its tracker needs), under the names the tracking libraries read.
    tracking = next(s for s in k8s["secretAsEnv"] if s["secretName"] == "tracking-credentials")
    assert tracking["optional"] is True
    assert {(m["secretKey"], m["envVar"]) for m in tracking["keyToEnv"]} == {
        (k, k) for k in CREDENTIAL_ENV
    }
    prep_secrets = {s["secretName"] for s in executors["exec-prepare-data"]["secretAsEnv"]}
    assert "tracking-credentials" not in prep_secrets
    # The job's S3 settings reach the step under provider-specific names: KFP's launcher, in
    # the same container, reads AWS_* for the pipeline root's artifacts and must not get them.
    s3_env = next(s for s in k8s["secretAsEnv"] if s["secretName"] == "s3-credentials")
    assert {m["envVar"] for m in s3_env["keyToEnv"]} == {
        "KFP_STEP_S3_ACCESS_KEY_ID",
        "KFP_STEP_S3_SECRET_ACCESS_KEY",
    }
    container_env = {e["name"]: e["value"] for e in train.get("env", [])}
    assert container_env["KFP_STEP_S3_ENDPOINT_URL"] == "http://minio.example:9000"
    assert not [n for n in container_env if n.startswith("AWS_")]
    # A private CA for the S3 endpoint: a ConfigMap mounted into the steps.
    (ca,) = k8s["configMapAsVolume"]
    assert (ca["configMapName"], ca["mountPath"]) == ("minio-ca", "/etc/llama-stack-kfp/s3-ca")
    assert container_env["KFP_STEP_S3_CA_BUNDLE"] == "/etc/llama-stack-kfp/s3-ca/ca.pem"
    # Weights and checkpoints on a sized scratch volume (temporary files through TMPDIR).
    (scratch,) = k8s["genericEphemeralVolume"]
    assert (scratch["mountPath"], scratch["size"]) == ("/scratch", "100Gi")
    assert container_env["TMPDIR"] == "/scratch"
    assert "genericEphemeralVolume" not in executors["exec-prepare-data"]
    assert k8s["nodeSelector"]["labels"] == {"pool": "gpu"}
    assert k8s["tolerations"][0]["key"] == "gpu"
    assert [s["secretName"] for s in k8s["imagePullSecret"]] == ["pull-secret"]
    prep = pipeline["deploymentSpec"]["executors"]["exec-prepare-data"]["container"]
    assert "accelerator" not in prep["resources"]

    text = path.read_text()
    for secret in SECRET_VALUES:
        assert secret not in text


def test_ir_for_several_nodes_hands_the_train_step_a_trainjob_plan(tmp_path, monkeypatch):
    """nodes > 1: the train step only stages and follows a TrainJob (no GPU, no /dev/shm of
    its own); the nodes' part of the config travels as one env variable of the step, with
    Secrets by reference (secretKeyRef), never their values."""
    for name, value in zip(
        ("AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "KFP_TOKEN"), SECRET_VALUES, strict=True
    ):
        monkeypatch.setenv(name, value)
    cfg = _config()
    cfg.resources.gpu_count, cfg.resources.nodes = 2, 3
    path = tmp_path / "pipeline.yaml"
    pipeline, platform = _compile(cfg, path)
    assert load_component_from_file(str(path)).name == "llama-stack-sft-lora"
    json_format.ParseDict(pipeline, pipeline_spec_pb2.PipelineSpec())
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for k8s_cfg in executors.values():
        json_format.ParseDict(k8s_cfg, kubernetes_executor_config_pb2.KubernetesExecutorConfig())
    train = pipeline["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert "accelerator" not in train["resources"]
    assert train["resources"]["resourceCpuRequest"] == "1"
    assert "emptyDirMounts" not in executors["exec-train"]
    env = {e["name"]: e["value"] for e in train["env"]}
    plan = NodePlan.model_validate_json(env[PLAN_ENV])
    assert (plan.nodes, plan.procs_per_node, plan.runtime) == (3, 2, "torch-distributed")
    assert plan.image == "registry.example/llama-stack-provider-kfp:0.1.0"
    assert plan.resources == {
        "requests": {"cpu": "4", "memory": "24Gi", "amd.com/gpu": "2"},
        "limits": {"cpu": "8", "memory": "32Gi", "amd.com/gpu": "2"},
    }
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in plan.env if "valueFrom" in e}
    assert refs["KFP_STEP_S3_SECRET_ACCESS_KEY"] == {
        "name": "s3-credentials", "key": "AWS_SECRET_ACCESS_KEY"}  # fmt: skip
    assert "HF_TOKEN" not in refs  # the step stages Hub weights; the nodes read S3
    assert all(refs[k]["optional"] for k in CREDENTIAL_ENV)
    assert {m["mountPath"] for m in plan.volume_mounts} == {
        "/etc/llama-stack-kfp/s3-ca", "/scratch", "/dev/shm"}  # fmt: skip
    assert (plan.node_selector, plan.image_pull_secrets) == ({"pool": "gpu"}, ["pull-secret"])
    text = path.read_text()
    for secret in SECRET_VALUES:
        assert secret not in text


def test_pvc_weights_are_mounted_into_the_train_step(tmp_path):
    spec = _job_spec(
        pvc_model("llama", parse("pvc://models-pvc/llama/3b")), "s3://kfp/jobs/p/output"
    )
    assert spec.model.arch is None  # only the mounted step can read it
    _, platform = _compile(_config(), tmp_path / "p.yaml", spec)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    (mount,) = executors["exec-train"]["pvcMount"]
    assert mount["mountPath"] == "/mnt/models/models-pvc"
    assert mount["pvcNameParameter"]["runtimeValue"]["constant"] == "models-pvc"
    assert "pvcMount" not in executors["exec-prepare-data"]
    assert fetch_model(spec.model.path, tmp_path) == Path("/mnt/models/models-pvc/llama/3b")
    with pytest.raises(InvalidRequest, match="pvc://<claim name>"):
        parse("pvc://Bad_Claim/../etc")


def test_pvc_datasets_are_mounted_into_prepare_data(tmp_path, monkeypatch):
    from llama_stack_provider_kfp.boundary.data_uri import SampleReader, iter_rows, sample_rows
    from llama_stack_provider_kfp.core import locations

    model = pvc_model("llama", parse("pvc://models-pvc/llama/3b"))
    base = _job_spec(model, "s3://kfp/jobs/p/output")
    data = base.data.model_copy(
        update={
            "uri": "pvc://data-pvc/sets/train.jsonl",
            "validation_uri": "pvc://data-pvc/sets/val.csv",
        }
    )
    spec = base.model_copy(update={"data": data})
    _, platform = _compile(_config(), tmp_path / "p.yaml", spec)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    (mount,) = executors["exec-prepare-data"]["pvcMount"]  # one claim, mounted once
    assert mount["mountPath"] == "/mnt/models/data-pvc"
    assert mount["pvcNameParameter"]["runtimeValue"]["constant"] == "data-pvc"
    # train reads prepare-data's artifacts (and mounts only the model's claim)
    assert [m["mountPath"] for m in executors["exec-train"]["pvcMount"]] == [
        "/mnt/models/models-pvc"
    ]
    # The server cannot read the claim: no sample at submit remotely, a 400 locally.
    assert sample_rows(spec.data.uri, 5, SampleReader(remote=True)) is None
    with pytest.raises(InvalidRequest, match="only remote jobs read"):
        sample_rows(spec.data.uri, 5, SampleReader(remote=False))
    # In the step, the file is read where the claim is mounted.
    monkeypatch.setattr(locations, "PVC_MOUNT_ROOT", str(tmp_path / "mnt"))
    rows = [
        {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}
    ]
    (tmp_path / "mnt" / "data-pvc" / "sets").mkdir(parents=True)
    write_jsonl(rows, tmp_path / "mnt" / "data-pvc" / "sets" / "train.jsonl")
    assert list(iter_rows(spec.data.uri)) == rows


def test_hub_model_read_at_submit_and_fetched_in_the_step(tiny_models, tmp_path):
    env = {**os.environ, **make_hf_cache(tmp_path / "hf", "acme/tiny-llama", tiny_models / "hf")}
    code = (
        "from llama_stack_provider_kfp.boundary.model_source import hub_model;"
        "from llama_stack_provider_kfp.training.io import fetch_model;"
        "from pathlib import Path;"
        "m = hub_model('tiny', 'acme/tiny-llama'); print(m.path, m.arch.embed_dim);"
        "d = fetch_model(m.path, Path('.')); print(sorted(p.name for p in d.iterdir()))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    first, files = out.stdout.splitlines()[-2:]
    assert first == "hf://acme/tiny-llama 64"
    assert "model.safetensors" in files and "config.json" in files
    missing = subprocess.run(
        [sys.executable, "-c",
         "from llama_stack_provider_kfp.boundary.model_source import hub_model;"
         "hub_model('x', 'acme/not-there')"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert missing.returncode != 0 and "cannot read config.json" in missing.stderr


@pytest.fixture(scope="module")
def s3():
    with s3_server() as env:
        storage.client().create_bucket(Bucket="kfp")
        yield env


def _job_spec(model, output_uri: str) -> JobSpec:
    return JobSpec(
        job_uuid="j1",
        model=model,
        data=DataSpec(uri="s3://kfp/jobs/j1/input/train.jsonl", data_format="instruct",
                      validation_fraction=0.2),
        train=TrainSpec(epochs=2, max_steps_per_epoch=None, gradient_accumulation_steps=1,
                        batch_size=4, shuffle=True, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=64, seed=1, device="cpu"),
        lora=LoraSpec(rank=4, alpha=8, attn_modules=["q_proj", "v_proj"], apply_to_mlp=True,
                      apply_to_output=False),
        optim=OptimSpec(type="adamw", lr=2e-2, weight_decay=0.0, warmup_steps=1),
        output_format=model.layout,
        output_uri=output_uri,
    )  # fmt: skip


def _artifact(name: str, schema: str, uri: Path) -> dict:
    return {"artifacts": [{"name": name, "type": {"schemaTitle": schema, "schemaVersion": "0.0.1"},
                           "uri": str(uri), "metadata": {}}]}  # fmt: skip


def _run_as_launcher(container: dict, executor_input: dict, env: dict, cwd: Path) -> None:
    args = [a.replace("{{$}}", json.dumps(executor_input)) for a in container["args"]]
    pod_env = {e["name"]: e["value"] for e in container.get("env", [])}
    # The code under test, wherever this test imports it from (a checkout on PYTHONPATH).
    here = {k: os.environ[k] for k in ("PYTHONPATH",) if k in os.environ}
    subprocess.run(
        container["command"] + args,
        check=True,
        cwd=cwd,
        env={
            **env,
            **pod_env,
            **here,
            "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        },
    )


def test_steps_run_as_in_a_pod_against_s3(s3, tiny_models, tmp_path):
    """Seed 000's flow: data from S3 -> train -> evaluate (held-out rows + a custom lm-eval
    task whose files are in S3) -> the Kubeflow Model Registry (the stand-in of
    tests/model_registry_stub.py), each step as KFP's launcher runs it in a pod."""
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "upload-model.py"), str(tiny_models / "hf"),
         "s3://kfp/models/tiny.tar.gz"], check=True, capture_output=True,
    )  # fmt: skip
    rows = write_jsonl(instruct_rows(30), tmp_path / "rows.jsonl")
    storage.upload_file(rows, parse("s3://kfp/jobs/j1/input/train.jsonl"))
    model = inspect_s3_model("tiny", parse("s3://kfp/models/tiny.tar.gz"))
    assert model.layout == "huggingface" and model.arch.embed_dim == 64
    write_task(tmp_path / "task")
    for name in ("tiny_mc.yaml", "tiny_mc.jsonl"):
        storage.upload_file(tmp_path / "task" / name, parse(f"s3://kfp/tasks/{name}"))
    registry = ModelRegistryStub(REGISTRY_TOKEN).__enter__()
    spec = _job_spec(model, "s3://kfp/jobs/j1/output").model_copy(update={
        "evaluation": EvaluationSpec(max_rows=4, task_files=["s3://kfp/tasks/tiny_mc.yaml"],
                                     samples=1, max_new_tokens=4),
        "registry": RegistrySpec(kind="kubeflow", uri=registry.url, model_name="tiny-lora",
                                 version_name="j1", token_env="MODEL_REGISTRY_TOKEN",
                                 token_secret="mr-token"),
    })  # fmt: skip
    params = pipeline_arguments(spec)
    pipeline, _ = _compile(_config(endpoint=s3["AWS_ENDPOINT_URL"], ca=None), tmp_path / "p.yaml",
                           spec)  # fmt: skip
    executors = pipeline["deploymentSpec"]["executors"]
    # The Secret mounts (s3-credentials) become these variables in the pod; no AWS_* at all.
    pod_secrets = {"KFP_STEP_S3_ACCESS_KEY_ID": s3["AWS_ACCESS_KEY_ID"],
                   "KFP_STEP_S3_SECRET_ACCESS_KEY": s3["AWS_SECRET_ACCESS_KEY"]}  # fmt: skip
    env = {"HOME": os.environ.get("HOME", "/root"), "AWS_DEFAULT_REGION": "us-east-1",
           **pod_secrets}  # fmt: skip

    # The pod's /scratch volume, here a folder: after each upload nothing of an epoch is left.
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    for executor in ("exec-train", "exec-evaluate"):  # both load models there
        for item in executors[executor]["container"]["env"]:
            if item["name"] == "TMPDIR":
                item["value"] = str(scratch)

    art = tmp_path / "artifacts"
    _run_as_launcher(
        executors["exec-prepare-data"]["container"],
        {
            "inputs": {"parameterValues": params},
            "outputs": {
                "artifacts": {
                    "train_data": _artifact("train_data", "system.Dataset", art / "train"),
                    "validation_data": _artifact("validation_data", "system.Dataset", art / "val"),
                },
                "outputFile": str(tmp_path / "prepare-output.json"),
            },
        },
        env,
        tmp_path,
    )  # fmt: skip
    _run_as_launcher(
        executors["exec-train"]["container"],
        {
            "inputs": {
                "parameterValues": params,
                "artifacts": {
                    "train_data": _artifact("train_data", "system.Dataset", art / "train"),
                    "validation_data": _artifact("validation_data", "system.Dataset", art / "val"),
                },
            },
            "outputs": {
                "artifacts": {
                    "metrics": _artifact("metrics", "system.Metrics", art / "metrics"),
                    "model": _artifact("model", "system.Model", art / "model"),
                },
                "outputFile": str(tmp_path / "train-output.json"),
            },
        },
        env,
        tmp_path,
    )

    # Results are where the provider reads them: in S3, under the job's output prefix.
    outputs = JobOutputs(parse(spec.output_uri))
    ckpts = outputs.checkpoints()
    assert [c.epoch for c in ckpts] == [1, 2]
    assert ckpts[-1].validation_loss is not None
    assert [p for p in scratch.rglob("epoch_*")] == []  # uploaded, then freed
    assert list(scratch.glob("job-output-*"))  # the step did write there
    keys = storage.list_keys(parse("s3://kfp"))
    for rel in ("merged/model.safetensors", "merged/config.json", "adapter/adapter_config.json",
                "adapter/adapter_model.safetensors", "metrics.json"):  # fmt: skip
        assert f"jobs/j1/output/checkpoints/epoch_2/{rel}" in keys
    progress = outputs.progress()
    assert progress["progress"]["step"] == progress["progress"]["total_steps"]
    # Each step uploaded its log beside them; the status's log_tail reads it back.
    assert {"jobs/j1/output/logs/prepare-data.log", "jobs/j1/output/logs/train.log"} <= set(keys)
    assert outputs.log_tail()
    result = storage.read_json(parse("s3://kfp/jobs/j1/output/result.json"))
    assert result["train_rows"] + result["validation_rows"] == 30
    assert result["final_loss"] < result["first_loss"]
    # The step also logs its final metrics as a KFP Metrics artifact (shown in the KFP UI).
    out = json.loads((tmp_path / "train-output.json").read_text())
    logged = out["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert logged["validation_loss"] == pytest.approx(ckpts[-1].validation_loss)
    # The Model artifact points at the last checkpoint: its weights are not copied.
    pointer = out["artifacts"]["model"]["artifacts"][0]["metadata"]
    assert pointer["location"] == "s3://kfp/jobs/j1/output/checkpoints/epoch_2"
    assert json.loads((art / "model").read_text())["location"] == pointer["location"]

    try:
        _evaluate_and_register(executors, params, env, art, tmp_path, registry)
    finally:
        registry.__exit__(None, None, None)


def _evaluate_and_register(executors, params, env, art, tmp_path, registry) -> None:
    model = _artifact("model", "system.Model", art / "model")
    _run_as_launcher(
        executors["exec-evaluate"]["container"],
        {"inputs": {"parameterValues": params, "artifacts": {
            "validation_data": _artifact("validation_data", "system.Dataset", art / "val"),
            "model": model}},
         "outputs": {"artifacts": {
             "metrics": _artifact("metrics", "system.Metrics", art / "eval-metrics"),
             "evaluation": _artifact("evaluation", "system.Artifact", art / "evaluation")},
             "outputFile": str(tmp_path / "evaluate-output.json")}},
        {**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}, tmp_path,
    )  # fmt: skip
    evaluation = storage.read_json(parse("s3://kfp/jobs/j1/output/evaluation.json"))
    assert evaluation["checkpoint"] == "s3://kfp/jobs/j1/output/checkpoints/epoch_2"
    assert set(evaluation["results"]) == {"held_out", "tiny_mc"}
    held = evaluation["results"]["held_out"]["loss"]
    assert held["tuned"] < held["base"]
    # The KFP Metrics artifact (the KFP UI's view) holds the same flat numbers.
    out = json.loads((tmp_path / "evaluate-output.json").read_text())
    logged = out["artifacts"]["metrics"]["artifacts"][0]["metadata"]
    assert logged["held_out/loss/tuned"] == pytest.approx(held["tuned"])

    _run_as_launcher(
        executors["exec-register"]["container"],
        {"inputs": {"parameterValues": params, "artifacts": {
            "evaluation": _artifact("evaluation", "system.Artifact", art / "evaluation"),
            "model": model}},
         "outputs": {"artifacts": {
             "registered": _artifact("registered", "system.Artifact", art / "registered")},
             "outputFile": str(tmp_path / "register-output.json")}},
        # The Secret registry.token_secret becomes this variable in the pod; KFP sets the run.
        {**env, "MODEL_REGISTRY_TOKEN": REGISTRY_TOKEN, "KFP_RUN_ID": "run-42"}, tmp_path,
    )  # fmt: skip
    (version,) = registry.state.versions.values()
    (artifact,) = registry.state.artifacts.values()
    assert version.name == "j1"
    assert artifact.uri == "s3://kfp/jobs/j1/output/checkpoints/epoch_2/merged"
    assert artifact.model_source_id == "run-42"
    done = storage.read_json(parse("s3://kfp/jobs/j1/output/registry.json"))
    assert done["registered"] and done["version_id"] == version.id
    stages = [storage.read_json(parse(f"s3://kfp/jobs/j1/output/stages/{n}.json"))["status"]
              for n in ("prepare-data", "train", "evaluate", "register")]  # fmt: skip
    assert stages == ["completed"] * 4
    for name in ("evaluate", "register"):  # each step's log beside the others
        assert storage.read_bytes(parse(f"s3://kfp/jobs/j1/output/logs/{name}.log"))
    keys = json.dumps(storage.list_keys(parse("s3://kfp")))
    assert REGISTRY_TOKEN not in keys + json.dumps(done)


def test_ir_gives_the_register_step_its_registry_token_by_reference(tmp_path, monkeypatch):
    """The Kubeflow Model Registry token: the Secret registry.token_secret (key
    MODEL_REGISTRY_TOKEN) into the variable the step reads; MLflow's credentials from
    remote.tracking_secret. Only the register step gets the registry's Secret, and no value
    is in the compiled pipeline."""
    monkeypatch.setenv("MODEL_REGISTRY_TOKEN", SECRET_VALUES[2])
    registry = RegistrySpec(kind="kubeflow", uri="https://mr.example", model_name="m-lora",
                            version_name="j", token_env="MR_TOKEN",
                            token_secret="mr-token")  # fmt: skip
    job = any_spec("compiled").model_copy(update={"registry": registry})
    path = tmp_path / "pipeline.yaml"
    pipeline, platform = _compile(_config(), path, job)
    json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    register = executors["exec-register"]
    json_format.ParseDict(register, kubernetes_executor_config_pb2.KubernetesExecutorConfig())
    secrets = {s["secretName"]: s for s in register["secretAsEnv"]}
    assert [(m["secretKey"], m["envVar"]) for m in secrets["mr-token"]["keyToEnv"]] == [
        ("MODEL_REGISTRY_TOKEN", "MR_TOKEN")
    ]
    tracking = secrets["tracking-credentials"]
    assert tracking["optional"] is True
    assert {m["envVar"] for m in tracking["keyToEnv"]} == {
        k for k in CREDENTIAL_ENV if k.startswith("MLFLOW_")
    }
    for step in ("exec-train", "exec-prepare-data"):
        assert "mr-token" not in {s["secretName"] for s in executors[step]["secretAsEnv"]}
    assert "accelerator" not in pipeline["deploymentSpec"]["executors"]["exec-register"][
        "container"]["resources"]  # fmt: skip
    assert SECRET_VALUES[2] not in path.read_text()


def test_ir_runs_the_evaluate_step_on_one_of_the_jobs_accelerators(tmp_path):
    """The evaluate step loads base and tuned model: the train step's CPU and memory, one of
    its accelerators (lm-eval's hf model runs on one device), its scratch volume, and the
    tracking Secret (it logs to the job's MLflow run); the weights' PVC when there is one."""
    cfg = _config()
    cfg.resources.gpu_count = 4
    job = any_spec("evaluated").model_copy(update={"evaluation": EvaluationSpec()})
    pipeline, platform = _compile(cfg, tmp_path / "pipeline.yaml", job)
    container = pipeline["deploymentSpec"]["executors"]["exec-evaluate"]["container"]
    res = container["resources"]
    assert res["accelerator"]["resourceCount"] == "1"
    assert res["accelerator"]["resourceType"] == "amd.com/gpu"
    assert (res["resourceCpuRequest"], res["resourceMemoryRequest"]) == ("4", "24Gi")
    assert any(e["name"] == "TMPDIR" for e in container["env"])  # the scratch volume
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-evaluate"]
    json_format.ParseDict(k8s, kubernetes_executor_config_pb2.KubernetesExecutorConfig())
    assert "tracking-credentials" in {s["secretName"] for s in k8s["secretAsEnv"]}
    assert "emptyDirMounts" not in k8s  # no /dev/shm: one rank
