"""A train step on several nodes: it stages its inputs, creates a Kubeflow Trainer v2 TrainJob,
follows it, and deletes it when cancelled.

No Kubernetes can run here. The Kubernetes API is a stand-in on loopback (tests/kfp_api_stub.py:
discovery, pods, and trainer.kubeflow.org/v1alpha1 TrainJobs stored and answered as the API
server does, with status conditions as Trainer sets them); S3 is moto. What Trainer's torch
runtime would do with the TrainJob, the Complete test does by hand: it starts the TrainJob's
own command once per node, with the PET_* variables the runtime sets and the Secret's values
where the env references it, and the two nodes really train together (torchrun, gloo on
loopback). The step itself is the real code, in its own process, as KFP's launcher runs it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kfp_api_stub import KFPStub
from s3_server import s3_server
from test_remote_steps import _compile, _config

from harness.demo_data import instruct_rows
from harness.server import ROOT
from harness.tiny_families import make
from llama_stack_provider_kfp.boundary import storage
from llama_stack_provider_kfp.boundary.job_outputs import JobOutputs
from llama_stack_provider_kfp.boundary.model_source import inspect_s3_model
from llama_stack_provider_kfp.core.locations import parse
from llama_stack_provider_kfp.core.rows import to_messages
from llama_stack_provider_kfp.core.spec import (
    DataSpec,
    EngineChoice,
    JobSpec,
    LoraSpec,
    OptimSpec,
    TrainSpec,
)
from llama_stack_provider_kfp.kube.trainjob import JOB_LABEL, NODE_MAIN, PLAN_ENV, trainjob_name

NAMESPACE = "team-a"
STEP_POD = "llama-stack-sft-lora-train-pod"
# What the Secret s3-credentials holds in the cluster: the nodes get it by reference.
SECRET = {}  # filled from the S3 stand-in's credentials


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    # A tiny Qwen2 (Hugging Face tokenizer): what the huggingface engine trains on several ranks.
    model = make("qwen2", tmp_path_factory.mktemp("qwen2") / "qwen2")
    with s3_server() as env:
        storage.client().create_bucket(Bucket="kfp")
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "upload-model.py"), str(model),
             "s3://kfp/models/tiny.tar.gz"], check=True, capture_output=True,
        )  # fmt: skip
        SECRET.update(AWS_ACCESS_KEY_ID=env["AWS_ACCESS_KEY_ID"],
                      AWS_SECRET_ACCESS_KEY=env["AWS_SECRET_ACCESS_KEY"])  # fmt: skip
        yield env


@pytest.fixture
def stub():
    s = KFPStub()
    s.add_pod("run-1", STEP_POD, namespace=NAMESPACE, phase="Running")
    yield s
    s.stop()


def _kubeconfig(path: Path, server: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "ctx",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": "sa-token"}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u",
                                                 "namespace": NAMESPACE}}],
    }))  # fmt: skip
    return path


def _spec(job: str, model) -> JobSpec:
    return JobSpec(
        job_uuid=job,
        engine=EngineChoice(name="huggingface", reason="several nodes"),
        model=model,
        data=DataSpec(uri="unused", data_format="instruct"),
        train=TrainSpec(epochs=1, max_steps_per_epoch=3, gradient_accumulation_steps=1,
                        batch_size=4, shuffle=False, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=256, seed=1, device="cpu",
                        ranks=1, nodes=2),
        lora=LoraSpec(rank=4, alpha=8, attn_modules=["q_proj", "v_proj"], apply_to_mlp=False,
                      apply_to_output=False, target_modules=["q_proj", "v_proj"]),
        optim=OptimSpec(type="adamw", lr=2e-2, weight_decay=0.0, warmup_steps=0),
        output_format="huggingface",
        output_uri=f"s3://kfp/jobs/{job}/output",
    )  # fmt: skip


class Step:
    """The train step in its own process, with the env its pod gets from the compiled IR."""

    def __init__(self, job: str, s3: dict, stub: KFPStub, tmp: Path) -> None:
        cfg = _config(endpoint=s3["AWS_ENDPOINT_URL"], ca=None)
        cfg.resources.nodes, cfg.resources.gpu_count = 2, 0
        cfg.poll_seconds = 0.2
        pipeline, _ = _compile(cfg, tmp / "pipeline.yaml")
        container = pipeline["deploymentSpec"]["executors"]["exec-train"]["container"]
        pod_env = {e["name"]: e["value"] for e in container["env"]}
        scratch = tmp / "scratch"
        scratch.mkdir()
        self.spec = _spec(job, inspect_s3_model("tiny", parse("s3://kfp/models/tiny.tar.gz")))
        self.name = trainjob_name(job)
        train = tmp / "train.jsonl"
        train.write_text("".join(json.dumps({"messages": to_messages(r, "instruct")}) + "\n"
                                 for r in instruct_rows(16)))  # fmt: skip
        (tmp / "val.jsonl").write_text("")
        code = ("import sys; from llama_stack_provider_kfp.training.steps import train_step; "
                "train_step(*sys.argv[1:])")  # fmt: skip
        self.env = {
            "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/root"),
            "AWS_DEFAULT_REGION": "us-east-1", "HOSTNAME": STEP_POD,
            "KUBECONFIG": str(_kubeconfig(tmp / "kubeconfig", stub.url)),
            **pod_env, "TMPDIR": str(scratch),
            # the Secret mounted as env (kfp-kubernetes use_secret_as_env)
            "KFP_STEP_S3_ACCESS_KEY_ID": SECRET["AWS_ACCESS_KEY_ID"],
            "KFP_STEP_S3_SECRET_ACCESS_KEY": SECRET["AWS_SECRET_ACCESS_KEY"],
        }  # fmt: skip
        assert PLAN_ENV in self.env
        self.proc = subprocess.Popen(
            [sys.executable, "-c", code, self.spec.model_dump_json(), self.spec.model.path,
             self.spec.output_uri, str(train), str(tmp / "val.jsonl")],
            env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip

    def trainjob(self, stub: KFPStub, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while (NAMESPACE, self.name) not in stub.trainjobs:
            assert self.proc.poll() is None, self.proc.stdout.read() if self.proc.stdout else ""
            assert time.monotonic() < deadline, "the step created no TrainJob"
            time.sleep(0.1)
        return stub.trainjob(self.name)

    def wait(self, timeout: float = 120) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out

    def error(self) -> dict | None:
        return storage.read_json(parse(self.spec.output_uri).join("error.json"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _node_env(trainer: dict, base: dict, node_rank: int, port: int) -> dict:
    """The env Trainer's torch runtime gives node `node_rank`: the TrainJob's env (Secret
    references resolved as the kubelet does) plus the PET_* variables torchrun reads."""
    env = dict(base)
    for item in trainer["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            ref = item["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "s3-credentials" or ref.get("optional"), ref
            if ref["name"] == "s3-credentials":
                env[item["name"]] = SECRET[ref["key"]]
    return {**env, "PET_NNODES": str(trainer["numNodes"]), "PET_NODE_RANK": str(node_rank),
            "PET_NPROC_PER_NODE": str(trainer["numProcPerNode"]),
            "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}  # fmt: skip


def test_two_nodes_train_and_complete(s3, stub, tmp_path):
    step = Step("nodes-ok", s3, stub, tmp_path)
    obj = step.trainjob(stub)
    spec, meta = obj["spec"], obj["metadata"]

    # What the step created, as the API server stored it.
    assert spec["runtimeRef"] == {"name": "torch-distributed", "apiGroup": "trainer.kubeflow.org",
                                  "kind": "ClusterTrainingRuntime"}  # fmt: skip
    trainer = spec["trainer"]
    assert (trainer["numNodes"], trainer["numProcPerNode"]) == (2, 1)
    assert trainer["image"] == "registry.example/llama-stack-provider-kfp:0.1.0"
    assert trainer["resourcesPerNode"]["requests"] == {"cpu": "4", "memory": "24Gi"}
    job_uri = "s3://kfp/jobs/nodes-ok/nodes/job.json"
    assert trainer["command"] == ["python", "-m", NODE_MAIN, "--nproc-per-node", "1", job_uri]
    env = {e["name"]: e for e in trainer["env"]}
    assert env["KFP_STEP_S3_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "s3-credentials", "key": "AWS_SECRET_ACCESS_KEY"}  # fmt: skip
    assert env["KFP_STEP_S3_ENDPOINT_URL"]["value"] == s3["AWS_ENDPOINT_URL"]
    assert SECRET["AWS_SECRET_ACCESS_KEY"] not in json.dumps(obj)
    assert meta["labels"][JOB_LABEL] == "nodes-ok"
    pod_uid = next(p for p in stub._pods[NAMESPACE] if p.metadata.name == STEP_POD).metadata.uid
    (owner,) = meta["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Pod", STEP_POD, pod_uid)
    (patch,) = spec["runtimePatches"]
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    pod = node["template"]["spec"]["template"]
    assert pod["metadata"]["labels"][JOB_LABEL] == "nodes-ok"
    assert pod["spec"]["nodeSelector"] == {"pool": "gpu"}
    assert pod["spec"]["tolerations"][0]["key"] == "gpu"
    # The inputs are staged where the nodes can read them.
    keys = storage.list_keys(parse("s3://kfp/jobs/nodes-ok/nodes"))
    assert sorted(keys) == ["job.json", "train.jsonl"]

    # Trainer's part: start the TrainJob's command on each node, as the torch runtime would.
    port = _free_port()
    base = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "HOME": os.environ.get("HOME", "/root"),
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    nodes = []
    for rank in (0, 1):
        scratch = tmp_path / f"node{rank}"
        scratch.mkdir()
        node_env = {**_node_env(trainer, base, rank, port), "TMPDIR": str(scratch)}
        nodes.append(subprocess.Popen(trainer["command"], env=node_env, stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True))  # fmt: skip
    outs = [n.communicate(timeout=600)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], outs[0][-3000:] + outs[1][-3000:]
    assert "2 ranks" not in outs[0] and "train: 1 ranks" in outs[0]

    assert step.proc.poll() is None  # still following: no Complete condition yet
    stub.set_trainjob_condition(step.name, "Complete", "AllJobsCompleted",
                                "jobset completed successfully")  # fmt: skip
    code, out = step.wait()
    assert code == 0, out[-3000:]
    assert "TrainJob team-a/" in out and "train: step 3/3" in out
    outputs = JobOutputs(parse(step.spec.output_uri))
    assert [c.epoch for c in outputs.checkpoints()] == [1]
    result = outputs.result()
    assert result is not None and result.train_rows == 16
    # Rank 0 alone wrote the progress: every step once.
    assert [s for s, _ in outputs.progress()["loss_history"]] == [1, 2, 3]
    assert stub.deleted_trainjobs == []  # kept: it finished (its pods' logs stay readable)


def test_a_failed_trainjob_fails_the_step_with_the_reason(s3, stub, tmp_path):
    step = Step("nodes-fail", s3, stub, tmp_path)
    step.trainjob(stub)
    # The nodes' rank left its reason where a one-node step would (report_errors).
    node_error = {"step": "train", "message": "RuntimeError: rank 1: CUDA out of memory"}
    storage.write_json(parse(step.spec.output_uri).join("error.json"), node_error)
    stub.set_trainjob_condition(step.name, "Failed", "FailedJobs",
                                "jobset failed due to one or more job failures")  # fmt: skip
    code, _ = step.wait()
    assert code != 0
    message = step.error()["message"]
    assert message.startswith(f"TrainJobFailed: TrainJob team-a/{step.name} failed (FailedJobs)")
    assert "jobset failed due to one or more job failures" in message
    assert "on the nodes: RuntimeError: rank 1: CUDA out of memory" in message
    assert stub.deleted_trainjobs == []


def test_sigterm_deletes_the_trainjob(s3, stub, tmp_path):
    step = Step("nodes-cancel", s3, stub, tmp_path)
    step.trainjob(stub)
    step.proc.send_signal(signal.SIGTERM)  # KFP terminating the run stops the step's pod
    code, out = step.wait()
    assert code == 128 + signal.SIGTERM, out[-3000:]
    assert stub.deleted_trainjobs == [step.name]
    assert (NAMESPACE, step.name) not in stub.trainjobs
    assert step.error() is None  # cancelled, not failed
