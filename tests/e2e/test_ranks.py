"""Several ranks per job through the real server: torchrun starts 2 CPU ranks (gloo) for a
Hugging Face engine job (DDP) and for a torchtune job (its distributed recipe, FSDP); they train
the same loss curve as one rank at the same global batch, and rank 0 alone writes one set of
checkpoints, progress and the result."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from llama_stack_client import APIStatusError

from harness.demo_data import instruct_rows
from harness.server import Server
from harness.tiny_families import make
from llama_stack_provider_kfp.client import job_artifacts

from .helpers import new_id, register_rows, submit, training_config, wait_done

pytestmark = pytest.mark.e2e

# The ranks reduce in another order than one process sums: float32 rounding only.
LOSS_RTOL = 1e-4


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    server = Server(
        tmp_path_factory.mktemp("ranks"), env={"KFP_DEVICE": "cpu", "KFP_DEVICES_PER_JOB": "2"}
    ).start()
    yield server
    server.cleanup()


def _run(client, model: Path, tmp: Path, name: str) -> dict:
    ds = register_rows(client, tmp, instruct_rows(22), name=new_id(f"ds-{name}"))
    job = new_id(name)
    # 22 rows, batch 4: the last batch has 2 rows (one per rank); 2 epochs of 6 steps.
    submit(client, job, str(model), ds,
           training_config=training_config(ds, n_epochs=2, max_steps_per_epoch=6))  # fmt: skip
    status = wait_done(client, job)
    assert status["status"] == "completed", status["resources_allocated"]
    return {"job": job, **status}


def test_two_ranks_train_the_one_rank_curve(client, two_ranks, tmp_path):
    model = make("qwen2", tmp_path / "qwen2")
    one = _run(client, model, tmp_path, "one-rank")
    two_client = two_ranks.client()
    two = _run(two_client, model, tmp_path, "two-ranks")

    res = two["resources_allocated"]
    assert res["engine"]["name"] == "huggingface"
    worker_log = (two_ranks.jobs_dir / two["job"] / "worker.log").read_text()
    assert "train: 2 ranks" in worker_log and "rank_main" in worker_log
    curve_one = one["resources_allocated"]["loss_history"]
    curve_two = res["loss_history"]
    assert [s for s, _ in curve_two] == list(range(1, 13))  # every step once: rank 0 only
    losses_one, losses_two = ([loss for _, loss in c] for c in (curve_one, curve_two))
    print(
        "max relative loss difference, 2 ranks vs 1:",
        max(abs(a - b) / abs(b) for a, b in zip(losses_two, losses_one, strict=True)),
    )
    assert losses_two == pytest.approx(losses_one, rel=LOSS_RTOL)
    assert res["progress"]["step"] == res["progress"]["total_steps"] == 12
    assert res["result"]["samples_seen"] == one["resources_allocated"]["result"]["samples_seen"]

    checkpoints = job_artifacts(two_client, two["job"])["checkpoints"]
    assert [Path(c["path"]).name for c in checkpoints] == ["epoch_1", "epoch_2"]
    out = Path(checkpoints[-1]["path"]).parent
    assert sorted(p.name for p in out.iterdir()) == ["epoch_1", "epoch_2"]  # no leftovers
    # The distributed outputs load with peft/transformers and match the one-rank weights.
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    def logits(epoch: Path) -> torch.Tensor:
        base = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
        tuned = PeftModel.from_pretrained(base, epoch / "adapter")
        with torch.no_grad():
            return tuned(torch.tensor([[5, 17, 42, 99, 120, 7, 3]])).logits

    ones = Path(job_artifacts(client, one["job"])["checkpoints"][-1]["path"])
    assert torch.allclose(logits(ones), logits(Path(checkpoints[-1]["path"])), atol=1e-4)
    metrics = json.loads((Path(checkpoints[-1]["path"]) / "metrics.json").read_text())
    assert metrics["global_step"] == 12


def test_a_batch_smaller_than_the_ranks_is_refused(two_ranks, tmp_path):
    client = two_ranks.client()
    ds = register_rows(client, tmp_path, instruct_rows(4))
    with pytest.raises(APIStatusError) as err:
        submit(client, new_id("small"), "unused", ds,
               training_config=training_config(ds, data_config={"batch_size": 1}))  # fmt: skip
    assert err.value.status_code == 400
    assert "batch_size (1) is smaller than the 2 devices" in str(err.value)


def test_two_ranks_train_the_one_rank_dpo_curve(client, two_ranks, tmp_path):
    """DPO's loss is a mean over pairs: the ranks weight theirs the same way (LoRA DPO, the
    reference being the model with its adapter switched off)."""
    from .test_hf_engine import _preference_rows

    model = make("smollm2", tmp_path / "smollm2")  # no dropout: GPT-2 draws masks per rank
    curves = []
    for c in (client, two_ranks.client()):
        dataset = register_rows(c, tmp_path, _preference_rows(10, seed=3), name=new_id("pairs"))
        job = new_id("dpo-ranks")
        tc = training_config(dataset, n_epochs=1, optimizer_config={"lr": 1e-2},
                             data_config={"data_format": "dialog"})  # fmt: skip
        c.alpha.post_training.preference_optimize(
            job_uuid=job, finetuned_model=str(model),
            algorithm_config={"beta": 0.1, "loss_type": "sigmoid"}, training_config=tc,
            hyperparam_search_config={}, logger_config={},
        )  # fmt: skip
        status = wait_done(c, job)
        assert status["status"] == "completed", status["resources_allocated"]
        curves.append([loss for _, loss in status["resources_allocated"]["loss_history"]])
    one, two = curves
    assert len(two) == 3  # 10 pairs, batch 4: the last batch has 2 (one per rank)
    assert two == pytest.approx(one, rel=LOSS_RTOL)


def test_two_ranks_train_the_one_rank_torchtune_curve(client, two_ranks, tiny_models, tmp_path):
    """torchtune's distributed recipe (FSDP2) on 2 CPU ranks, each with batch_size / 2 rows:
    16 rows (no padding by the sampler), global batch 4, 2 epochs of 2 steps, validated."""
    model = tiny_models / "hf"
    runs = []
    for c in (client, two_ranks.client()):
        ds = register_rows(c, tmp_path, instruct_rows(16, seed=5), name=new_id("tt-rows"))
        val = register_rows(c, tmp_path, instruct_rows(6, seed=6), name=new_id("tt-val"))
        job = new_id("tt-ranks")
        tc = training_config(ds, n_epochs=2, max_steps_per_epoch=2, max_validation_steps=None,
                             data_config={"validation_dataset_id": val})  # fmt: skip
        submit(c, job, str(model), ds, training_config=tc)
        status = wait_done(c, job)
        assert status["status"] == "completed", status["resources_allocated"]
        assert status["resources_allocated"]["engine"]["name"] == "torchtune"
        runs.append({"job": job, "client": c, **status})
    one, two = runs

    worker_log = (two_ranks.jobs_dir / two["job"] / "worker.log").read_text()
    assert "train: 2 ranks" in worker_log and "rank_main" in worker_log
    res = two["resources_allocated"]
    curve_one, curve_two = one["resources_allocated"]["loss_history"], res["loss_history"]
    assert [s for s, _ in curve_two] == [1, 2, 3, 4]  # every step once: rank 0 only
    losses_one, losses_two = ([loss for _, loss in c] for c in (curve_one, curve_two))
    print(
        "torchtune: max relative loss difference, 2 ranks vs 1:",
        max(abs(a - b) / abs(b) for a, b in zip(losses_two, losses_one, strict=True)),
    )
    assert losses_two == pytest.approx(losses_one, rel=LOSS_RTOL)
    assert res["progress"]["step"] == res["progress"]["total_steps"] == 4
    assert res["progress"]["epoch"] == res["progress"]["total_epochs"] == 2
    result_one = one["resources_allocated"]["result"]
    assert res["result"]["samples_seen"] == result_one["samples_seen"] == 16

    checkpoints = job_artifacts(two["client"], two["job"])["checkpoints"]
    assert [Path(c["path"]).name for c in checkpoints] == ["epoch_1", "epoch_2"]
    out = Path(checkpoints[-1]["path"]).parent
    assert sorted(p.name for p in out.iterdir()) == ["epoch_1", "epoch_2"]  # no leftovers
    val_one, val_two = (
        [c["training_metrics"]["validation_loss"] for c in run["checkpoints"]] for run in runs
    )
    assert val_two == pytest.approx(val_one, rel=LOSS_RTOL)

    from peft import PeftModel
    from transformers import LlamaForCausalLM

    def logits(epoch: Path) -> torch.Tensor:
        base = LlamaForCausalLM.from_pretrained(model, dtype=torch.float32)
        tuned = PeftModel.from_pretrained(base, epoch / "adapter")
        with torch.no_grad():
            return tuned(torch.tensor([[5, 17, 42, 99, 120, 7, 3]])).logits

    ones = Path(job_artifacts(client, one["job"])["checkpoints"][-1]["path"])
    assert torch.allclose(logits(ones), logits(Path(checkpoints[-1]["path"])), atol=1e-4)


def test_torchtune_refuses_a_batch_the_ranks_do_not_divide(two_ranks, tiny_models, tmp_path):
    client = two_ranks.client()
    ds = register_rows(client, tmp_path, instruct_rows(4))
    with pytest.raises(APIStatusError) as err:
        submit(client, new_id("odd"), str(tiny_models / "hf"), ds,
               training_config=training_config(ds, data_config={"batch_size": 3}))  # fmt: skip
    assert err.value.status_code == 400
    assert "batch_size (3) does not divide over the 2 devices" in str(err.value)
