"""A short last accumulation group is an optimizer step of its own on both engines: the same
request counts the same steps on either, and torchtune's unchanged loop steps on it through
filler micro-batches that add nothing to its gradient (training/torchtune/groups.py)."""

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
    LoraSpec,
    OptimSpec,
    TrainSpec,
)
from llama_stack_provider_kfp.training.prepare import prepare
from llama_stack_provider_kfp.training.steps import train_step
from llama_stack_provider_kfp.training.torchtune.groups import FilledGroups, ZeroLossWhileFilling

IGNORE = -100


def _batches(sizes: list[int]) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    out = []
    for rows in sizes:
        labels = torch.randint(0, 5, (rows, 3), generator=gen)
        labels[:, 0] = IGNORE  # the prompt's tokens
        out.append({"tokens": torch.randint(0, 5, (rows, 3), generator=gen), "labels": labels})
    return out


def _group_grads(loader, model: torch.nn.Module, loss_fn, accum: int) -> list[torch.Tensor]:
    """The gradient of each optimizer step, accumulated as torchtune's loop does (token-
    weighted losses, scaled by the group's label tokens at the step)."""
    grads, tokens = [], 0
    for idx, batch in enumerate(loader):
        n = (batch["labels"] != IGNORE).sum()
        tokens += n
        logits = model(batch["tokens"])
        loss = loss_fn(logits.reshape(-1, 5), batch["labels"].reshape(-1)) * n
        loss.backward()
        if (idx + 1) % accum == 0:
            grads.append(model.weight.grad.clone() / tokens)
            model.weight.grad, tokens = None, 0
    return grads


def test_fillers_close_the_last_group_without_changing_its_gradient():
    torch.manual_seed(0)
    model = torch.nn.Embedding(5, 5)
    ce = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)  # NaN on a batch with no label
    ce.ignore_index = IGNORE
    real = _batches([2, 2, 2, 2, 1])  # 5 micro-batches, accumulation 3: groups of 3 and 2

    class Loader(list):
        sampler, dataset = "sampler", "dataset"

    groups = FilledGroups(Loader(real), 3, IGNORE)
    assert len(groups) == 6 and groups.sampler == "sampler" and groups.dataset == "dataset"
    filled = _group_grads(groups, model, ZeroLossWhileFilling(ce, groups), 3)
    assert not groups.filling  # reset once the epoch is over: validation losses stay real
    alone = [_group_grads(real[:3], model, ce, 3)[0], _group_grads(real[3:], model, ce, 2)[0]]
    assert len(filled) == 2 and all(torch.isfinite(g).all() for g in filled)
    for got, want in zip(filled, alone, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-7)
    # A loop that stops right after a filler (max_steps_per_epoch) leaves no filling behind.
    for idx, _ in enumerate(groups):
        if idx == 4:
            assert groups.filling is False
        if idx == 5:
            assert groups.filling is True
            break
    assert groups.filling is False
    # Nothing to fill: the loader's own batches only.
    assert len(FilledGroups(Loader(real[:3]), 3, IGNORE)) == 3


def _run(model_dir: Path, work: Path, engine: str, rule: str) -> tuple[dict, dict]:
    """torchtune: the tiny Llama; Hugging Face: a tiny SmolLM2 (a Llama too, with the
    tokenizer.json that engine reads). The count depends on rows and batches only."""
    work.mkdir()
    if engine == "huggingface":
        model_dir = make("smollm2", work / "smollm2")
    data = write_jsonl(instruct_rows(10), work / "rows.jsonl")  # 5 batches of 2
    spec = JobSpec(
        job_uuid="g", engine=EngineChoice(name=engine, reason="test"),
        model=inspect_model_dir(model_dir.name, model_dir),
        data=DataSpec(uri=str(data), data_format="instruct"),
        train=TrainSpec(epochs=2, max_steps_per_epoch=None, gradient_accumulation_steps=2,
                        batch_size=2, shuffle=False, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=160, seed=5, device="cpu",
                        short_last_group=rule),
        lora=LoraSpec(rank=4, alpha=8, attn_modules=["q_proj", "v_proj"], apply_to_mlp=False,
                      apply_to_output=False),
        optim=OptimSpec(type="adamw", lr=1e-3, weight_decay=0.0, warmup_steps=0),
        output_format="huggingface", output_uri=str(work / "out"),
    )  # fmt: skip
    prepare(spec, str(work / "t.jsonl"), str(work / "v.jsonl"))
    result = train_step(spec.model_dump_json(), spec.model.path, spec.output_uri,
                        str(work / "t.jsonl"), str(work / "v.jsonl"))  # fmt: skip
    return result, json.loads((work / "out" / "progress.json").read_text())


@pytest.mark.parametrize(
    ("engine", "rule", "steps"),
    [("torchtune", "step", 6), ("huggingface", "step", 6), ("torchtune", "engine", 4)],
)
def test_one_request_counts_the_same_steps_on_both_engines(
    tiny_models, tmp_path, engine, rule, steps
):
    """10 rows in batches of 2 with accumulation 2, two epochs: 3 steps an epoch (the fifth
    batch steps alone); a record from before the rule keeps torchtune's 2."""
    result, progress = _run(tiny_models / "hf", tmp_path / engine, engine, rule)
    assert progress["progress"]["total_steps"] == progress["progress"]["step"] == steps
    assert result["global_step"] == steps
    history = progress["loss_history"]
    assert [step for step, _ in history] == list(range(1, steps + 1))
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in history)
    assert [e["global_step"] for e in result["epochs"]] == [steps // 2, steps]
    assert all(e["train_loss"] > 0 for e in result["epochs"])  # fillers add no zero losses
