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
from model_checks import logits

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
    ones = Path(job_artifacts(client, one["job"])["checkpoints"][-1]["path"])
    last = Path(checkpoints[-1]["path"])
    assert torch.allclose(
        logits(model, ones / "adapter"), logits(model, last / "adapter"), atol=1e-4
    )
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


def _torchtune_pair(clients, model: Path, tmp: Path, batches: int, epochs: int, **kw) -> list:
    """The same torchtune job on one rank and on two: `batches` batches of 4 rows an epoch
    (no padding)."""
    runs, training = [], kw.pop("training", {})
    for c in clients:
        ds = register_rows(c, tmp, instruct_rows(4 * batches, seed=5), name=new_id("tt-rows"))
        val = register_rows(c, tmp, instruct_rows(6, seed=6), name=new_id("tt-val"))
        job = new_id("tt-ranks")
        tc = training_config(ds, n_epochs=epochs, max_validation_steps=None,
                             data_config={"validation_dataset_id": val},
                             **training)  # fmt: skip
        submit(c, job, str(model), ds, training_config=tc, **kw)
        status = wait_done(c, job)
        assert status["status"] == "completed", status["resources_allocated"]
        assert status["resources_allocated"]["engine"]["name"] == "torchtune"
        runs.append({"job": job, "client": c, **status})
    return runs


def _max_rel(a: list[float], b: list[float]) -> float:
    return max(abs(x - y) / abs(y) for x, y in zip(a, b, strict=True))


def test_two_ranks_train_the_one_rank_torchtune_curve(client, two_ranks, tiny_models, tmp_path):
    """torchtune's distributed recipe (FSDP2) on 2 CPU ranks, each with batch_size / 2 rows:
    12 rows, global batch 4, accumulation 2, 2 epochs of 2 steps, validated each epoch. Each
    epoch's third micro-batch is a short accumulation group: a step of its own, closed by a
    filler micro-batch on every rank (training/torchtune/groups.py), the one rank's curve."""
    model = tiny_models / "hf"
    one, two = runs = _torchtune_pair((client, two_ranks.client()), model, tmp_path, 3, 2,
                                      training={"gradient_accumulation_steps": 2})  # fmt: skip

    worker_log = (two_ranks.jobs_dir / two["job"] / "worker.log").read_text()
    assert "train: 2 ranks" in worker_log and "rank_main" in worker_log
    res = two["resources_allocated"]
    curve_one, curve_two = one["resources_allocated"]["loss_history"], res["loss_history"]
    assert [s for s, _ in curve_two] == [1, 2, 3, 4]  # every step once: rank 0 only
    losses_one, losses_two = ([loss for _, loss in c] for c in (curve_one, curve_two))
    print(
        "torchtune: max relative loss difference, 2 ranks vs 1:", _max_rel(losses_two, losses_one)
    )
    assert losses_two == pytest.approx(losses_one, rel=LOSS_RTOL)
    assert res["progress"]["step"] == res["progress"]["total_steps"] == 4
    assert res["progress"]["epoch"] == res["progress"]["total_epochs"] == 2
    result_one = one["resources_allocated"]["result"]
    assert res["result"]["samples_seen"] == result_one["samples_seen"] == 24

    checkpoints = job_artifacts(two["client"], two["job"])["checkpoints"]
    assert [Path(c["path"]).name for c in checkpoints] == ["epoch_1", "epoch_2"]
    out = Path(checkpoints[-1]["path"]).parent
    assert sorted(p.name for p in out.iterdir()) == ["epoch_1", "epoch_2"]  # no leftovers
    val_one, val_two = (
        [c["training_metrics"]["validation_loss"] for c in run["checkpoints"]] for run in runs
    )
    print("torchtune: validation losses, 1 rank / 2 ranks:", val_one, val_two)
    assert val_two == pytest.approx(val_one, rel=LOSS_RTOL)

    ones = Path(job_artifacts(client, one["job"])["checkpoints"][-1]["path"])
    got, want = (logits(model, e / "adapter") for e in (Path(checkpoints[-1]["path"]), ones))
    print("torchtune: max logit difference, 2 ranks vs 1:", float((got - want).abs().max()))
    assert torch.allclose(got, want, atol=1e-4)


def test_two_ranks_torchtune_dora_with_sharded_embeddings(client, two_ranks, tmp_path):
    """An untied model: memory_efficient_fsdp_wrap shards its embeddings and output as FSDP
    units of their own; DoRA on every projection and the output; the curve is one rank's.
    (fsdp_cpu_offload does nothing on the CPU; one rank ignores both options.)"""
    import subprocess
    import sys

    from harness.server import ROOT

    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make-tiny-model.py"), "--out",
         str(tmp_path / "untied"), "--layout", "hf", "--untied", "--seed", "1"],
        check=True, capture_output=True,
    )  # fmt: skip
    model = tmp_path / "untied" / "hf"
    algo = {"type": "LoRA", "lora_attn_modules": ["q_proj", "k_proj", "v_proj", "output_proj"],
            "apply_lora_to_mlp": True, "apply_lora_to_output": True, "rank": 4, "alpha": 8,
            "use_dora": True}  # fmt: skip
    efficiency = {"fsdp_cpu_offload": True, "memory_efficient_fsdp_wrap": True}
    one, two = _torchtune_pair((client, two_ranks.client()), model, tmp_path, 3, 1,
                               algorithm_config=algo,
                               training={"efficiency_config": efficiency})  # fmt: skip
    curves = [[loss for _, loss in r["resources_allocated"]["loss_history"]] for r in (one, two)]
    print("torchtune DoRA: max relative loss difference, 2 ranks vs 1:", _max_rel(*curves[::-1]))
    assert len(curves[1]) == 3 and curves[1] == pytest.approx(curves[0], rel=LOSS_RTOL)
    last = [
        Path(job_artifacts(r["client"], r["job"])["checkpoints"][-1]["path"]) for r in (one, two)
    ]
    assert json.loads((last[1] / "adapter" / "adapter_config.json").read_text())["use_dora"]
    got, want = logits(model, last[1] / "adapter"), logits(model, last[0] / "adapter")
    print("torchtune DoRA: max logit difference, 2 ranks vs 1:", float((got - want).abs().max()))
    assert torch.allclose(got, want, atol=1e-4)


def test_torchtune_refuses_a_batch_the_ranks_do_not_divide(two_ranks, tiny_models, tmp_path):
    client = two_ranks.client()
    ds = register_rows(client, tmp_path, instruct_rows(4))
    with pytest.raises(APIStatusError) as err:
        submit(client, new_id("odd"), str(tiny_models / "hf"), ds,
               training_config=training_config(ds, data_config={"batch_size": 3}))  # fmt: skip
    assert err.value.status_code == 400
    assert "batch_size (3) does not divide over the 2 devices" in str(err.value)
