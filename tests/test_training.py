"""The train step on its own (no server, no KFP): seeded runs repeat exactly, the request's
optimizer settings reach torchtune, the API's default dtype (bf16) trains, checkpoints convert
between the Meta and Hugging Face layouts, and train_on_input decides what is learned."""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file

from harness.demo_data import instruct_rows
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
from llama_stack_provider_kfp.core.spec import DataSpec, JobSpec, LoraSpec, OptimSpec, TrainSpec
from llama_stack_provider_kfp.training.prepare import prepare
from llama_stack_provider_kfp.training.steps import train_step
from llama_stack_provider_kfp.training.torchtune.engine import build_config


def _spec(model_dir: Path, out: Path, data: Path, output_format=None, dtype="fp32",
          train_on_input=False, packed=False, **optim) -> JobSpec:  # fmt: skip
    model = inspect_model_dir("tiny", model_dir)
    return JobSpec(
        job_uuid="t",
        model=model,
        data=DataSpec(uri=str(data), data_format="instruct"),
        train=TrainSpec(epochs=1, max_steps_per_epoch=4, gradient_accumulation_steps=2,
                        batch_size=2, shuffle=True, train_on_input=train_on_input, dtype=dtype,
                        packed=packed,
                        max_validation_steps=None, max_seq_len=64, seed=7, device="cpu"),
        lora=LoraSpec(rank=4, alpha=8, attn_modules=["q_proj", "v_proj"], apply_to_mlp=False,
                      apply_to_output=False),
        optim=OptimSpec(**{"type": "adamw", "lr": 1e-2, "weight_decay": 0.0,
                           "warmup_steps": 1, **optim}),
        output_format=output_format or model.layout,
        output_uri=str(out),
    )  # fmt: skip


def _train(spec: JobSpec, work: Path) -> list:
    js = spec.model_dump_json()
    prepare(spec, str(work / "train.jsonl"), str(work / "val.jsonl"))
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
    rows = write_jsonl([{"messages": []}] * 40, tmp_path / "t.jsonl")
    cfg = build_config(spec, spec.model.path, tmp_path, str(rows), None, str(tmp_path))
    assert cfg["optimizer"] == {"_component_": "torch.optim.SGD", "lr": 1e-2,
                                "weight_decay": 0.05}  # fmt: skip
    assert cfg["lr_scheduler"]["num_warmup_steps"] == 3
    # An omitted optimizer_config: warm-up is a share of the job's steps (40 rows, batch 2,
    # accumulation 2, at most 4 steps an epoch: 4 steps; 0.5 of them = 2).
    ratio = spec.model_copy(update={"optim": spec.optim.model_copy(
        update={"warmup_steps": None, "warmup_ratio": 0.5})})  # fmt: skip
    cfg = build_config(ratio, spec.model.path, tmp_path, str(rows), None, str(tmp_path))
    assert cfg["lr_scheduler"]["num_warmup_steps"] == 2
    assert cfg["clip_grad_norm"] is None  # a spec without max_grad_norm: torchtune never clips
    assert cfg["model"]["_component_"] == "torchtune.models.llama3_2.lora_llama3_2"
    assert cfg["model"]["scale_factor"] == 32.0


def test_torchtune_clips_and_reports_the_norm_before_clipping(tiny_models, tmp_path):
    data = write_jsonl(instruct_rows(8), tmp_path / "rows.jsonl")
    spec = _spec(tiny_models / "hf", tmp_path / "out", data)
    spec = spec.model_copy(update={"train": spec.train.model_copy(
        update={"max_steps_per_epoch": 1, "max_grad_norm": 1e-4})})  # fmt: skip
    _train(spec, tmp_path)
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())["progress"]
    assert progress["grad_norm"] > 1e-4  # torchtune's clip_grad_norm_ returns the norm before


def test_default_dtype_bf16_trains(tiny_models, tmp_path):
    data = write_jsonl(instruct_rows(20), tmp_path / "rows.jsonl")
    spec = _spec(tiny_models / "hf", tmp_path / "out", data, dtype="bf16")
    history = _train(spec, tmp_path)
    assert len(history) == 4 and all(math.isfinite(loss) for _, loss in history)
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["dtype"] == "bf16"
    merged = load_file(
        tmp_path / "out" / "checkpoints" / "epoch_1" / "merged" / "model.safetensors"
    )
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}


def _merged_in_tune_keys(epoch_dir: Path, arch) -> dict:
    from torchtune.models import convert_weights

    merged = epoch_dir / "merged"
    if (merged / "consolidated.00.pth").is_file():
        assert (merged / "params.json").is_file() and (merged / "tokenizer.model").is_file()
        sd = torch.load(merged / "consolidated.00.pth", weights_only=True)
        sd.pop("output.weight")  # tied: Meta checkpoints still store it
        return convert_weights.meta_to_tune(sd)
    assert (merged / "config.json").is_file()
    assert (merged / "original" / "tokenizer.model").is_file()
    sd = load_file(merged / "model.safetensors")
    return convert_weights.hf_to_tune(
        sd, num_heads=arch.num_heads, num_kv_heads=arch.num_kv_heads, dim=arch.embed_dim
    )


