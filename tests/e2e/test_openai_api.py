"""OpenAI's fine-tuning API on this provider's jobs: a real `llama-stack-kfp serve openai`
driven by the official `openai` SDK only (strict response validation: an object that misses
or mistypes a field of the SDK's types fails the test), training tiny models for real.

One server with a keys file (two users) is shared by every test here."""

from __future__ import annotations

import io
import json
import os
import time

import openai
import pytest
import yaml
from openai import OpenAI

from harness.demo_data import NAMES
from harness.server import ROOT, OpenAIServer
from harness.tiny_families import make
from llama_stack_provider_kfp.boundary.pause_points import Pauses

pytestmark = pytest.mark.e2e

KEYS = {"alice": "sk-alice-0123456789", "bob": "sk-bob-9876543210"}
MAX_FILE = 64 * 1024


def messages_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Greet {NAMES[i % len(NAMES)]}."},
                          {"role": "assistant",
                           "content": f"Hello, {NAMES[i % len(NAMES)]}! Nice to meet you."}]}
            for i in range(n)]  # fmt: skip


def dpo_rows(n: int) -> list[dict]:
    return [{"input": {"messages": [{"role": "user", "content": f"Greet {NAMES[i]}."}]},
             "preferred_output": [{"role": "assistant", "content": f"Hello, {NAMES[i]}!"}],
             "non_preferred_output": [{"role": "assistant", "content": "Go away."}]}
            for i in range(n)]  # fmt: skip


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


@pytest.fixture(scope="module")
def face(tmp_path_factory, pauses: Pauses):
    root = tmp_path_factory.mktemp("openai")
    keys = root / "keys"
    keys.write_text("".join(f"{key} {who}\n" for who, key in KEYS.items()))
    keys.chmod(0o600)
    env = {**pauses.env, "KFP_OPENAI_KEYS_FILE": str(keys), "KFP_MAX_CONCURRENT_JOBS": "2",
           "KFP_OPENAI_MAX_FILE_BYTES": str(MAX_FILE), "WANDB_MODE": "offline"}  # fmt: skip
    # With keys (several users) the path rules apply: the tests' models live under pytest's
    # base folder.
    config = yaml.safe_load((ROOT / "run.yaml").read_text())
    provider = config["providers"]["post_training"][0]["config"]
    provider["allowed_path_roots"] = [str(tmp_path_factory.getbasetemp())]
    (root / "run.yaml").write_text(yaml.safe_dump(config))
    server = OpenAIServer(root, env=env, config=str(root / "run.yaml")).start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def alice(face):
    return face.openai(KEYS["alice"])


@pytest.fixture(scope="module")
def bob(face):
    return face.openai(KEYS["bob"])


def _upload(client, rows: list[dict], name: str = "train.jsonl"):
    return client.files.create(file=(name, io.BytesIO(jsonl(rows))), purpose="fine-tune")


def _wait(client, job_id: str, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise AssertionError(f"{job_id} did not end in {timeout} s (status {job.status})")


@pytest.fixture(scope="module")
def finished(alice, tiny_models):
    """Alice's supervised job, as an unchanged OpenAI script runs it."""
    train = _upload(alice, messages_rows(12))
    valid = _upload(alice, messages_rows(4), "valid.jsonl")
    job = alice.fine_tuning.jobs.create(
        model=str(tiny_models / "hf"), training_file=train.id, validation_file=valid.id,
        suffix="greeter", seed=7, metadata={"team": "a", "run": "1"},
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 2.0}}},
    )  # fmt: skip
    assert job.status in ("queued", "running") and job.id.startswith("ftjob-")
    return train, valid, _wait(alice, job.id)


