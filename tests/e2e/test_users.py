"""Several users on one real `llama stack run` with auth on: llama-stack's `custom` auth
provider asks an endpoint this test serves on loopback (a token -> user table), and the
server's `access_policy` decides. Alice and Carol share a role, Bob shares nothing with them.

The policy is llama-stack's default for reading (the owner, or a user sharing one of the
owner's roles/teams/projects/namespaces; anyone for an unowned resource) with updates kept to
the owner, so every answer below comes from llama-stack's own `is_action_allowed`."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from llama_stack_client import APIStatusError

from harness.demo_data import instruct_rows
from harness.server import ROOT, Server
from llama_stack_provider_kfp.client import cancel_job, job_artifacts, job_status

from .helpers import new_id, register_rows, submit, training_config, wait_done

pytestmark = pytest.mark.e2e

USERS = {
    "alice-token": {"principal": "alice", "attributes": {"roles": ["team-a"]}},
    "carol-token": {"principal": "carol", "attributes": {"roles": ["team-a"]}},
    "bob-token": {"principal": "bob", "attributes": {"roles": ["team-b"]}},
}
POLICY = [
    {"permit": {"actions": ["create", "read", "update", "delete"]}, "when": "user is owner"},
    {"permit": {"actions": ["read"]}, "when": "user in owners roles"},
    {"permit": {"actions": ["create", "read", "update", "delete"]}, "when": "resource is unowned"},
]


class _Auth(BaseHTTPRequestHandler):
    """llama-stack's custom auth: POST {"api_key", "request"} -> {"principal", "attributes"}."""

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        user = USERS.get(body.get("api_key"))
        self.send_response(200 if user else 401)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(json.dumps(user or {"error": "unknown token"}).encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory, pauses):
    endpoint = ThreadingHTTPServer(("127.0.0.1", 0), _Auth)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    root = tmp_path_factory.mktemp("users")
    config = yaml.safe_load((ROOT / "run.yaml").read_text())
    config["server"]["auth"] = {
        "provider_config": {"type": "custom",
                            "endpoint": f"http://127.0.0.1:{endpoint.server_port}/auth"},
        "access_policy": POLICY,
    }  # fmt: skip
    # The tests' models and data live under pytest's base folder (so does this server's work
    # dir, where only the folders of jobs a user may read count).
    provider = config["providers"]["post_training"][0]["config"]
    provider["allowed_path_roots"] = [str(tmp_path_factory.getbasetemp())]
    # The job prefix remote mode writes (only checked here: this server runs jobs locally).
    provider.setdefault("remote", {})["s3_bucket"] = "kfp"
    (root / "run-auth.yaml").write_text(yaml.safe_dump(config))
    env = {**pauses.env, "KFP_MAX_JOBS_PER_USER": "1", "KFP_MAX_CONCURRENT_JOBS": "3"}
    server = Server(root, env=env, config=str(root / "run-auth.yaml")).start()
    yield server
    server.cleanup()
    endpoint.shutdown()


def _as(server: Server, who: str):
    from llama_stack_client import LlamaStackClient

    return LlamaStackClient(base_url=server.base_url, api_key=f"{who}-token", max_retries=0,
                            timeout=120)  # fmt: skip


def _refused(call, *args, **kwargs) -> APIStatusError:
    with pytest.raises(APIStatusError) as err:
        call(*args, **kwargs)
    return err.value


def _ids(client) -> set[str]:
    return {j.job_uuid for j in client.alpha.post_training.job.list()}


