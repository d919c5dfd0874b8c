"""The chunked cross-entropy (training/huggingface/head.py) against the whole-logits path it
replaces, on every family of harness/tiny_families.py in fp32: the same SFT loss and DPO
sequence log-probabilities to 1e-5, and the same gradients, through PEFT (LoRA, on the output
projection too) and with the families' own logit transforms (Granite's logits_scaling). A
family whose transform is not reproduced falls back, saying so."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from harness.tiny_families import FAMILIES, make
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
from llama_stack_provider_kfp.core.spec import (
    DataSpec,
    DPOSpec,
    EngineChoice,
    JobSpec,
    OptimSpec,
    TrainSpec,
)
from llama_stack_provider_kfp.training.huggingface import data, head, logits
from llama_stack_provider_kfp.training.huggingface.data import IGNORE
from llama_stack_provider_kfp.training.huggingface.engine import _load_tokenizer
from llama_stack_provider_kfp.training.prepare import prepare
from llama_stack_provider_kfp.training.steps import train_step

TOL = 1e-5
ROWS = [
    [{"role": "user", "content": "Greet Ada."},
     {"role": "assistant", "content": "Hello, Ada! Nice to meet you."}],
    [{"role": "user", "content": "What is the capital of France?"},
     {"role": "assistant", "content": "Paris is the capital of France."}],
    [{"role": "user", "content": "The quick brown fox?"},
     {"role": "assistant", "content": "jumps over the lazy dog. Hello!"}],
]  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("chunked")
    return {f: make(f, root / f) for f in FAMILIES}


def _load(model_dir: Path, lora_targets: list[str] | None = None) -> tuple[object, dict]:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.train()
    if lora_targets:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=4,
            lora_alpha=8,
            target_modules=lora_targets,
            lora_dropout=0.0,
            init_lora_weights=False,
        )  # B is not 0: the adapter changes the logits
        model = get_peft_model(model, lora)
    tokenizer = _load_tokenizer(model_dir)
    samples = [data.encode(tokenizer, row, 96, train_on_input=False) for row in ROWS]
    return model, data.collate(samples, tokenizer.pad_token_id)


def _old_mean_nll(model, batch) -> torch.Tensor:
    """The whole-logits path as it was before chunking."""
    torch.manual_seed(1)  # GPT-2's dropout: the same masks on both paths
    whole, targets = logits.labelled(model, batch)
    total = F.cross_entropy(whole.flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                            reduction="sum")  # fmt: skip
    return total / (targets != IGNORE).sum().clamp(min=1)


def _old_sequence_logps(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(1)
    whole, targets = logits.labelled(model, batch)
    mask = targets != IGNORE
    picked = torch.gather(F.log_softmax(whole, dim=-1), 2,
                          targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)  # fmt: skip
    return (picked * mask).sum(-1), mask.sum(-1)


def _grads(model, loss: torch.Tensor) -> dict[str, torch.Tensor]:
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    got = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return {n: g if g is not None else torch.zeros_like(p)
            for (n, p), g in zip(params.items(), got, strict=True)}  # fmt: skip


def _chunk(batch: dict, model) -> int:
    """A budget of three positions per chunk: several chunks, the last one shorter."""
    torch.manual_seed(1)
    return 3 * batch["input_ids"].shape[0] * head.vocab_size(model)


def _same_grads(want: dict, got: dict) -> None:
    assert want.keys() == got.keys()
    for name, g in want.items():
        scale = float(g.abs().max()) or 1.0
        assert float((got[name] - g).abs().max()) <= TOL * scale, name


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_sft_loss_and_gradients_equal_the_whole_logits(family, models):
    model, batch = _load(models[family])
    want = _old_mean_nll(model, batch)
    got = logits.mean_nll(model, batch, chunk_elements=_chunk(batch, model))
    assert head.find(model, batch, torch.arange(1)) is not None  # chunked, not the fallback
    assert float((got - want).abs().detach()) <= TOL * float(want.abs().detach())
    _same_grads(_grads(model, want), _grads(model, got))


@pytest.mark.parametrize("path", ["fused", "checkpointed"])
def test_sft_with_lora_on_the_output_projection(path, models, monkeypatch):
    """The fused sum (gradients taken in the forward) and the checkpointed chunks (what FSDP's
    sharded parameters take) give the whole-logits loss and gradients, with PEFT's LoRA
    layer as the output module (its A and B get their gradients from the chunks)."""
    if path == "checkpointed":
        monkeypatch.setattr(head, "_sharded", lambda p: True)
    fused = []
    monkeypatch.setattr(
        head._FusedSum, "apply", lambda *a, f=head._FusedSum.apply: fused.append(1) or f(*a)
    )
    model, batch = _load(models["mistral"], ["q_proj", "lm_head"])
    want = _old_mean_nll(model, batch)
    got = logits.mean_nll(model, batch, chunk_elements=_chunk(batch, model))
    assert bool(fused) == (path == "fused")
    assert float((got - want).abs().detach()) <= TOL * float(want.abs().detach())
    grads = _grads(model, got)
    assert any("lm_head" in n and float(g.abs().max()) > 0 for n, g in grads.items())
    _same_grads(_grads(model, want), grads)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_dpo_sequence_logps_and_gradients_equal_the_whole_logits(family, models):
    # LoRA on the attention (PEFT wraps the model); untied families adapt the output too.
    attention = {"gpt2": ["c_attn"], "phi3": ["qkv_proj"]}.get(family, ["q_proj", "v_proj"])
    untied = not FAMILIES[family]["keys"].get("tie_word_embeddings", family == "gpt2")
    model, batch = _load(models[family], attention + (["lm_head"] if untied else []))
    want, want_n = _old_sequence_logps(model, batch)
    got, got_n = logits.sequence_logps(model, batch, chunk_elements=_chunk(batch, model))
    assert head.find(model, batch, torch.arange(1)) is not None
    assert torch.equal(want_n, got_n)
    assert float((got - want).abs().max().detach()) <= TOL * float(want.abs().max().detach())
    weights = torch.tensor([1.0, -2.0, 0.5])  # a DPO-like mix of the rows
    _same_grads(_grads(model, (want * weights).sum()), _grads(model, (got * weights).sum()))
    with torch.no_grad(), model.disable_adapter():  # the LoRA reference: the adapter off
        ref, _ = _old_sequence_logps(model, batch)
        chunked, _ = logits.sequence_logps(model, batch, chunk_elements=_chunk(batch, model))
    assert float((chunked - ref).abs().max()) <= TOL * float(ref.abs().max())
    assert float((ref - want.detach()).abs().max()) > 1e-3  # the adapter mattered


def test_packed_rows_give_the_same_loss(models):
    model, _ = _load(models["smollm2"])
    tokenizer = _load_tokenizer(models["smollm2"])
    samples = [data.encode(tokenizer, row, 96, train_on_input=False) for row in ROWS]
    batch = data.collate_packed(data.pack(samples, 200), tokenizer.pad_token_id)
    batch.pop("tokens")
    want = _old_mean_nll(model, batch)
    got = logits.mean_nll(model, batch, chunk_elements=_chunk(batch, model))
    assert float((got - want).abs().detach()) <= TOL * float(want.abs().detach())


def test_a_transform_not_reproduced_falls_back_to_the_whole_logits(models, monkeypatch, capsys):
    monkeypatch.delitem(head.TRANSFORMS, "granite")  # as if Granite's scaling were unknown
    model, batch = _load(models["granite"])
    want = _old_mean_nll(model, batch)
    got = logits.mean_nll(model, batch, chunk_elements=_chunk(batch, model))
    assert head.find(model, batch, torch.arange(1)) is None
    assert "does not reproduce 'granite''s logits (they differ by up to" in capsys.readouterr().out
    assert float((got - want).abs().detach()) <= TOL * float(want.abs().detach())


def _dpo_job(model_dir: Path, work: Path) -> dict:
    rows = [{"prompt": f"Greet {name}.", "chosen": f"Hello, {name}! Nice to meet you.",
             "rejected": "Go away."} for name in ("Ada", "Alan", "Grace", "Linus") * 2]  # fmt: skip
    spec = JobSpec(
        job_uuid="c", engine=EngineChoice(name="huggingface", reason="test"),
        model=inspect_model_dir("smollm2", model_dir),
        data=DataSpec(uri=str(write_jsonl(rows, work / "rows.jsonl")), data_format="preference",
                      validation_fraction=0.25),
        train=TrainSpec(epochs=1, max_steps_per_epoch=2, gradient_accumulation_steps=1,
                        batch_size=3, shuffle=True, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=96, seed=3, device="cpu",
                        max_grad_norm=1.0),
        lora=None, dpo=DPOSpec(beta=0.1, loss_type="sigmoid"),
        optim=OptimSpec(type="adamw", lr=1e-3, weight_decay=0.0, warmup_steps=0),
        output_format="huggingface", output_uri=str(work / "out"),
    )  # fmt: skip
    train, val = str(work / "t.jsonl"), str(work / "v.jsonl")
    prepare(spec, train, val)
    return train_step(spec.model_dump_json(), str(model_dir), spec.output_uri, train, val)


def test_the_engine_trains_the_same_model_with_the_loss_chunked(models, tmp_path, monkeypatch):
    """Full DPO (the policy and its frozen reference copy), validation included, through the
    train step: the whole logits, then three positions a chunk."""
    from safetensors.torch import load_file

    whole = _dpo_job(models["smollm2"], tmp_path / "whole")
    vocab = head.vocab_size(_load(models["smollm2"])[0])
    monkeypatch.setattr(logits, "CHUNK_ELEMENTS", 3 * 3 * vocab)
    calls = []
    nll = head.Head.nll
    monkeypatch.setattr(head.Head, "nll", lambda *a: calls.append(1) or nll(*a))
    chunked = _dpo_job(models["smollm2"], tmp_path / "chunked")
    assert calls  # the chunks ran (policy, reference and validation)
    for key in ("first_loss", "final_loss"):
        assert chunked[key] == pytest.approx(whole[key], rel=TOL)
    (a,), (b,) = whole["epochs"], chunked["epochs"]
    assert b["validation_loss"] == pytest.approx(a["validation_loss"], rel=TOL)
    merged = [load_file(tmp_path / run / "out" / "checkpoints" / "epoch_1" / "merged" /
                        "model.safetensors") for run in ("whole", "chunked")]  # fmt: skip
    assert max(float((merged[0][k] - merged[1][k]).abs().max()) for k in merged[0]) <= 1e-5
