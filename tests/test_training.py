"""The train step on its own (no server, no KFP): seeded runs repeat exactly, and the
request's optimizer settings reach torchtune."""

from __future__ import annotations

import json
from pathlib import Path

from harness.demo_data import instruct_rows
from llama_stack_provider_kfp.core.data_uri import write_jsonl
from llama_stack_provider_kfp.core.model_source import inspect_model_dir
from llama_stack_provider_kfp.core.spec import DataSpec, JobSpec, LoraSpec, OptimSpec, TrainSpec
from llama_stack_provider_kfp.training.prepare import prepare
from llama_stack_provider_kfp.training.steps import train_step
from llama_stack_provider_kfp.training.torchtune.engine import build_config


def _spec(model_dir: Path, out: Path, data: Path, **optim) -> JobSpec:
    model = inspect_model_dir("tiny", model_dir)
    return JobSpec(
        job_uuid="t",
        model=model,
        data=DataSpec(uri=str(data), data_format="instruct"),
        train=TrainSpec(epochs=1, max_steps_per_epoch=4, gradient_accumulation_steps=2,
                        batch_size=2, shuffle=True, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=64, seed=7, device="cpu"),
        lora=LoraSpec(rank=4, alpha=8, attn_modules=["q_proj", "v_proj"], apply_to_mlp=False,
                      apply_to_output=False),
        optim=OptimSpec(**{"type": "adamw", "lr": 1e-2, "weight_decay": 0.0,
                           "warmup_steps": 1, **optim}),
        output_format=model.layout,
        output_uri=str(out),
    )  # fmt: skip


def _train(spec: JobSpec, work: Path) -> list:
    js = spec.model_dump_json()
    prepare(js, spec.data.uri, "", str(work / "train.jsonl"), str(work / "val.jsonl"))
    train_step(js, spec.model.path, spec.output_uri, str(work / "train.jsonl"),
                 str(work / "val.jsonl"))  # fmt: skip
    return json.loads((Path(spec.output_uri) / "progress.json").read_text())["loss_history"]


def test_seeded_runs_repeat_and_settings_matter(tiny_models, tmp_path):
    data = write_jsonl(instruct_rows(20), tmp_path / "rows.jsonl")
    runs = {}
    for name, optim in (("a", {}), ("b", {}), ("sgd", {"type": "sgd"})):
        (tmp_path / name).mkdir()
        spec = _spec(tiny_models / "hf", tmp_path / name / "out", data, **optim)
        runs[name] = _train(spec, tmp_path / name)
    assert len(runs["a"]) == 4  # max_steps_per_epoch=4 optimizer steps (2 batches each)
    assert runs["a"] == runs["b"]
    assert runs["sgd"] != runs["a"]


def test_optimizer_and_schedule_reach_torchtune(tiny_models, tmp_path):
    spec = _spec(tiny_models / "hf", tmp_path / "o", tmp_path / "d.jsonl", type="sgd",
                 weight_decay=0.05, warmup_steps=3)  # fmt: skip
    cfg = build_config(spec, spec.model.path, tmp_path, "t.jsonl", None, str(tmp_path))
    assert cfg["optimizer"] == {"_component_": "torch.optim.SGD", "lr": 1e-2,
                                "weight_decay": 0.05}  # fmt: skip
    assert cfg["lr_scheduler"]["num_warmup_steps"] == 3
    assert cfg["model"]["_component_"] == "torchtune.models.llama3_2.lora_llama3_2"
    assert cfg["model"]["scale_factor"] == 32.0


def test_progress_epochs_and_throttle(tmp_path):
    from llama_stack_provider_kfp.training.progress import ProgressLogger

    logger = ProgressLogger(str(tmp_path / "progress.json"))
    logger.begin(total_steps=8, steps_per_epoch=4, total_epochs=2)
    epochs = []
    for step in range(1, 9):
        logger.log_dict({"loss": 10.0 - step, "tokens_per_second_per_gpu": 100.0}, step)
        logger._flush()
        epochs.append(json.loads((tmp_path / "progress.json").read_text())["progress"]["epoch"])
    assert epochs == [1, 1, 1, 1, 2, 2, 2, 2]
    assert len(logger.history) == 8
