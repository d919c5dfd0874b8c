"""End to end: real server, real client, kfp.local, torchtune LoRA on a tiny model.

For each input layout (Hugging Face, Meta) a job runs to `completed`, and then:
- every epoch has merged weights + a PEFT adapter on disk;
- peft's PeftModel (base + adapter) gives the same logits as the merged checkpoint
  (fp32; max abs difference <= 1e-4 on logits of magnitude ~20 — only the order of the
  floating-point sums differs between W x + B(A x) and (W + BA) x);
- the loss on a learnable toy task falls well below where it started;
- the dataset has more than 10 rows, its row count is not a multiple of the batch size, and
  every row is trained on in every epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import SERVER_SECRETS

from harness.demo_data import instruct_rows
from llama_stack_provider_kfp.client import job_artifacts

from .helpers import new_id, register_rows, submit, training_config, wait_done

pytestmark = pytest.mark.e2e

ROWS = 50  # > 10 and not a multiple of the batch size (4): the last batch holds 2 rows
EPOCHS = 2
IDS = torch.tensor([[128000, 71, 114, 101, 101, 116, 32, 65, 100, 97, 46]])  # "Greet Ada."
LOGIT_ATOL = 1e-4


def _hf_logits(model_dir: Path) -> torch.Tensor:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        return model(IDS).logits


def _peft_logits(base_dir: Path, adapter_dir: Path) -> torch.Tensor:
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter_dir)
    with torch.no_grad():
        return model(IDS).logits


def _meta_logits(merged_dir: Path, hf_twin: Path) -> torch.Tensor:
    """Logits of a merged Meta checkpoint, run through transformers with the twin's config."""
    from torchtune.models import convert_weights
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig.from_pretrained(hf_twin)
    sd = torch.load(merged_dir / "consolidated.00.pth", weights_only=True)
    hf_sd = convert_weights.tune_to_hf(
        convert_weights.meta_to_tune(sd),
        num_heads=config.num_attention_heads,
        num_kv_heads=config.num_key_value_heads,
        dim=config.hidden_size,
    )
    model = LlamaForCausalLM(config)
    missing, unexpected = model.load_state_dict(hf_sd, strict=False)
    assert not [k for k in missing if k != "lm_head.weight"] and not unexpected
    model.eval()
    with torch.no_grad():
        return model(IDS).logits


def _check_run(status: dict, rows: int, epochs: int) -> dict:
    assert status["status"] == "completed", status.get("resources_allocated")
    res = status["resources_allocated"]
    result = res["result"]
    # Every row, every epoch (nothing truncated, last partial batch kept).
    assert result["train_rows"] == rows
    assert result["samples_seen"] == rows * epochs
    # Learned: the last steps' loss is far below the first step's.
    history = [loss for _, loss in res["loss_history"]]
    assert len(history) == res["progress"]["total_steps"]
    tail = sum(history[-3:]) / 3
    assert tail < 0.6 * history[0], history
    _check_phases(res)
    assert [c["epoch"] for c in status["checkpoints"]] == list(range(1, epochs + 1))
    for c in status["checkpoints"]:
        d = Path(c["path"])
        metrics = json.loads((d / "metrics.json").read_text())
        assert metrics["samples_seen"] == rows
        assert (d / "adapter" / "adapter_config.json").is_file()
        assert (d / "adapter" / "adapter_model.safetensors").is_file()
    return result


TRAIN_PHASES = ["step_entered", "imports_done", "model_loaded", "first_step", "training_done",
                "exports_done", "done"]  # fmt: skip


def _check_phases(res: dict) -> None:
    """Every process of the job reports its phases (seconds from its own start), in the order
    they happen, the processes one after the other; the job's log has one line per phase.
    Nothing here is about how long they take."""
    phases = res["phases"]
    assert "phases" not in res["result"]  # shown once, at the top
    worker, prep, train = phases["worker"], phases["prepare-data"], phases["train"]
    assert [k for k in worker if k != "started_at"] == ["pipeline_started", "pipeline_done"]
    assert [k for k in prep if k != "started_at"] == ["step_entered", "done"]
    marks = [k for k in train if k not in ("started_at", "export_seconds")]
    assert marks == TRAIN_PHASES
    assert [train[k] for k in marks] == sorted(train[k] for k in marks)
    assert 0 < train["export_seconds"] <= train["exports_done"]
    tick = 0.02  # started_at and the marks are rounded to 10 ms

    def at(process: dict, mark: str) -> float:
        return process["started_at"] + process[mark]

    assert worker["started_at"] <= prep["started_at"] <= at(prep, "done") + tick
    assert at(worker, "pipeline_started") <= prep["started_at"] + tick
    assert at(prep, "done") <= train["started_at"] + tick
    assert at(train, "done") <= at(worker, "pipeline_done") + tick
    log = (Path(res["job_dir"]) / "worker.log").read_text()
    for name, process in phases.items():
        for mark in process:
            if mark not in ("started_at", "export_seconds"):
                assert f"phase: {name} {mark} at " in log, (name, mark)


