"""The stages after training through a real server (the session's shared one), real kfp.local,
real training, real lm-eval on a custom task: prepare-data -> train -> evaluate (-> register,
tests/e2e/test_registration_stage.py), each stage in the status; evaluating a finished checkpoint
again without training; a failing evaluate leaves the job failed with its checkpoints; bad stage
settings are 400s before anything is created."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_task import write_task
from llama_stack_client import BadRequestError

from harness.demo_data import instruct_rows, training_config
from llama_stack_provider_kfp.client import job_artifacts, job_status

from .helpers import new_id, register_rows, submit, wait_done

pytestmark = pytest.mark.e2e


def _ext(**kfp) -> dict:
    return {"kfp": kfp}


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> Path:
    return write_task(tmp_path_factory.mktemp("task")) / "tiny_mc.yaml"


@pytest.fixture(scope="module")
def dataset(client, tmp_path_factory) -> str:
    return register_rows(client, tmp_path_factory.mktemp("rows"), instruct_rows(16, seed=3))


def _config(dataset: str) -> dict:
    # Two epochs of 2 steps: the held-out rows are a quarter of the 16.
    return training_config(dataset, n_epochs=2, max_steps_per_epoch=2)


@pytest.fixture(scope="module")
def evaluated(client, tiny_models, dataset, task) -> dict:
    job = new_id("stages")
    evaluation = {"enabled": True, "task_files": [str(task)], "samples": 2, "max_new_tokens": 8}
    ext = _ext(evaluation=evaluation, validation_fraction=0.25)
    submit(client, job, str(tiny_models / "hf"), dataset, training_config=_config(dataset),
           hyperparam_search_config=ext)  # fmt: skip
    return wait_done(client, job)


def test_train_then_evaluate_shows_every_stage_and_base_vs_tuned(evaluated):
    st = evaluated
    res = st["resources_allocated"]
    assert st["status"] == "completed", res.get("error")
    stages = res["stages"]
    assert [s["name"] for s in stages] == ["prepare-data", "train", "evaluate"]
    assert all(s["status"] == "completed" for s in stages), stages
    for s in stages:
        assert s["started_at"] <= s["finished_at"]
    # Each stage starts after the one before it ended.
    assert stages[1]["started_at"] >= stages[0]["finished_at"]
    assert stages[2]["started_at"] >= stages[1]["finished_at"]
    ev = res["evaluation"]
    assert ev["checkpoint"].endswith("/checkpoints/epoch_2") and ev["epoch"] == 2
    assert ev["held_out_rows"] == res["rows"]["validation"] > 0
    held = ev["results"]["held_out"]
    assert set(held) == {"loss", "perplexity", "token_accuracy"}
    loss = held["loss"]
    assert loss["delta"] == pytest.approx(loss["tuned"] - loss["base"])
    # The toy task is learnable in 4 steps at this rate: the tuned model is better on the
    # held-out rows than the random base.
    assert loss["tuned"] < loss["base"]
    acc = ev["results"]["tiny_mc"]["acc"]
    assert 0 <= acc["base"] <= 1 and 0 <= acc["tuned"] <= 1
    assert len(ev["samples"]) == 2
    assert all(s["prompt"] and "base" in s and "tuned" in s for s in ev["samples"])
    assert len(st["checkpoints"]) == 2


def test_a_finished_checkpoint_is_evaluated_again_without_training(client, evaluated, dataset,
                                                                  tiny_models):  # fmt: skip
    checkpoint = evaluated["checkpoints"][-1]["path"]
    job = new_id("re-eval")
    submit(client, job, str(tiny_models / "hf"), dataset, checkpoint_dir=checkpoint,
           training_config=_config(dataset),
           hyperparam_search_config=_ext(stages=["evaluate"], validation_fraction=0.25,
                                         evaluation={"samples": 0}))  # fmt: skip
    st = wait_done(client, job)
    res = st["resources_allocated"]
    assert st["status"] == "completed", res.get("error")
    assert [(s["name"], s["status"]) for s in res["stages"]] == [
        ("prepare-data", "completed"), ("evaluate", "completed")]  # fmt: skip
    assert st["checkpoints"] == [] and job_artifacts(client, job)["checkpoints"] == []
    assert res["evaluation"]["checkpoint"] == checkpoint
    before = evaluated["resources_allocated"]["evaluation"]["results"]["held_out"]["loss"]
    after = res["evaluation"]["results"]["held_out"]["loss"]
    # The same checkpoint, the same seed's held-out rows, the same settings: the same numbers.
    assert after["tuned"] == pytest.approx(before["tuned"], rel=1e-5)
    assert after["base"] == pytest.approx(before["base"], rel=1e-5)
    assert "result" not in res  # nothing was trained


def test_an_evaluate_stage_that_fails_leaves_the_job_failed_with_its_checkpoints(
    client, tiny_models, dataset, tmp_path
):
    # A task whose data file is not there: the task file parses (submit), the task is known
    # (prepare-data), and reading its rows fails in the evaluate step, after training.
    task = write_task(tmp_path) / "tiny_mc.yaml"
    (tmp_path / "tiny_mc.jsonl").unlink()
    job = new_id("eval-fails")
    submit(client, job, str(tiny_models / "hf"), dataset,
           training_config=training_config(dataset, n_epochs=1, max_steps_per_epoch=1),
           hyperparam_search_config=_ext(evaluation={"enabled": True, "task_files": [str(task)],
                                                     "samples": 0}))  # fmt: skip
    st = wait_done(client, job)
    res = st["resources_allocated"]
    assert st["status"] == "failed"
    assert res["error"]["stage"] == "evaluate", res["error"]
    assert [(s["name"], s["status"]) for s in res["stages"]] == [
        ("prepare-data", "completed"), ("train", "completed"), ("evaluate", "failed")]  # fmt: skip
    assert "tiny_mc" in res["stages"][2]["error"]
    (ckpt,) = st["checkpoints"]  # the trained checkpoint stays listed
    assert Path(ckpt["path"], "merged").is_dir()
    assert job_status(client, job)["status"] == "failed"


@pytest.mark.parametrize(
    ("extension", "says"),
    [
        (_ext(evalution={}), "unknown key(s) 'evalution'"),
        (_ext(registry={"kind": "sagemaker"}), "registry.kind"),
        (_ext(stages=["train", "register"]), "registry.kind is none"),
        (_ext(evaluation={"enabled": True, "task_files": ["/nonexistent/task.yaml"]}),
         "task.yaml does not exist"),
    ],
)  # fmt: skip
def test_bad_stage_settings_are_400s_before_anything_is_created(
    client, server, tiny_models, dataset, extension, says
):
    job = new_id("bad-stage")
    with pytest.raises(BadRequestError) as e:
        submit(client, job, str(tiny_models / "hf"), dataset, training_config=_config(dataset),
               hyperparam_search_config=extension)  # fmt: skip
    assert says in e.value.response.json()["error"]["message"]
    assert not (server.jobs_dir / job).exists()


def test_a_task_file_that_does_not_parse_is_a_400(client, tiny_models, dataset, tmp_path):
    bad = tmp_path / "broken.yaml"
    bad.write_text("task: [unclosed\n")
    with pytest.raises(BadRequestError, match=r"broken\.yaml"):
        submit(client, new_id("bad-task"), str(tiny_models / "hf"), dataset,
               training_config=_config(dataset),
               hyperparam_search_config=_ext(evaluation={"enabled": True,
                                                         "task_files": [str(bad)]}))  # fmt: skip