def test_a_user_reaches_only_the_jobs_the_policy_permits(auth_server, pauses, tiny_models,
                                                        tmp_path):  # fmt: skip
    alice, bob, carol = (_as(auth_server, u) for u in ("alice", "bob", "carol"))
    ds = register_rows(alice, tmp_path, instruct_rows(12))
    job = new_id("job-a")
    pauses.arm(job, "train.step:1")  # running, and still running, while others try it
    submit(alice, job, str(tiny_models / "hf"), ds, training_config=training_config(ds))
    pauses.wait(job, "train.step:1")
    record = json.loads((auth_server.jobs_dir / job / "job.json").read_text())
    assert record["owner"] == USERS["alice-token"]  # in the record...
    spec = json.dumps(record["spec"])  # ...not in what the pipeline carries
    assert "alice" not in spec and "team-a" not in spec

    # Bob: another user's job answers exactly like a job that does not exist.
    unknown = new_id("nothing")
    for call in (job_status, job_artifacts, cancel_job):
        theirs, none = _refused(call, bob, job), _refused(call, bob, unknown)
        assert theirs.status_code == none.status_code == 404
        assert str(theirs).replace(job, "ID") == str(none).replace(unknown, "ID")
    assert job not in _ids(bob)
    # The one documented hint: ids are global, so a taken one is refused to him too.
    taken = _refused(submit, bob, job, str(tiny_models / "hf"), ds)
    assert taken.status_code == 400 and "already used" in str(taken)
    # llama-stack hides Alice's dataset from him as well.
    assert _refused(submit, bob, new_id("bob"), str(tiny_models / "hf"), ds).status_code in (
        400, 404)  # fmt: skip

    # Carol shares Alice's role: she may read the job, not cancel it (the policy's update rule).
    assert job in _ids(carol) and job_status(carol, job)["status"] == "in_progress"
    denied = _refused(cancel_job, carol, job)
    assert denied.status_code == 403 and "access policy does not let you cancel" in str(denied)
    assert job_status(alice, job)["status"] == "in_progress"  # nobody else stopped it

    # Alice, at her limit of one queued or running job (max_jobs_per_user), is told so.
    over = _refused(submit, alice, new_id("job-a2"), str(tiny_models / "hf"), ds)
    assert over.status_code == 429 and "max_jobs_per_user" in str(over)
    cancel_job(alice, job)
    pauses.release(job, "train.step:1")
    assert wait_done(alice, job, timeout=60)["status"] == "cancelled"

    # A record without an owner (written before jobs had owners) is unowned: anyone may read it.
    path = auth_server.jobs_dir / job / "job.json"
    old = json.loads(path.read_text())
    del old["owner"]
    path.write_text(json.dumps(old))
    assert job in _ids(bob) and job_status(bob, job)["status"] == "cancelled"


def test_paths_outside_the_roots_and_others_job_folders_are_refused(auth_server, tiny_models,
                                                                   tmp_path):  # fmt: skip
    alice, bob = _as(auth_server, "alice"), _as(auth_server, "bob")
    model = str(tiny_models / "hf")
    ds = register_rows(alice, tmp_path, instruct_rows(8))
    job = new_id("job-a")
    submit(alice, job, model, ds, training_config=training_config(ds, n_epochs=1))
    assert wait_done(alice, job)["status"] == "completed"
    epoch = str(auth_server.jobs_dir / job / "output" / "checkpoints" / "epoch_1")

    bobs = register_rows(bob, tmp_path, instruct_rows(8))
    outside = tmp_path.parent.parent.parent  # above pytest's base folder: not a root
    for kw, what in (({"checkpoint_dir": epoch}, "checkpoint_dir"),  # Alice's checkpoint
                     ({"model": epoch}, "model"),
                     ({"model": str(outside)}, "model"),
                     ({"hyperparam_search_config": {"kfp": {"evaluation": {
                         "enabled": True, "task_files": ["/etc/hostname"]}}}},
                      "evaluation task file")):  # fmt: skip
        args = {"model": model, **kw}
        err = _refused(submit, bob, new_id("job-b"), args.pop("model"), bobs, **args)
        assert err.status_code == 403 and what in str(err), err
        assert "allowed_path_roots" in str(err)
    # The provider's own S3 job folders and claims: Alice's job there is hers (403 before any
    # S3 call: this server has no S3 at all), and no claim is allowed.
    s3_epoch = f"s3://kfp/llama-stack-post-training/jobs/{job}/output/checkpoints/epoch_1"
    for kw, why in (({"checkpoint_dir": s3_epoch}, "folders of jobs they may read"),
                    ({"model": "pvc://team-models/m"}, "allowed_claims")):  # fmt: skip
        args = {"model": model, **kw}
        err = _refused(submit, bob, new_id("job-b"), args.pop("model"), bobs, **args)
        assert err.status_code == 403 and why in str(err), err
    # A dataset whose file is outside the roots (llama-stack lets anyone register a URI).
    bob.beta.datasets.register(purpose="post-training/messages", dataset_id=new_id("etc"),
                               source={"type": "uri", "uri": "file:///etc/hostname"})  # fmt: skip
    etc = [d.identifier for d in bob.beta.datasets.list() if d.identifier.startswith("etc-")][-1]
    err = _refused(submit, bob, new_id("job-b"), model, etc)
    assert err.status_code == 403 and "/etc/hostname" in str(err)
    # Alice may start a new training from her own job's weights.
    again = new_id("job-a")
    submit(alice, again, model, ds, checkpoint_dir=f"{epoch}/merged",
           training_config=training_config(ds, n_epochs=1))  # fmt: skip
    assert wait_done(alice, again)["status"] == "completed"
    assert not list(auth_server.jobs_dir.glob("job-b-*"))  # nothing was created for Bob


def test_without_a_token_nothing_is_answered(auth_server):
    from llama_stack_client import LlamaStackClient

    anonymous = LlamaStackClient(base_url=auth_server.base_url, max_retries=0)
    assert _refused(anonymous.alpha.post_training.job.list).status_code == 401
