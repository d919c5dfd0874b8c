"""Remote mode through a real llama-stack server and the real kfp.Client.

No Kubernetes or KFP server can run on these machines, so two stand-ins are used, both on
loopback: `kfp_api_stub.KFPStub` for the KFP v2beta1 API, and moto's S3-compatible server for
object storage. The provider, kfp.Client, boto3 and the compiled pipeline are real. The steps
themselves are exercised in tests/test_remote_steps.py.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from hf_cache import make_hf_cache
from kfp_api_stub import KFPStub
from llama_stack_client import APIStatusError
from s3_server import iam_enforced, iam_user, s3_server

from harness.demo_data import instruct_rows
from harness.server import ROOT, Server
from llama_stack_provider_kfp.boundary import storage
from llama_stack_provider_kfp.client import cancel_job, job_status
from llama_stack_provider_kfp.core.locations import parse

from .helpers import new_id, register_rows, submit

pytestmark = pytest.mark.e2e

TOKEN = "kfp-bearer-token-123"
HF_TOKEN = "hf_secret_value_must_not_leak"
MODEL = "s3://models/tiny-hf.tar.gz"


@pytest.fixture(scope="module")
def s3(tiny_models):
    with s3_server() as env:
        s3c = storage.client()
        s3c.create_bucket(Bucket="models")
        s3c.create_bucket(Bucket="kfp")
        subprocess.run(
            [sys.executable, str(ROOT / "scripts" / "upload-model.py"), str(tiny_models / "hf"),
             MODEL], check=True, capture_output=True,
        )  # fmt: skip
        yield env


@pytest.fixture
def stub():
    s = KFPStub()
    yield s
    s.stop()


@pytest.fixture
def remote_env(s3, stub, tmp_path, monkeypatch, tiny_models) -> dict[str, str]:
    monkeypatch.setenv("HF_TOKEN", HF_TOKEN)
    return {
        # A Hugging Face cache holding the tiny model as acme/tiny-llama (no Hub here).
        **make_hf_cache(tmp_path / "hf", "acme/tiny-llama", tiny_models / "hf"),
        "KFP_MODE": "remote",
        "KFP_URL": stub.url,
        "KFP_NAMESPACE": "team-a",
        "KFP_TOKEN": TOKEN,
        "KFP_S3_BUCKET": "kfp",
        "KFP_S3_ENDPOINT_URL": s3["AWS_ENDPOINT_URL"],
        "KFP_S3_SECRET": "s3-credentials",
        "KFP_HF_TOKEN_SECRET": "hf-token",
        "KFP_GPUS": "1",
        "KFP_REQUEST_TIMEOUT": "0.5",  # sub-second: the blackholed-route test waits on it
        "KFP_PENDING_TIMEOUT": "60",
        "KFP_MAX_CONCURRENT_JOBS": "8",
        # Each status call asks the stand-in: these tests set a run's state and read it back
        # at once (the shared observation is tested in tests/test_backend_contract.py).
        "KFP_OBSERVATION_MAX_AGE": "0",
        # The Kubernetes API (the same stand-in) for the runs' pods and events.
        "KUBECONFIG": str(_kubeconfig(tmp_path / "kubeconfig", stub.url, "team-a")),
    }


@pytest.fixture
def remote(remote_env, tmp_path):
    server = Server(tmp_path, env=remote_env).start()
    yield server
    server.cleanup()


def _kubeconfig(path: Path, server: str, namespace: str, token: str = "sha256~kube-token"):
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "ctx",
        "clusters": [{"name": "c", "cluster": {"server": server}}],
        "users": [{"name": "u", "user": {"token": token}}],
        "contexts": [{"name": "ctx", "context": {"cluster": "c", "user": "u",
                                                 "namespace": namespace}}],
    }))  # fmt: skip
    return path


@contextlib.contextmanager
def _own_server(tmp_path: Path, env: dict[str, str]) -> Iterator:
    """A server of this test's own (its env differs from the module's), cleaned up after."""
    server = Server(tmp_path / "srv", env=env)
    server.root.mkdir()
    server.start()
    try:
        yield server.client()
    finally:
        server.cleanup()


def _progress_to_s3(job: str, step: int) -> None:
    out = f"s3://kfp/llama-stack-post-training/jobs/{job}/output"
    storage.write_json(
        parse(f"{out}/progress.json"), {"progress": {"step": step, "total_steps": 10}}
    )


def test_submit_poll_restart_complete(remote, stub, s3, tmp_path):
    client = remote.client()
    ds = register_rows(client, tmp_path, instruct_rows(20))
    job = new_id("remote")
    submit(client, job, "tiny", ds, checkpoint_dir=MODEL)

    run = stub.run_for(job)
    # The JobSpec is the run's only parameter: every location is in it.
    assert set(run["runtime_config"]["parameters"]) == {"job_spec"}
    params = json.loads(run["runtime_config"]["parameters"]["job_spec"])
    assert params["model"]["path"] == MODEL
    assert params["output_uri"] == f"s3://kfp/llama-stack-post-training/jobs/{job}/output"
    # The dataset was staged to the job's prefix.
    staged = params["data"]["uri"]
    assert staged == f"s3://kfp/llama-stack-post-training/jobs/{job}/input/train.jsonl"
    # The training rows only: no validation file (none was asked for).
    assert storage.list_keys(parse(staged.rsplit("/", 1)[0])) == ["train.jsonl"]
    body = storage.client().get_object(Bucket="kfp", Key=staged[len("s3://kfp/") :])["Body"]
    assert len(body.read().splitlines()) == 20
    # The pipeline is the compiled IR with the provider's placement.
    spec = run["pipeline_spec"]
    assert set(spec["pipeline_spec"]["root"]["dag"]["tasks"]) == {"prepare-data", "train"}
    k8s = spec["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {s["secretName"] for s in k8s["exec-train"]["secretAsEnv"]} == {
        "s3-credentials",
        "hf-token",
    }
    assert run.get("service_account") in (None, "")
    # Secrets travel by reference only.
    headers = [r["headers"].get("authorization") for r in stub.requests]
    assert f"Bearer {TOKEN}" in headers
    st = job_status(client, job)
    everything = json.dumps([r["body"] for r in stub.requests]) + json.dumps(st)
    everything += (remote.jobs_dir / job / "job.json").read_text()
    everything += remote.log.read_text()  # the server's own log
    assert "supervised-fine-tune" in everything  # the log was read
    for secret in (TOKEN, HF_TOKEN, s3["AWS_SECRET_ACCESS_KEY"]):
        assert secret not in everything

    assert st["status"] == "scheduled"
    assert st["resources_allocated"]["runner"] == {"run_id": run["run_id"], "state": "PENDING"}

    stub.set_state(run["run_id"], "RUNNING")
    _progress_to_s3(job, 4)
    st = job_status(client, job)
    assert st["status"] == "in_progress"
    assert st["resources_allocated"]["progress"]["step"] == 4

    # Re-attach after a server crash: same run, no second submission.
    remote.kill9()
    remote.restart()
    client = remote.client()
    assert job_status(client, job)["status"] == "in_progress"
    assert len([r for r in stub.runs.values() if r["display_name"] == job]) == 1

    out = f"s3://kfp/llama-stack-post-training/jobs/{job}/output"
    storage.write_json(parse(f"{out}/checkpoints/epoch_1/merged/config.json"), {})
    storage.write_json(
        parse(f"{out}/checkpoints/epoch_1/metrics.json"),
        {"epoch": 1, "created_at": "2026-11-24T00:09:00+00:00", "train_loss": 3.0,
         "validation_loss": 2.5, "perplexity": 12.18},
    )  # fmt: skip
    stub.set_state(run["run_id"], "SUCCEEDED")
    st = job_status(client, job)
    assert st["status"] == "completed"
    (ckpt,) = st["checkpoints"]
    assert ckpt["path"] == f"{out}/checkpoints/epoch_1"
    assert ckpt["training_metrics"]["validation_loss"] == 2.5


def test_cancel_terminates_and_canceled_maps(remote, stub, tmp_path):
    client = remote.client()
    ds = register_rows(client, tmp_path, instruct_rows(12))
    a, b = new_id("cancel"), new_id("ui-cancel")
    submit(client, a, "tiny", ds, checkpoint_dir=MODEL)
    submit(client, b, "tiny", ds, checkpoint_dir=MODEL)
    run_a, run_b = stub.run_for(a), stub.run_for(b)
    stub.set_state(run_a["run_id"], "RUNNING")
    cancel_job(client, a)
    assert stub.terminated == [run_a["run_id"]]
    # Told before the pods get SIGTERM: the train step stops at once and saves nothing.
    marker = parse(f"s3://kfp/llama-stack-post-training/jobs/{a}/output/cancel.json")
    assert storage.read_json(marker) == {"cancelled": True}
    st = job_status(client, a)
    # KFP still reports finished_at = Unix 0 for it: that is no completion time.
    assert st["status"] == "cancelled" and st["completed_at"] is None
    # Cancelled from the KFP UI: CANCELED maps to cancelled, never a hang.
    stub.set_state(run_b["run_id"], "CANCELED")
    assert job_status(client, b)["status"] == "cancelled"
    # Ended runs are settled without asking KFP to terminate them (it would refuse), and the
    # server keeps accepting work.
    remote.restart()
    client = remote.client()
    assert stub.terminated == [run_a["run_id"]]
    c = new_id("after")
    submit(client, c, "tiny", ds, checkpoint_dir=MODEL)
    assert job_status(client, c)["status"] == "scheduled"


def test_failed_run_reports_step_error(remote, stub, tmp_path):
    client = remote.client()
    ds = register_rows(client, tmp_path, instruct_rows(12))
    job = new_id("fail")
    submit(client, job, "tiny", ds, checkpoint_dir=MODEL)
    out = f"s3://kfp/llama-stack-post-training/jobs/{job}/output"
    storage.write_json(
        parse(f"{out}/error.json"),
        {"step": "train", "message": "RuntimeError: CUDA out of memory", "traceback": "..."},
    )
    stub.set_state(stub.run_for(job)["run_id"], "FAILED")
    st = job_status(client, job)
    assert st["status"] == "failed"
    err = st["resources_allocated"]["error"]
    assert err["message"] == "RuntimeError: CUDA out of memory" and "traceback" not in err


def test_a_run_stuck_pending_fails_with_the_reason_and_is_terminated(remote, stub, tmp_path):
    import time

    client = remote.client()
    ds = register_rows(client, tmp_path, instruct_rows(12))
    job = new_id("stuck")
    stub.age = 120.0  # created two minutes ago and still PENDING (limit here: 60 s)
    try:
        submit(client, job, "tiny", ds, checkpoint_dir=MODEL)
    finally:
        stub.age = 0.0
    st = job_status(client, job)
    assert st["status"] == "failed"
    assert "still PENDING after" in st["resources_allocated"]["error"]["message"]
    run_id = stub.run_for(job)["run_id"]
    deadline = time.monotonic() + 30  # the scheduler settles it on its next poll
    while run_id not in stub.terminated and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stub.terminated == [run_id]
    # Failed it stays, although KFP now says CANCELED.
    assert job_status(client, job)["status"] == "failed"


def test_a_lost_create_answer_does_not_create_a_second_run(remote, stub, tmp_path):
    client = remote.client()
    ds = register_rows(client, tmp_path, instruct_rows(12))
    job = new_id("lost")
    stub.lose_create_answer = True
    try:
        submit(client, job, "tiny", ds, checkpoint_dir=MODEL)  # no error: the run is found
    finally:
        stub.lose_create_answer = False
    runs = [r for r in stub.runs.values() if r["display_name"] == job]
    assert len(runs) == 1
    assert job_status(client, job)["resources_allocated"]["runner"]["run_id"] == runs[0]["run_id"]
    # A restart re-attaches to that run; nothing is submitted again.
    remote.restart()
    assert job_status(remote.client(), job)["status"] == "scheduled"
    assert len([r for r in stub.runs.values() if r["display_name"] == job]) == 1


def test_a_pod_level_failure_reaches_the_status(remote, stub, tmp_path):
    # The train pod was OOMKilled: no error.json was written, KFP's task details say why.
    client = remote.client()
    ds = register_rows(client, tmp_path, instruct_rows(12))
    job = new_id("oom")
    submit(client, job, "tiny", ds, checkpoint_dir=MODEL)
    reason = "OOMKilled: container train exceeded its memory limit (32Gi)"
    stub.set_state(stub.run_for(job)["run_id"], "FAILED", task_error=("train", reason))
    st = job_status(client, job)
    assert st["status"] == "failed"
    err = st["resources_allocated"]["error"]
    assert err["message"] == f"the KFP run ended FAILED: task train failed: {reason}"
    assert err["tasks"] == [{"task": "train", "state": "FAILED", "message": reason}]


@pytest.mark.parametrize(
    ("mode", "words"),
    [("unauthorized", "refused the token"), ("login-redirect", "login page")],
)
def test_auth_problems_are_clear_502s(remote, stub, tmp_path, mode, words):
    client = remote.client()
    ds = register_rows(client, tmp_path, instruct_rows(12))
    stub.mode = mode
    job = new_id("auth")
    with pytest.raises(APIStatusError) as err:
        submit(client, job, "tiny", ds, checkpoint_dir=MODEL)
    # The cluster refused: a bad gateway, not the caller's request.
    assert err.value.status_code == 502
    assert words in str(err.value)
    assert not (remote.jobs_dir / job).exists()
    assert remote.alive()


def _model_path(run: dict) -> str:
    return json.loads(run["runtime_config"]["parameters"]["job_spec"])["model"]["path"]


def test_hub_and_pvc_models(remote, stub, tmp_path):
    client = remote.client()
    ds = register_rows(client, tmp_path, instruct_rows(12))
    hub, pvc = new_id("hub"), new_id("pvc")
    submit(client, hub, "acme/tiny-llama", ds)  # config.json read at submit, weights in the pod
    assert _model_path(stub.run_for(hub)) == "hf://acme/tiny-llama"
    with pytest.raises(APIStatusError) as err:
        submit(client, new_id("nohub"), "acme/not-cached", ds)
    assert err.value.status_code == 400 and "cannot read config.json" in str(err.value)

    submit(client, pvc, "llama", ds, checkpoint_dir="pvc://models-pvc/llama-3b")
    run = stub.run_for(pvc)
    assert _model_path(run) == "pvc://models-pvc/llama-3b"
    k8s = run["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]
    (mount,) = k8s["executors"]["exec-train"]["pvcMount"]
    assert mount["mountPath"] == "/mnt/models/models-pvc"


def test_s3_refusing_the_server_is_a_502_and_a_status_still_answers(s3, stub, tmp_path):
    """moto enforcing IAM for a server whose S3 user may use the job bucket only: a model it
    may not read is a 502 naming bucket, key and operation, never the caller's 400; a job
    file it may not read is a warning in a status that still answers."""
    endpoint = s3["AWS_ENDPOINT_URL"]
    job_bucket, progress = (
        ["arn:aws:s3:::kfp", "arn:aws:s3:::kfp/*"],
        "arn:aws:s3:::kfp/*/progress.json",
    )
    keys = iam_user(endpoint, "kfp-only", [
        {"Effect": "Allow", "Action": "s3:*", "Resource": job_bucket},
        {"Effect": "Deny", "Action": "s3:GetObject", "Resource": progress},
    ])  # fmt: skip
    env = {"KFP_MODE": "remote", "KFP_URL": stub.url, "KFP_NAMESPACE": "team-a",
           "KFP_TOKEN": TOKEN, "KFP_S3_BUCKET": "kfp", "KFP_S3_ENDPOINT_URL": endpoint,
           **keys}  # fmt: skip
    with iam_enforced(endpoint), _own_server(tmp_path, env) as client:
        ds = register_rows(client, tmp_path, instruct_rows(12))
        with pytest.raises(APIStatusError) as err:
            submit(client, new_id("denied"), "tiny", ds, checkpoint_dir=MODEL)
        assert err.value.status_code == 502
        for words in ("S3 denied GetObject", "bucket 'models'", "key 'tiny-hf.tar.gz'"):
            assert words in str(err.value)
        job = new_id("pvc")
        submit(client, job, "llama", ds, checkpoint_dir="pvc://models-pvc/llama-3b")
        stub.set_state(stub.run_for(job)["run_id"], "RUNNING")
        st = job_status(client, job)
        assert st["status"] == "in_progress"
        (warning,) = st["resources_allocated"]["warnings"]
        assert "S3 denied GetObject" in warning and f"{job}/output/progress.json" in warning


def test_model_outside_s3_is_refused(remote, tmp_path, tiny_models):
    client = remote.client()
    ds = register_rows(client, tmp_path, instruct_rows(12))
    with pytest.raises(APIStatusError) as err:
        submit(client, new_id("local"), str(tiny_models / "hf"), ds)
    assert err.value.status_code == 400 and "upload-model.py" in str(err.value)


def test_unfinished_runs_have_no_completion_time_and_a_run_that_just_ended_is_not_cancelled(
    remote, stub, tmp_path
):
    client = remote.client()
    ds = register_rows(client, tmp_path, instruct_rows(12))
    job = new_id("race")
    submit(client, job, "tiny", ds, checkpoint_dir=MODEL)
    st = job_status(client, job)
    assert st["status"] == "scheduled" and st["completed_at"] is None  # not 1970-01-01
    # The run ends between two polls; a cancel then finds it ended instead of failing in
    # KFP's terminate call.
    stub.set_state(stub.run_for(job)["run_id"], "SUCCEEDED")
    with pytest.raises(APIStatusError) as err:
        cancel_job(client, job)
    assert err.value.status_code == 400 and "already ended (completed)" in str(err.value)
    assert stub.terminated == []
    st = job_status(client, job)
    finished = stub.run_for(job)["finished_at"]  # when the stand-in ended it: now
    assert st["status"] == "completed" and st["completed_at"][:19] == finished[:19]


def test_old_backend_is_refused_with_the_version_needed(remote, stub, tmp_path):
    client = remote.client()
    ds = register_rows(client, tmp_path, instruct_rows(12))
    stub.version = "2.3.0"
    job = new_id("old")
    with pytest.raises(APIStatusError) as err:
        submit(client, job, "tiny", ds, checkpoint_dir=MODEL)
    assert err.value.status_code == 502
    assert "2.3.0" in str(err.value) and ">= 2.5" in str(err.value)
    assert not (remote.jobs_dir / job).exists()


def test_a_blackholed_route_times_out_instead_of_hanging(remote, stub, tmp_path):
    client = remote.client()
    ds = register_rows(client, tmp_path, instruct_rows(12))
    job = new_id("slow")
    submit(client, job, "tiny", ds, checkpoint_dir=MODEL)
    stub.set_state(stub.run_for(job)["run_id"], "RUNNING")
    assert job_status(client, job)["status"] == "in_progress"
    stub.delay = 3.0  # longer than the request timeout the fixture configures (0.5 s)
    st = job_status(client, job)  # answers, from the last known state
    assert st["status"] == "in_progress"
    assert "timed out" in st["resources_allocated"]["runner"]["warning"].lower()
    stub.delay = 0.0


def test_a_rotated_token_file_is_read_again_without_a_restart(s3, stub, tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("token-day-1\n")
    stub.valid_token = "token-day-1"
    monkeypatch.delenv("KFP_TOKEN", raising=False)
    env = {"KFP_MODE": "remote", "KFP_URL": stub.url, "KFP_NAMESPACE": "team-a",
           "KFP_TOKEN_FILE": str(token_file), "KFP_S3_BUCKET": "kfp",
           "KFP_S3_ENDPOINT_URL": s3["AWS_ENDPOINT_URL"]}  # fmt: skip
    with _own_server(tmp_path, env) as client:
        ds = register_rows(client, tmp_path, instruct_rows(12))
        first = new_id("day1")
        submit(client, first, "tiny", ds, checkpoint_dir=MODEL)
        stub.set_state(stub.run_for(first)["run_id"], "RUNNING")
        # The token expires and is rotated in the file (as a token refresher would).
        stub.valid_token = "token-day-2"
        token_file.write_text("token-day-2\n")
        assert job_status(client, first)["status"] == "in_progress"
        assert "warning" not in job_status(client, first)["resources_allocated"]["runner"]
        second = new_id("day2")
        submit(client, second, "tiny", ds, checkpoint_dir=MODEL)  # no 502: read again
        used = {r["headers"].get("authorization") for r in stub.requests
                if r["path"].startswith("/apis/v2beta1/runs")}  # fmt: skip
        assert used == {"Bearer token-day-1", "Bearer token-day-2"}


def test_endpoint_gone_mid_run(remote, stub, tmp_path):
    client = remote.client()
    ds = register_rows(client, tmp_path, instruct_rows(12))
    job = new_id("gone")
    submit(client, job, "tiny", ds, checkpoint_dir=MODEL)
    stub.set_state(stub.run_for(job)["run_id"], "RUNNING")
    assert job_status(client, job)["status"] == "in_progress"
    stub.stop()
    st = job_status(client, job)  # answers, from the last known state
    assert st["status"] == "in_progress"
    assert "unreachable" in st["resources_allocated"]["runner"]["warning"]


@pytest.mark.parametrize("dspa_version", ["v1", "v1alpha1"])
def test_openshift_discovery_from_kubeconfig(s3, stub, tmp_path, monkeypatch, dspa_version):
    """No url, namespace or token configured: all three come from the current kubeconfig
    context and the namespace's DataSciencePipelinesApplication (the stub answers the
    Kubernetes API call too), served as `v1` only (DSPO >= 2.17) or `v1alpha1` only (before
    2.8)."""
    stub.dspa_versions = (dspa_version,)
    stub.dspas["team-b"] = [
        {"spec": {"dspVersion": "v1"}, "status": {}},
        {"spec": {"dspVersion": "v2"},
         "status": {"components": {"apiServer": {"externalUrl": stub.url}}}},
    ]  # fmt: skip
    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", stub.url, "team-b")
    env = {"KFP_MODE": "remote", "KFP_S3_BUCKET": "kfp", "KUBECONFIG": str(kubeconfig),
           "KFP_S3_ENDPOINT_URL": s3["AWS_ENDPOINT_URL"]}  # fmt: skip
    monkeypatch.delenv("KFP_TOKEN", raising=False)
    with _own_server(tmp_path, env) as client:
        ds = register_rows(client, tmp_path, instruct_rows(12))
        job = new_id("dspa")
        submit(client, job, "tiny", ds, checkpoint_dir=MODEL)
        run = stub.run_for(job)
        assert job_status(client, job)["resources_allocated"]["runner"]["run_id"] == run["run_id"]
        kfp_calls = [r for r in stub.requests if r["path"].startswith("/apis/v2beta1/runs")]
        assert kfp_calls[0]["headers"]["authorization"] == "Bearer sha256~kube-token"
        exp = next(iter(stub.experiments.values()))
        assert exp["namespace"] == "team-b"


def _running(client, stub, tmp_path, name: str) -> tuple[str, str]:
    ds = register_rows(client, tmp_path, instruct_rows(12))
    job = new_id(name)
    submit(client, job, "tiny", ds, checkpoint_dir=MODEL)
    return job, stub.run_for(job)["run_id"]


def test_a_pod_that_cannot_pull_its_image_says_so_then_fails_after_the_limit(
    remote, stub, tmp_path
):
    """KFP says RUNNING while the train pod waits for an image that cannot be pulled: the
    status shows the pod's reason, and once the pod has waited past the limit (60 s here)
    the job fails with it and the run is terminated."""
    import time

    client = remote.client()
    job, run_id = _running(client, stub, tmp_path, "pull")
    stub.set_state(run_id, "RUNNING")
    pull = ("ImagePullBackOff", 'Back-off pulling image "quay.io/acme/missing:1"')
    stub.add_pod(run_id, "train-pod", waiting=pull, age=10)
    st = job_status(client, job)
    assert st["status"] == "in_progress"
    pods = st["resources_allocated"]["runner"]["pods"]
    assert pods[0]["reason"] == "ImagePullBackOff"
    assert "quay.io/acme/missing:1" in pods[0]["message"]
    stub.add_pod(run_id, "train-pod", waiting=pull, age=120)
    st = job_status(client, job)
    assert st["status"] == "failed"
    message = st["resources_allocated"]["error"]["message"]
    assert "pod train-pod had not started after 120 s" in message
    assert "ImagePullBackOff" in message and "pending_timeout_seconds = 60 s" in message
    deadline = time.monotonic() + 30  # the scheduler settles it on its next poll
    while run_id not in stub.terminated and time.monotonic() < deadline:
        time.sleep(0.2)
    assert stub.terminated == [run_id]


def test_an_unschedulable_pending_run_says_why(remote, stub, tmp_path):
    client = remote.client()
    job, run_id = _running(client, stub, tmp_path, "gpu")
    why = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."
    stub.add_pod(run_id, "train-pod", unschedulable=why, age=5)
    stub.add_event("train-pod", "FailedScheduling", why)
    stub.add_event("train-pod", "FailedMount", 'secret "s3-credentials" not found')
    stub.add_event("other-pod", "FailedMount", "not this run's")
    st = job_status(client, job)
    assert st["status"] == "scheduled"
    pods = st["resources_allocated"]["runner"]["pods"]
    assert [(p["reason"], p["message"]) for p in pods] == [
        ("Unschedulable", why),  # the FailedScheduling event says the same: once
        ("FailedMount", 'secret "s3-credentials" not found'),
    ]


def test_an_oom_killed_step_without_error_json_says_so(remote, stub, tmp_path):
    """The train container was killed for memory: no error.json, no task error from KFP
    (as when its driver could not report); the pod's terminated state says why."""
    client = remote.client()
    job, run_id = _running(client, stub, tmp_path, "oom")
    stub.add_pod(run_id, "train-pod", phase="Failed", terminated=("OOMKilled", 137))
    stub.set_state(run_id, "FAILED")
    err = job_status(client, job)["resources_allocated"]["error"]
    assert err["message"] == (
        "the KFP run ended FAILED: pod train-pod container main: OOMKilled, exit code 137"
    )
    assert err["pods"] == [
        {"pod": "train-pod", "container": "main", "reason": "OOMKilled", "exit_code": 137}
    ]