def test_supervised_job_runs_like_openais(alice, finished, tiny_models):
    train, valid, job = finished
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:hf:alice:greeter:{job.id}"
    assert job.training_file == train.id and job.validation_file == valid.id
    assert job.seed == 7 and job.metadata == {"team": "a", "run": "1"}
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4
    assert job.hyperparameters.learning_rate_multiplier == 2.0
    assert job.method.type == "supervised" and job.finished_at >= job.created_at
    assert job.trained_tokens and job.trained_tokens > 0

    events = list(alice.fine_tuning.jobs.list_events(job.id, limit=100))
    messages = [e.message for e in events if e.type == "message"]
    assert messages[0] == "The job has successfully completed"  # newest first
    assert f"Created fine-tuning job: {job.id}" == messages[-1]
    metrics = [e.data for e in events if e.type == "metrics"]
    steps = sorted(int(m["step"]) for m in metrics)
    assert steps == list(range(1, 7))  # 12 rows / batch 4 x 2 epochs
    assert all(isinstance(m["train_loss"], float) for m in metrics)
    assert any("valid_loss" in m for m in metrics)  # each epoch's last step
    first_page = alice.fine_tuning.jobs.list_events(job.id, limit=2)
    assert len(first_page.data) == 2 and first_page.has_more
    second = alice.fine_tuning.jobs.list_events(job.id, limit=2, after=first_page.data[-1].id)
    assert second.data[0].id not in {e.id for e in first_page.data}

    checkpoints = list(alice.fine_tuning.jobs.checkpoints.list(job.id))
    assert [c.step_number for c in checkpoints] == [6, 3]  # epochs, newest first
    assert checkpoints[0].fine_tuned_model_checkpoint == f"{job.fine_tuned_model}:ckpt-step-6"
    assert checkpoints[0].metrics.valid_loss is not None
    assert checkpoints[0].metrics.train_loss is not None

    (result,) = job.result_files
    csv = alice.files.content(result).text.splitlines()
    assert csv[0] == "step,train_loss,valid_loss" and len(csv) == 7
    assert alice.files.retrieve(result).purpose == "fine-tune-results"
    assert job.fine_tuned_model in [m.id for m in alice.models.list()]
    assert alice.models.retrieve(job.fine_tuned_model).owned_by == "alice"


def test_list_pages_and_metadata_filter(alice, finished):
    _, _, job = finished
    listed = alice.fine_tuning.jobs.list(limit=100)
    assert job.id in [j.id for j in listed.data]
    ids = [j.id for j in listed.data]  # newest first
    first = alice.fine_tuning.jobs.list(limit=1)
    assert [j.id for j in first.data] == ids[:1] and first.has_more == (len(ids) > 1)
    rest = alice.fine_tuning.jobs.list(limit=100, after=ids[0])
    assert [j.id for j in rest.data] == ids[1:] and not rest.has_more
    assert [j.id for j in alice.fine_tuning.jobs.list(limit=1)] == ids  # the SDK pages on
    assert [j.id for j in alice.fine_tuning.jobs.list(metadata={"team": "a"})] == [job.id]
    with pytest.raises(openai.BadRequestError, match="limit must be from 1 to 100"):
        alice.fine_tuning.jobs.list(limit=101)
    assert list(alice.fine_tuning.jobs.list(metadata={"team": "b"})) == []


def test_another_user_sees_nothing(alice, bob, finished):
    train, _, job = finished
    for call, arg in ((bob.fine_tuning.jobs.retrieve, job.id),
                      (bob.fine_tuning.jobs.cancel, job.id),
                      (bob.fine_tuning.jobs.list_events, job.id),
                      (bob.files.retrieve, train.id), (bob.files.content, train.id),
                      (bob.models.retrieve, job.fine_tuned_model)):  # fmt: skip
        with pytest.raises(openai.NotFoundError):
            call(arg)
    assert job.id not in [j.id for j in bob.fine_tuning.jobs.list()]
    assert train.id not in [f.id for f in bob.files.list()]
    with pytest.raises(openai.NotFoundError):  # his job cannot start from her model either
        bob.fine_tuning.jobs.create(model=job.fine_tuned_model,
                                    training_file=_upload(bob, messages_rows(10)).id)  # fmt: skip


def test_files_and_their_limit(alice):
    kept = {f.id for f in alice.files.list()}
    with pytest.raises(openai.APIStatusError) as err:
        alice.files.create(file=("big.jsonl", io.BytesIO(b"x" * (MAX_FILE + 1))),
                           purpose="fine-tune")  # fmt: skip
    assert err.value.status_code == 413 and "openai.max_file_bytes" in err.value.message
    assert {f.id for f in alice.files.list()} == kept  # nothing half-stored
    up = _upload(alice, messages_rows(2), "two.jsonl")
    assert (up.filename, up.bytes, up.purpose, up.status) == (
        "two.jsonl",
        len(jsonl(messages_rows(2))),
        "fine-tune",
        "processed",
    )
    assert alice.files.content(up.id).content == jsonl(messages_rows(2))
    assert alice.files.delete(up.id).deleted
    with pytest.raises(openai.NotFoundError):
        alice.files.retrieve(up.id)
    with pytest.raises(openai.BadRequestError, match="purpose"):
        alice.files.create(file=("a.jsonl", io.BytesIO(b"{}")), purpose="assistants")