def test_finetune_hf_layout(client, server, tiny_models, tmp_path):
    dataset = register_rows(client, tmp_path, instruct_rows(ROWS, seed=1))
    job = new_id("hf")
    submit(client, job, str(tiny_models / "hf"), dataset,
           training_config=training_config(dataset, n_epochs=EPOCHS))  # fmt: skip
    status = wait_done(client, job)
    _check_run(status, ROWS, EPOCHS)
    # Training metrics need a validation set; there is none here.
    assert all(c["training_metrics"] is None for c in status["checkpoints"])

    last = Path(status["checkpoints"][-1]["path"])
    merged = last / "merged"
    assert (merged / "model.safetensors").is_file() and (merged / "config.json").is_file()
    assert (merged / "original" / "tokenizer.model").is_file()
    assert not (merged / "adapter_config.json").exists()  # transformers 5 would misread it

    base = _hf_logits(tiny_models / "hf")
    merged_logits = _hf_logits(merged)
    peft_logits = _peft_logits(tiny_models / "hf", last / "adapter")
    assert (merged_logits - base).abs().max() > 1.0  # the adapter changed the model
    assert torch.allclose(peft_logits, merged_logits, atol=LOGIT_ATOL, rtol=0)

    artifacts = job_artifacts(client, job)
    assert [c["path"] for c in artifacts["checkpoints"]] == [
        c["path"] for c in status["checkpoints"]
    ]
    _assert_no_secret_anywhere(server, status)


def _assert_no_secret_anywhere(server, status: dict) -> None:
    """The credentials in the server's environment reach no log (server, worker, pipeline
    steps), job record, pipeline artifact or output file, and no status response."""
    texts = [json.dumps(status), server.log.read_text(errors="replace")]
    read = 0
    for path in server.root.rglob("*"):
        if path.is_file() and path.suffix in ("", ".log", ".json", ".jsonl", ".txt", ".yaml"):
            texts.append(path.read_text(errors="replace"))
            read += 1
    everything = "\n".join(texts)
    assert read > 10 and "worker" in everything  # worker.log, state.json, executor outputs...
    assert "prepare-data:" in everything  # the step's own output (in worker.log)
    for name, secret in SERVER_SECRETS.items():
        assert secret not in everything, name


def test_finetune_meta_layout_with_validation(client, tiny_models, tmp_path):
    # Training rows registered inline (fetched once through datasetio), validation by URI.
    train_id = new_id("rows")
    client.beta.datasets.register(
        purpose="post-training/messages",
        source={"type": "rows", "rows": instruct_rows(ROWS, seed=2)},
        dataset_id=train_id,
    )
    val_id = register_rows(client, tmp_path, instruct_rows(12, seed=3))
    job = new_id("meta")
    tc = training_config(
        train_id,
        n_epochs=EPOCHS,
        max_validation_steps=None,
        data_config={"validation_dataset_id": val_id},
    )
    submit(client, job, str(tiny_models / "meta"), train_id, training_config=tc)
    status = wait_done(client, job)
    result = _check_run(status, ROWS, EPOCHS)
    assert result["validation_rows"] == 12

    metrics = [c["training_metrics"] for c in status["checkpoints"]]
    assert all(m is not None for m in metrics)
    assert metrics[-1]["validation_loss"] < metrics[0]["validation_loss"]
    for m in metrics:
        assert m["perplexity"] == pytest.approx(torch.tensor(m["validation_loss"]).exp().item())

    last = Path(status["checkpoints"][-1]["path"])
    merged = last / "merged"
    assert {p.name for p in merged.iterdir()} >= {
        "consolidated.00.pth",
        "params.json",
        "tokenizer.model",
    }
    # The PEFT adapter is in HF key space: load it onto the HF twin of the same base weights.
    peft_logits = _peft_logits(tiny_models / "hf", last / "adapter")
    meta_logits = _meta_logits(merged, tiny_models / "hf")
    assert torch.allclose(peft_logits, meta_logits, atol=LOGIT_ATOL, rtol=0)


def test_dora_all_modules_untied_model(client, tmp_path):
    """DoRA on every attention projection, the MLP and the (untied) output layer."""
    import subprocess
    import sys

    from harness.server import ROOT

    models = tmp_path / "untied"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make-tiny-model.py"), "--out", str(models),
         "--layout", "hf", "--untied", "--seed", "1"],
        check=True, capture_output=True,
    )  # fmt: skip
    dataset = register_rows(client, tmp_path, instruct_rows(24, seed=4))
    algo = {
        "type": "LoRA",
        "lora_attn_modules": ["q_proj", "k_proj", "v_proj", "output_proj"],
        "apply_lora_to_mlp": True,
        "apply_lora_to_output": True,
        "rank": 4,
        "alpha": 8,
        "use_dora": True,
    }
    job = new_id("dora")
    submit(client, job, str(models / "hf"), dataset, algorithm_config=algo,
           training_config=training_config(dataset, n_epochs=1))  # fmt: skip
    status = wait_done(client, job)
    assert status["status"] == "completed", status["resources_allocated"]
    last = Path(status["checkpoints"][-1]["path"])
    config = json.loads((last / "adapter" / "adapter_config.json").read_text())
    assert config["use_dora"] is True
    assert set(config["target_modules"]) == {
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head",
    }  # fmt: skip
    peft_logits = _peft_logits(models / "hf", last / "adapter")
    merged_logits = _hf_logits(last / "merged")
    assert (merged_logits - _hf_logits(models / "hf")).abs().max() > 1.0
    assert torch.allclose(peft_logits, merged_logits, atol=LOGIT_ATOL, rtol=0)