def test_pods_the_server_may_not_read_are_a_note_not_an_error(remote, stub, tmp_path):
    client = remote.client()
    job, _ = _running(client, stub, tmp_path, "rbac")
    stub.pods_forbidden = True
    st = job_status(client, job)
    assert st["status"] == "scheduled"
    warning = st["resources_allocated"]["runner"]["pods_warning"]
    assert "403" in warning and "grant get/list on pods and events" in warning


def test_in_cluster_defaults_from_the_service_account(s3, tmp_path, monkeypatch):
    """The server runs as a pod: no kubeconfig, nothing configured but the bucket. The
    namespace and token come from the service account, the KFP URL from the DSPA's
    in-cluster service URL (not its route), over TLS checked with the service CA."""
    from tls import self_signed

    cert, key = self_signed(tmp_path / "tls")
    stub = KFPStub(tls=(cert, key))
    try:
        stub.dspas["team-c"] = [{"spec": {"dspVersion": "v2"}, "status": {"components": {
            "apiServer": {"url": stub.url, "externalUrl": "https://route.invalid"}}}}]  # fmt: skip
        sa = tmp_path / "serviceaccount"
        sa.mkdir()
        (sa / "token").write_text("sa-token-1")
        (sa / "namespace").write_text("team-c")
        (sa / "ca.crt").write_bytes(cert.read_bytes())  # the cluster's CA
        (sa / "service-ca.crt").write_bytes(cert.read_bytes())  # OpenShift's service CA
        stub.valid_token = "sa-token-1"
        env = {"KFP_MODE": "remote", "KFP_S3_BUCKET": "kfp",
               "KFP_S3_ENDPOINT_URL": s3["AWS_ENDPOINT_URL"],
               "KUBERNETES_SERVICE_HOST": "127.0.0.1",
               "KUBERNETES_SERVICE_PORT": str(stub.port),
               "KFP_SERVICE_ACCOUNT_DIR": str(sa),
               "KUBECONFIG": str(tmp_path / "none")}  # fmt: skip
        monkeypatch.delenv("KFP_TOKEN", raising=False)
        with _own_server(tmp_path, env) as client:
            ds = register_rows(client, tmp_path, instruct_rows(12))
            job = new_id("incluster")
            submit(client, job, "tiny", ds, checkpoint_dir=MODEL)
            run = stub.run_for(job)
            assert next(iter(stub.experiments.values()))["namespace"] == "team-c"
            # The kubelet rotates the token: KFP refuses the old one, the file has the new one.
            (sa / "token").write_text("sa-token-2")
            stub.valid_token = "sa-token-2"
            stub.set_state(run["run_id"], "RUNNING")
            st = job_status(client, job)
            assert st["status"] == "in_progress" and "warning" not in st["resources_allocated"][
                "runner"]  # fmt: skip
        kfp_calls = [r for r in stub.requests if r["path"].startswith("/apis/v2beta1/runs")]
        assert {r["headers"]["authorization"] for r in kfp_calls} == {
            "Bearer sa-token-1", "Bearer sa-token-2"}  # fmt: skip
        pod_reads = [r for r in stub.requests if r["path"].startswith("/api/v1/namespaces/team-c")]
        assert pod_reads, "the run's pods were read through the in-cluster Kubernetes API"
    finally:
        stub.stop()