def test_a_wrong_key_is_refused(face):
    with pytest.raises(openai.AuthenticationError) as err:
        face.openai("sk-nobody").fine_tuning.jobs.list()
    assert err.value.code == "invalid_api_key" and "sk-nobody" not in err.value.message
    log = face.log.read_text()  # keys are never logged, right or wrong
    assert "fine_tuning/jobs" in log
    assert not any(key in log for key in (*KEYS.values(), "sk-nobody"))


def test_without_keys_only_loopback(tmp_path):
    """No keys file: one user, and the server refuses to listen beyond this machine."""
    import subprocess

    from harness.server import BIN

    done = subprocess.run(
        [str(BIN / "llama-stack-kfp"), "serve", "openai", "--config", str(ROOT / "run.yaml"),
         "--host", "0.0.0.0", "--port", "1"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "KFP_WORK_DIR": str(tmp_path), "KFP_OPENAI_KEYS_FILE": ""},
    )  # fmt: skip
    assert done.returncode == 64, done.stderr
    assert "binds loopback only" in done.stderr and "openai.keys_file" in done.stderr


def test_bad_requests_in_openais_shape(alice, tiny_models):
    model = str(tiny_models / "hf")
    good = _upload(alice, messages_rows(10)).id
    not_json = alice.files.create(file=("t.jsonl", io.BytesIO(b'{"messages": []}\nnope\n')),
                                  purpose="fine-tune").id  # fmt: skip
    few = _upload(alice, messages_rows(3)).id
    shape = _upload(alice, [{"prompt": "x", "completion": "y"}] * 10).id
    for kwargs, words in [
        ({"training_file": not_json}, ["line 2 is not valid JSON"]),
        ({"training_file": few}, ["has 3 example(s)", "at least 10"]),
        ({"training_file": shape}, ['line 1 has no "messages"']),
        ({"training_file": good, "method": {"type": "reinforcement"}},
         ["method.type 'reinforcement' is not supported"]),
        ({"training_file": good, "hyperparameters": {"n_epochs": 0}}, ["n_epochs"]),
        ({"training_file": good, "extra_body": {"temperature": 1}}, ["temperature"]),
        ({"training_file": good, "metadata": {f"k{i}": "v" for i in range(17)}},
         ["at most 16 pairs"]),
    ]:  # fmt: skip
        with pytest.raises(openai.BadRequestError) as err:
            alice.fine_tuning.jobs.create(model=model, **kwargs)
        body = err.value.body
        assert isinstance(body, dict) and set(body) >= {"message", "type", "param", "code"}
        for w in words:
            assert w in body["message"], body
    with pytest.raises(openai.NotFoundError):
        alice.fine_tuning.jobs.create(model=model, training_file="file-doesnotexist")
    with pytest.raises(openai.NotFoundError):
        alice.fine_tuning.jobs.retrieve("ftjob-doesnotexist")


def test_cancel_a_running_job(alice, pauses, tiny_models, face):
    train = _upload(alice, messages_rows(12)).id
    job = alice.fine_tuning.jobs.create(model=str(tiny_models / "hf"), training_file=train,
                                        hyperparameters={"n_epochs": 1, "batch_size": 2},
                                        extra_body={"kfp": {}})  # fmt: skip
    # Armed after create: the train step is far from its first step by then on any machine
    # (prepare-data runs first); a test-only pause point holds it there.
    pauses.arm(job.id, "train.step:1")
    pauses.wait(job.id, "train.step:1",
                going=lambda: alice.fine_tuning.jobs.retrieve(job.id).status
                in ("queued", "running"))  # fmt: skip
    with pytest.raises(openai.BadRequestError, match="the huggingface engine does"):
        alice.fine_tuning.jobs.pause(job.id)  # the tiny Llama trains on torchtune
    cancelled = alice.fine_tuning.jobs.cancel(job.id)
    assert cancelled.status == "cancelled"
    assert alice.fine_tuning.jobs.retrieve(job.id).status == "cancelled"
    with pytest.raises(openai.BadRequestError, match="already ended"):
        alice.fine_tuning.jobs.cancel(job.id)


