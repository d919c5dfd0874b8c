"""Gradient clipping in the Hugging Face engine, on the train step (no server, no KFP): one
step whose gradient norm exceeds the bound moves the weights exactly as
torch.nn.utils.clip_grad_norm_ applied by hand, and the norm before clipping is in progress."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from harness.demo_data import instruct_rows
from harness.tiny_families import make
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
from llama_stack_provider_kfp.core.spec import (
    DataSpec,
    EngineChoice,
    JobSpec,
    OptimSpec,
    TrainSpec,
)
from llama_stack_provider_kfp.training.huggingface import data, logits
from llama_stack_provider_kfp.training.huggingface.engine import _load_tokenizer
from llama_stack_provider_kfp.training.prepare import prepare
from llama_stack_provider_kfp.training.steps import train_step

LR = 0.5  # SGD without momentum or decay: the update is exactly -LR * gradient
BOUND = 0.05


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make("smollm2", tmp_path_factory.mktemp("clip") / "smollm2")


def _spec(model_dir: Path, work: Path, max_grad_norm: float | None) -> JobSpec:
    rows = write_jsonl(instruct_rows(4, seed=5), work / "rows.jsonl")
    return JobSpec(
        job_uuid="clip", engine=EngineChoice(name="huggingface", reason="test"),
        model=inspect_model_dir(model_dir.name, model_dir),
        data=DataSpec(uri=str(rows), data_format="instruct"),
        train=TrainSpec(epochs=1, max_steps_per_epoch=1, gradient_accumulation_steps=1,
                        batch_size=4, shuffle=False, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=96, seed=3, device="cpu",
                        max_grad_norm=max_grad_norm),
        lora=None,
        optim=OptimSpec(type="sgd", lr=LR, weight_decay=0.0, warmup_steps=0),
        output_format="huggingface", output_uri=str(work / "out"),
    )  # fmt: skip


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _by_hand(model_dir: Path, train_path: str) -> tuple[dict, dict, float]:
    """(weights after one clipped SGD step, after an unclipped one, norm before clipping)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    tokenizer = _load_tokenizer(model_dir)
    batch = data.collate(data.load(train_path, tokenizer, 96, False), tokenizer.pad_token_id)
    logits.mean_nll(model, batch).backward()
    params = dict(model.named_parameters())
    raw = {n: p.grad.clone() for n, p in params.items()}
    norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), BOUND))
    clipped = {n: (p - LR * p.grad).detach() for n, p in params.items()}
    unclipped = {n: (p - LR * raw[n]).detach() for n, p in params.items()}
    return clipped, unclipped, norm


def test_a_step_above_the_bound_is_clipped_as_clip_grad_norm_does(model_dir, tmp_path):
    spec = _spec(model_dir, tmp_path, BOUND)
    train, val = str(tmp_path / "t.jsonl"), str(tmp_path / "v.jsonl")
    prepare(spec, train, val)
    result = train_step(spec.model_dump_json(), str(model_dir), spec.output_uri, train, val)
    assert result["global_step"] == 1
    got = _weights(tmp_path / "out" / "checkpoints" / "epoch_1" / "merged")
    clipped, unclipped, norm = _by_hand(model_dir, train)
    assert norm > 10 * BOUND  # the bound bites: clipped and unclipped updates differ
    worst = max(float((got[n] - clipped[n]).abs().max()) for n in clipped)
    assert worst <= 1e-6
    assert max(float((got[n] - unclipped[n]).abs().max()) for n in clipped) > 1e-3
    progress = json.loads((tmp_path / "out" / "progress.json").read_text())["progress"]
    assert progress["grad_norm"] == pytest.approx(norm, rel=1e-5)