def test_several_nodes_need_trainer_v2_and_cancel_deletes_the_trainjob(
    s3, stub, tmp_path, monkeypatch
):
    """remote.resources.nodes > 1: submit checks API discovery for Kubeflow Trainer v2 (501
    naming it and the alternative when absent); cancel terminates the run and deletes the
    job's TrainJob, which KFP's terminate (it stops only the step's pod) would leave running."""
    from harness.tiny_families import make
    from llama_stack_provider_kfp.kube.trainjob import NodePlan, manifest

    qwen = make("qwen2", tmp_path / "qwen2")
    subprocess.run([sys.executable, str(ROOT / "scripts" / "upload-model.py"), str(qwen),
                    "s3://models/qwen2.tar.gz"], check=True, capture_output=True)  # fmt: skip
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    env = {"KFP_MODE": "remote", "KFP_URL": stub.url, "KFP_NAMESPACE": "team-a",
           "KFP_S3_BUCKET": "kfp", "KFP_S3_ENDPOINT_URL": s3["AWS_ENDPOINT_URL"],
           "KFP_S3_SECRET": "s3-credentials", "KFP_NODES": "2", "KFP_REQUEST_TIMEOUT": "5",
           "KUBECONFIG": str(_kubeconfig(tmp_path / "kubeconfig", stub.url, "team-a"))}  # fmt: skip
    stub.trainer_served = False
    with _own_server(tmp_path, env) as client:
        ds = register_rows(client, tmp_path, instruct_rows(12))
        refused = new_id("no-trainer")
        with pytest.raises(APIStatusError) as err:
            submit(client, refused, "qwen", ds, checkpoint_dir="s3://models/qwen2.tar.gz")
        assert err.value.status_code == 501
        assert "Kubeflow Trainer v2" in str(err.value) and "PyTorchJob" in str(err.value)
        assert stub.runs == {}

        stub.trainer_served = True
        job = new_id("nodes")
        submit(client, job, "qwen", ds, checkpoint_dir="s3://models/qwen2.tar.gz")
        run = stub.run_for(job)
        k8s = run["pipeline_spec"]["pipeline_spec"]["deploymentSpec"]["executors"]["exec-train"]
        env_names = {e["name"] for e in k8s["container"]["env"]}
        assert "KFP_STEP_TRAINJOB_PLAN" in env_names
        # The train step created the job's TrainJob (as tests/test_trainjob.py shows it does).
        plan = NodePlan(nodes=2, procs_per_node=1, runtime="torch-distributed", image="img")
        body = manifest(plan, job_uuid=job, namespace="team-a", job_uri="s3://kfp/x/job.json")
        stub.trainjobs[("team-a", body["metadata"]["name"])] = body
        stub.trainjobs[("team-a", "someone-elses")] = {**body, "metadata": {
            **body["metadata"], "name": "someone-elses", "labels": {}}}  # fmt: skip
        stub.set_state(run["run_id"], "RUNNING")
        cancel_job(client, job)
        assert stub.terminated == [run["run_id"]]
        assert stub.deleted_trainjobs == [body["metadata"]["name"]]
        assert job_status(client, job)["status"] == "cancelled"