def test_checkpoint_format_converts_between_layouts(tiny_models, tmp_path):
    # Both tiny layouts hold the same weights, and training is seeded: the same job from either
    # layout into either layout must give the same merged weights.
    data = write_jsonl(instruct_rows(20), tmp_path / "rows.jsonl")
    runs = {}
    for src, fmt in (("hf", "huggingface"), ("hf", "meta"), ("meta", "huggingface")):
        work = tmp_path / f"{src}-{fmt}"
        work.mkdir()
        spec = _spec(tiny_models / src, work / "out", data, output_format=fmt)
        _train(spec, work)
        runs[(src, fmt)] = _merged_in_tune_keys(work / "out" / "checkpoints" / "epoch_1",
                                                spec.model.arch)  # fmt: skip
    reference = runs[("hf", "huggingface")]
    for key, sd in runs.items():
        assert sd.keys() == reference.keys(), key
        for name, tensor in sd.items():
            assert torch.allclose(tensor, reference[name], atol=1e-6), (key, name)


def test_train_on_input_decides_what_is_learned(tiny_models, tmp_path):
    from torchtune import config as tt_config

    data = write_jsonl(instruct_rows(4), tmp_path / "rows.jsonl")
    prepare(_spec(tiny_models / "hf", tmp_path, data), str(tmp_path / "t.jsonl"),
            str(tmp_path / "v.jsonl"))  # fmt: skip
    labelled = {}
    for flag in (False, True):
        spec = _spec(tiny_models / "hf", tmp_path, data, train_on_input=flag)
        cfg = OmegaConf.create(
            build_config(
                spec, spec.model.path, tmp_path, str(tmp_path / "t.jsonl"), None, str(tmp_path)
            )
        )
        tokenizer = tt_config.instantiate(cfg.tokenizer)
        sample = tt_config.instantiate(cfg.dataset, tokenizer)[0]
        labelled[flag] = sum(1 for x in sample["labels"] if x != -100)
        assert len(sample["tokens"]) == len(sample["labels"])
    answer = len("Hello, Ada! Nice to meet you.")  # byte-level tokenizer: a token per byte
    assert answer <= labelled[False] < labelled[True]  # the prompt is learned only when asked


def test_packed_rows_train_with_torchtune(tiny_models, tmp_path):
    data = write_jsonl(instruct_rows(20), tmp_path / "rows.jsonl")
    spec = _spec(tiny_models / "hf", tmp_path / "out", data, packed=True)
    spec = spec.model_copy(update={"train": spec.train.model_copy(
        update={"max_steps_per_epoch": None, "gradient_accumulation_steps": 1,
                "max_seq_len": 256})})  # fmt: skip
    history = _train(spec, tmp_path)
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert result["train_rows"] == 20 and result["samples_seen"] == 20  # every row once
    # 20 rows of ~55 tokens in rows of 256: fewer optimizer steps than 10 unpacked batches.
    assert 0 < len(history) < 10


def test_qlora_nf4_trains_on_the_cpu(tmp_path):
    # NF4 quantizes in blocks of 64 x 256 values: each adapted matrix needs a multiple of
    # 16384 elements, so this tiny model is 128 wide with as many KV heads as heads.
    import subprocess
    import sys

    from harness.server import ROOT

    subprocess.run([sys.executable, str(ROOT / "scripts" / "make-tiny-model.py"), "--out",
                    str(tmp_path / "m"), "--layout", "hf", "--dim", "128", "--kv-heads", "4"],
                   check=True, capture_output=True)  # fmt: skip
    data = write_jsonl(instruct_rows(8), tmp_path / "rows.jsonl")
    spec = _spec(tmp_path / "m" / "hf", tmp_path / "out", data, dtype="bf16")
    lora = spec.lora.model_copy(update={"quantize_base": True, "apply_to_mlp": True})
    train = spec.train.model_copy(update={"max_steps_per_epoch": 2,
                                          "gradient_accumulation_steps": 1})  # fmt: skip
    history = _train(spec.model_copy(update={"lora": lora, "train": train}), tmp_path)
    assert len(history) == 2 and history[-1][1] < history[0][1]
    from transformers import AutoModelForCausalLM

    epoch = tmp_path / "out" / "checkpoints" / "epoch_1"
    merged = AutoModelForCausalLM.from_pretrained(epoch / "merged", dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "m" / "hf", dtype=torch.float32)
    ids = torch.tensor([[128000, 71, 114, 101]])
    with torch.no_grad():
        assert float((merged(ids).logits - base(ids).logits).abs().max()) > 1e-2
    assert (epoch / "adapter" / "adapter_model.safetensors").is_file()