def test_dpo(alice, face, tmp_path_factory):
    # A family with its own Hugging Face tokenizer: DPO runs on the Hugging Face engine.
    model = make("qwen2", tmp_path_factory.mktemp("qwen2") / "m")
    train = _upload(alice, dpo_rows(10)).id
    job = alice.fine_tuning.jobs.create(
        model=str(model), training_file=train,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 1,
                                                           "batch_size": 5}}},
        integrations=[{"type": "wandb", "wandb": {"project": "greeters", "tags": ["dpo"]}}],
    )  # fmt: skip
    done = _wait(alice, job.id)
    assert done.status == "succeeded", done.error
    assert done.method.type == "dpo" and done.method.dpo.hyperparameters.beta == 0.2
    assert done.fine_tuned_model == f"ft:m:alice:local:{job.id}"
    assert len(list(alice.fine_tuning.jobs.checkpoints.list(job.id))) == 1
    # The wandb integration became the job's W&B tracking (offline here: WANDB_MODE).
    assert done.integrations[0].wandb.project == "greeters"
    runs = list((face.jobs_dir / job.id / "output").glob("wandb/offline-run-*"))
    assert len(runs) == 1, list((face.jobs_dir / job.id / "output").iterdir())


def test_a_job_on_a_fine_tuned_model_and_on_a_checkpoint(alice, finished):
    _, _, first = finished
    train = _upload(alice, messages_rows(10)).id
    # The provider's own settings ride in extra_body["kfp"] (as hyperparam_search_config
    # ["kfp"] on the llama-stack face): here the evaluate stage on held-out rows.
    kfp = {"evaluation": {"enabled": True, "samples": 0}, "validation_fraction": 0.3}
    job = alice.fine_tuning.jobs.create(model=first.fine_tuned_model, training_file=train,
                                        hyperparameters={"n_epochs": 1},
                                        extra_body={"kfp": kfp})  # fmt: skip
    done = _wait(alice, job.id)
    assert done.status == "succeeded", done.error
    assert done.model == first.fine_tuned_model
    assert done.hyperparameters.batch_size == 1  # "auto": 0.2 % of 10 rows, at least 1
    (evaluated,) = [e.data for e in alice.fine_tuning.jobs.list_events(job.id, limit=100)
                    if e.type == "metrics" and "evaluation" in e.data]  # fmt: skip
    assert {"held_out/loss/base", "held_out/loss/tuned"} <= set(evaluated["evaluation"])
    _, evaluation_csv = done.result_files
    assert "held_out/loss/tuned," in alice.files.content(evaluation_csv).text
    with pytest.raises(openai.BadRequestError, match="unknown_setting"):
        alice.fine_tuning.jobs.create(model=first.fine_tuned_model, training_file=train,
                                      extra_body={"kfp": {"unknown_setting": 1}})  # fmt: skip
    # A checkpoint's name is a model too; a name that is no job's is not.
    (older,) = [c for c in alice.fine_tuning.jobs.checkpoints.list(first.id)
                if c.step_number == 3]  # fmt: skip
    again = alice.fine_tuning.jobs.create(
        model=older.fine_tuned_model_checkpoint, training_file=train,
        hyperparameters={"n_epochs": 1},
    )  # fmt: skip
    assert _wait(alice, again.id).status == "succeeded"
    with pytest.raises(openai.NotFoundError):
        alice.fine_tuning.jobs.create(model=f"{first.fine_tuned_model}x", training_file=train)
    # Deleting a fine-tuned model deletes its weights; the job stays, without a model.
    assert alice.models.delete(done.fine_tuned_model).deleted
    assert alice.fine_tuning.jobs.retrieve(job.id).fine_tuned_model is None
    assert done.fine_tuned_model not in [m.id for m in alice.models.list()]
    assert list(alice.fine_tuning.jobs.checkpoints.list(job.id)) == []
    with pytest.raises(openai.NotFoundError):
        alice.models.delete(done.fine_tuned_model)