def test_openai_face_remote(remote_env, stub, s3, tmp_path):
    """An unchanged OpenAI fine-tuning script against `serve openai` in remote mode: the job
    is a KFP run (stand-in), its file staged to S3, its progress, checkpoints and end read
    from there; a cancel terminates the run."""
    import io
    import time

    import openai  # noqa: F401  (the SDK is the client)

    from harness.server import OpenAIServer

    root = tmp_path / "oai"
    root.mkdir()
    face = OpenAIServer(root, env=remote_env).start()
    try:
        oai = face.openai()
        rows = [{"messages": [{"role": "user", "content": f"Greet {n}."},
                              {"role": "assistant", "content": f"Hello, {n}!"}]}
                for n in "abcdefghijkl"]  # fmt: skip
        body = "".join(json.dumps(r) + "\n" for r in rows).encode()
        train = oai.files.create(file=("t.jsonl", io.BytesIO(body)), purpose="fine-tune")
        job = oai.fine_tuning.jobs.create(model=MODEL, training_file=train.id,
                                          hyperparameters={"n_epochs": 1})  # fmt: skip
        assert job.status == "queued"
        run = stub.run_for(job.id)
        params = json.loads(run["runtime_config"]["parameters"]["job_spec"])
        out = f"s3://kfp/llama-stack-post-training/jobs/{job.id}/output"
        assert params["output_uri"] == out and params["model"]["path"] == MODEL
        staged = params["data"]["uri"]
        assert staged.startswith(f"s3://kfp/llama-stack-post-training/jobs/{job.id}/input/")
        assert storage.read_bytes(parse(staged)) == body  # the uploaded file, staged

        stub.set_state(run["run_id"], "RUNNING")
        storage.write_json(parse(f"{out}/progress.json"), {
            "progress": {"step": 2, "loss": 1.5, "eta_seconds": 30}, "total_steps": 3,
            "loss_history": [[1, 2.0], [2, 1.5]]})  # fmt: skip
        assert oai.fine_tuning.jobs.retrieve(job.id).status == "running"
        metrics = [e.data for e in oai.fine_tuning.jobs.list_events(job.id)
                   if e.type == "metrics"]  # fmt: skip
        assert sorted(m["step"] for m in metrics) == [1, 2]
        storage.write_json(parse(f"{out}/checkpoints/epoch_1/merged/config.json"), {})
        storage.write_json(parse(f"{out}/checkpoints/epoch_1/metrics.json"), {
            "epoch": 1, "global_step": 3, "created_at": "2026-12-05T00:09:00+00:00",
            "train_loss": 1.2, "validation_loss": 1.4})  # fmt: skip
        stub.set_state(run["run_id"], "SUCCEEDED")
        deadline = time.monotonic() + 30
        while (done := oai.fine_tuning.jobs.retrieve(job.id)).status != "succeeded":
            assert time.monotonic() < deadline, done.status
            time.sleep(0.2)
        assert done.fine_tuned_model == f"ft:tiny-hf.tar.gz:local:local:{job.id}"
        (ckpt,) = oai.fine_tuning.jobs.checkpoints.list(job.id)
        assert ckpt.step_number == 3 and ckpt.metrics.valid_loss == 1.4

        other = oai.fine_tuning.jobs.create(model=MODEL, training_file=train.id)
        other_run = stub.run_for(other.id)
        stub.set_state(other_run["run_id"], "RUNNING")
        assert oai.fine_tuning.jobs.cancel(other.id).status == "cancelled"
        assert other_run["run_id"] in stub.terminated
    finally:
        face.cleanup()