def test_both_faces_on_one_work_dir(tmp_path, pauses, tiny_models):
    """A llama-stack server and an OpenAI-face server on one work dir: one dispatches, the
    concurrency limit (1) holds across both, each job starts once, and both faces' jobs end.
    The OpenAI face stops cleanly on SIGTERM."""
    from harness.demo_data import instruct_rows, training_config
    from harness.server import Server

    from .helpers import new_id, register_rows, submit, wait_done

    env = {**pauses.env, "KFP_MAX_CONCURRENT_JOBS": "1"}
    stack = Server(tmp_path, env=env).start()
    face = OpenAIServer(tmp_path, env=env).start()
    try:
        client, oai = stack.client(), face.openai()
        ds = register_rows(client, tmp_path, instruct_rows(8))
        first = new_id("both")
        pauses.arm(first, "train.step:1")
        submit(client, first, str(tiny_models / "hf"), ds,
               training_config=training_config(ds, n_epochs=1))  # fmt: skip
        pauses.wait(first, "train.step:1")
        job = oai.fine_tuning.jobs.create(
            model=str(tiny_models / "hf"), training_file=_upload(oai, messages_rows(10)).id,
            hyperparameters={"n_epochs": 1, "batch_size": 5})  # fmt: skip
        time.sleep(2.0)  # four dispatch rounds of either process: the limit holds it queued
        assert oai.fine_tuning.jobs.retrieve(job.id).status == "queued"
        assert not (stack.jobs_dir / job.id / "state.json").exists()
        pauses.release(first, "train.step:1")
        assert wait_done(client, first)["status"] == "completed"
        assert _wait(oai, job.id).status == "succeeded"
        # The llama-stack face lists the OpenAI face's job too (one store; no auth here).
        assert job.id in {j.job_uuid for j in client.alpha.post_training.job.list()}
        for job_id in (first, job.id):  # each started once: one worker, one pipeline run
            log = (stack.jobs_dir / job_id / "worker.log").read_text()
            assert log.count("Running pipeline:") == 1, log[-2000:]
    finally:
        face.stop()
        stack.cleanup()
    # SIGTERM: requests finished, the scheduler stopped (uvicorn then exits by the signal it
    # caught, as its own docs say, so a supervisor sees why it stopped).
    assert face.proc.returncode in (0, -15)
    log = face.log.read_text()
    assert "scheduler stopped; jobs keep running" in log and "Finished server process" in log


def test_pause_and_resume(face, pauses, tmp_path_factory):
    """Pause stops the job with a checkpoint; resume continues it under the same id from
    there, to the same end as a job never paused. The SDK's status literal lacks "paused"
    (OpenAI's API reference lists it), so this reads the job with a lenient client."""
    alice = face.openai(KEYS["alice"])
    lenient = OpenAI(base_url=f"{face.base_url}/v1", api_key=KEYS["alice"], max_retries=0,
                     timeout=120)  # fmt: skip
    model = str(make("qwen2", tmp_path_factory.mktemp("qwen2-pause") / "m"))  # HF engine
    train = _upload(alice, messages_rows(12)).id
    hyper = {"n_epochs": 1, "batch_size": 2}  # 6 steps
    job = alice.fine_tuning.jobs.create(model=model, training_file=train, hyperparameters=hyper)
    whole = alice.fine_tuning.jobs.create(model=model, training_file=train,
                                          hyperparameters=hyper)  # fmt: skip
    pauses.arm(job.id, "train.step:2")
    pauses.arm(job.id, "train.stop_requested")
    pauses.wait(job.id, "train.step:2")
    paused = lenient.fine_tuning.jobs.pause(job.id)
    assert paused.status == "paused"
    # The server signals in the background: release step 2 only once the SIGTERM has landed,
    # else a slow signal stops the job a step later than the test expects.
    pauses.wait(job.id, "train.stop_requested")
    pauses.release(job.id, "train.stop_requested")
    pauses.release(job.id, "train.step:2")  # it saves at this step boundary, then stops
    deadline = time.monotonic() + 120
    while True:  # resume is refused while the job is still saving its checkpoint
        try:
            resumed = lenient.fine_tuning.jobs.resume(job.id)
            break
        except openai.BadRequestError as e:
            assert "still stopping" in e.message and time.monotonic() < deadline
            time.sleep(0.3)
    assert resumed.id == job.id and resumed.status in ("queued", "running")
    done, ref = _wait(alice, job.id), _wait(alice, whole.id)
    assert done.status == ref.status == "succeeded", (done.error, ref.error)
    names = [c.fine_tuned_model_checkpoint.rsplit(":", 1)[-1]
             for c in alice.fine_tuning.jobs.checkpoints.list(job.id)]  # fmt: skip
    assert "ckpt-step-2" in names and "ckpt-step-6" in names  # the pause's, and the end's
    events = list(alice.fine_tuning.jobs.list_events(job.id, limit=100))
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert sorted(steps) == list(range(1, 7))  # the curve continues: no gap, no repeat
    assert any(e.message.startswith("Fine-tuning job resumed") for e in events)
    losses = {
        j: {e.data["step"]: e.data["train_loss"] for e in
            alice.fine_tuning.jobs.list_events(j, limit=100) if e.type == "metrics"}
        for j in (job.id, whole.id)
    }  # fmt: skip
    for step in range(1, 7):  # LOSS_TOLERANCE of tests/e2e/test_resume.py
        assert abs(losses[job.id][step] - losses[whole.id][step]) <= 1e-5, step
    with pytest.raises(openai.BadRequestError, match="not paused"):
        alice.fine_tuning.jobs.resume(job.id)
    with pytest.raises(openai.BadRequestError, match="already ended"):
        lenient.fine_tuning.jobs.pause(job.id)
