"""FSDP2 in the Hugging Face engine, on the train step (no server, no KFP): 2 CPU ranks (gloo)
train the 1-rank curve holding about half the parameters each, write the same weights as DDP,
and a job resumed from an FSDP step checkpoint equals the uninterrupted one; LoRA DPO shards
too. `choose` picks DDP or FSDP by the rule its module states."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from harness.demo_data import instruct_rows
from harness.tiny_families import make
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
from llama_stack_provider_kfp.core.outputs import TRAINING_STATE_TENSORS
from llama_stack_provider_kfp.core.spec import (
    DataSpec,
    DPOSpec,
    EngineChoice,
    JobSpec,
    LoraSpec,
    OptimSpec,
    OSFTSpec,
    TrainSpec,
)
from llama_stack_provider_kfp.training.distributed import Ranks
from llama_stack_provider_kfp.training.huggingface import sharding
from llama_stack_provider_kfp.training.prepare import prepare
from llama_stack_provider_kfp.training.steps import train_step

# The ranks reduce in another order than one process sums: float32 rounding only (as DDP's
# test, tests/e2e/test_ranks.py).
LOSS_RTOL = 1e-4
WEIGHT_ATOL = 1e-5


@pytest.fixture(scope="module")
def qwen2(tmp_path_factory) -> Path:
    return make("qwen2", tmp_path_factory.mktemp("fsdp") / "qwen2")


def _spec(model_dir: Path, work: Path, out: str, *, ranks=1, fsdp=False, every=None,
          resume_from=None, lora=False, dpo=False) -> JobSpec:  # fmt: skip
    model = inspect_model_dir(model_dir.name, model_dir)
    rows = _preference_rows(16) if dpo else instruct_rows(20, seed=2)
    data = write_jsonl(rows, work / ("pairs.jsonl" if dpo else "rows.jsonl"))
    return JobSpec(
        job_uuid="fsdp", engine=EngineChoice(name="huggingface", reason="test"), model=model,
        data=DataSpec(uri=str(data), data_format="preference" if dpo else "instruct",
                      validation_fraction=0.2),  # validated on every rank under FSDP
        train=TrainSpec(epochs=2, max_steps_per_epoch=None, gradient_accumulation_steps=1,
                        batch_size=4, shuffle=True, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=96, seed=3, device="cpu",
                        ranks=ranks, memory_efficient_fsdp_wrap=fsdp, sharding="auto",
                        checkpoint_every_steps=every, keep_step_checkpoints=8),
        lora=LoraSpec(rank=4, alpha=8, attn_modules=["q_proj", "v_proj"], apply_to_mlp=False,
                      apply_to_output=False) if lora else None,
        dpo=DPOSpec(beta=0.1, loss_type="sigmoid") if dpo else None,
        optim=OptimSpec(type="adamw", lr=2e-3, weight_decay=0.01, warmup_steps=0),
        output_format="huggingface", output_uri=str(work / out), resume_from=resume_from,
    )  # fmt: skip


def _preference_rows(n: int) -> list[dict]:
    names = ["Ada", "Alan", "Grace", "Linus", "Ken", "Tim"]
    return [{"prompt": f"Greet {names[i % 6]}.",
             "chosen": f"Hello, {names[i % 6]}! Nice to meet you.", "rejected": "Go away."}
            for i in range(n)]  # fmt: skip


def _train(spec: JobSpec, model_dir: Path, work: Path) -> dict:
    name = "p" if spec.dpo is not None else "t"
    train, val = str(work / f"{name}.jsonl"), str(work / f"{name}-val.jsonl")
    if not Path(train).exists():
        prepare(spec, train, val)
    return train_step(spec.model_dump_json(), str(model_dir), spec.output_uri, train, val)


def _curve(work: Path, out: str) -> list[float]:
    progress = json.loads((work / out / "progress.json").read_text())
    return [v for _, v in progress["loss_history"]]


def _weights(work: Path, out: str, epoch: int = 2) -> dict[str, torch.Tensor]:
    return load_file(work / out / "checkpoints" / f"epoch_{epoch}" / "merged" / "model.safetensors")


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_fsdp_trains_the_one_rank_curve_like_ddp_and_resumes_exactly(qwen2, tmp_path):
    """Full fine-tuning (the optimizer state sharded too): 1 rank, DDP and FSDP on 2 ranks,
    then FSDP resumed from its own step checkpoint inside epoch 2."""
    _train(_spec(qwen2, tmp_path, "one"), qwen2, tmp_path)
    ddp = _train(_spec(qwen2, tmp_path, "ddp", ranks=2, every=3), qwen2, tmp_path)
    fsdp = _train(_spec(qwen2, tmp_path, "fsdp", ranks=2, fsdp=True, every=3), qwen2, tmp_path)

    assert ddp["sharding"]["strategy"] == "ddp" and fsdp["sharding"]["strategy"] == "fsdp"
    assert fsdp["sharding"]["reason"] == "requested (memory_efficient_fsdp_wrap)"
    whole = ddp["sharding"]["parameter_bytes_per_rank"]
    held = fsdp["sharding"]["parameter_bytes_per_rank"]
    print("parameter bytes per rank: DDP", whole, "FSDP", held)
    assert whole[0] == whole[1] == sum(p.nbytes for p in _weights(tmp_path, "one").values())
    # Each rank about half (FSDP pads a dimension that the ranks do not divide).
    assert all(abs(h - whole[0] / 2) <= 0.02 * whole[0] for h in held)
    progress = json.loads((tmp_path / "fsdp" / "progress.json").read_text())
    assert progress["sharding"]["parameter_bytes_per_rank"] == held  # in the status too

    one, two = _curve(tmp_path, "one"), _curve(tmp_path, "fsdp")
    assert len(one) == len(two) == 10  # 20 rows, batch 4, 2 epochs
    print("max relative loss difference, FSDP 2 ranks vs 1:",
          max(abs(a - b) / abs(b) for a, b in zip(two, one, strict=True)))  # fmt: skip
    assert two == pytest.approx(one, rel=LOSS_RTOL)
    print("max weight difference, FSDP vs DDP:",
          _max_diff(_weights(tmp_path, "fsdp"), _weights(tmp_path, "ddp")))  # fmt: skip
    assert _max_diff(_weights(tmp_path, "fsdp"), _weights(tmp_path, "ddp")) <= WEIGHT_ATOL

    assert fsdp["epochs"][-1]["validation_loss"] is not None
    # The gathered optimizer state is DDP's, layout and values: either resumes the other's.
    ddp_state, fsdp_state = (
        torch.load(tmp_path / n / "checkpoints" / "step_6" / TRAINING_STATE_TENSORS,
                   weights_only=True)["optimizer"] for n in ("ddp", "fsdp"))  # fmt: skip
    assert fsdp_state["param_groups"] == ddp_state["param_groups"]
    assert fsdp_state["state"].keys() == ddp_state["state"].keys()
    for i, entry in ddp_state["state"].items():
        assert entry.keys() == fsdp_state["state"][i].keys()
        for key, value in entry.items():
            assert torch.allclose(fsdp_state["state"][i][key], value, atol=WEIGHT_ATOL), (i, key)
    step = tmp_path / "fsdp" / "checkpoints" / "step_6"  # inside epoch 2 (5 steps an epoch)
    resumed = _train(_spec(qwen2, tmp_path, "resumed", ranks=2, fsdp=True,
                           resume_from=str(step)), qwen2, tmp_path)  # fmt: skip
    assert resumed["resumed_from"]["step"] == 6 and resumed["steps_run"] == 4
    assert _curve(tmp_path, "resumed") == _curve(tmp_path, "fsdp")
    assert resumed["epochs"][-1] == fsdp["epochs"][-1]
    assert _max_diff(_weights(tmp_path, "resumed"), _weights(tmp_path, "fsdp")) == 0.0


def test_fsdp_lora_dpo_matches_ddp(tmp_path):
    """LoRA DPO sharded, with activation checkpointing: the reference is the sharded model
    with its adapter off; the curve, adapter and merged weights are DDP's."""
    # GPT-2: tied embeddings (shared by the root unit), Conv1D projections, and dropout, whose
    # masks draw from torch's generator: the same draws as DDP's only if nothing else (the
    # main rank's whole copy for saving, made at epoch 1) draws from it.
    model_dir = make("gpt2", tmp_path / "gpt2")
    runs = {}
    for name, fsdp in (("ddp", False), ("fsdp", True)):
        spec = _spec(model_dir, tmp_path, name, ranks=2, fsdp=fsdp, lora=True, dpo=True)
        checkpointed = spec.train.model_copy(update={"enable_activation_checkpointing": True})
        spec = spec.model_copy(update={"train": checkpointed})
        runs[name] = _train(spec, model_dir, tmp_path)
    assert runs["fsdp"]["sharding"]["strategy"] == "fsdp"
    assert _curve(tmp_path, "fsdp") == pytest.approx(_curve(tmp_path, "ddp"), rel=LOSS_RTOL)
    assert _max_diff(_weights(tmp_path, "fsdp"), _weights(tmp_path, "ddp")) <= WEIGHT_ATOL
    adapter = "checkpoints/epoch_2/adapter/adapter_model.safetensors"
    a, b = (load_file(tmp_path / n / adapter) for n in ("fsdp", "ddp"))
    assert _max_diff(a, b) <= WEIGHT_ATOL


def _model(layers: int = 2) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=2, num_key_value_heads=2, vocab_size=128)  # fmt: skip
    return LlamaForCausalLM(config)


def test_choose_follows_the_stated_rule(qwen2, tmp_path):
    spec = _spec(qwen2, tmp_path, "x", ranks=2)
    cpu, two = torch.device("cpu"), Ranks(0, 2)
    model = _model()
    assert sharding.choose(spec, Ranks(), cpu, model).strategy == "single"
    assert sharding.choose(spec, two, cpu, model).strategy == "ddp"  # never auto on a CPU
    asked = spec.model_copy(update={"train": spec.train.model_copy(
        update={"fsdp_cpu_offload": True})})  # fmt: skip
    plan = sharding.choose(asked, two, cpu, model)
    assert plan.fsdp and not plan.cpu_offload  # a CPU device: nothing to offload to
    osft = asked.model_copy(update={"osft": OSFTSpec(unfreeze_rank_ratio=0.5)})
    with pytest.raises(ValueError, match="OSFT does not shard"):
        sharding.choose(osft, two, cpu, model)
    auto_osft = spec.model_copy(update={"osft": OSFTSpec(unfreeze_rank_ratio=0.5)})
    assert sharding.choose(auto_osft, two, cpu, model).strategy == "ddp"
    # A record from before this engine could shard: DDP as it was started, whatever it asked.
    old = asked.model_copy(update={"train": asked.train.model_copy(update={"sharding": "ddp"})})
    assert sharding.choose(old, two, cpu, model).strategy == "ddp"
    assert TrainSpec.model_fields["sharding"].default == "ddp"
    # The auto rule's measure: 16 bytes a parameter for fp32 AdamW, the weights alone for LoRA.
    n = sum(p.numel() for p in model.parameters())
    assert sharding.training_bytes(model, spec) == 16 * n
    adapter = LoraSpec(rank=4, alpha=8, attn_modules=["q_proj"], apply_to_mlp=False,
                       apply_to_output=False)  # fmt: skip
    lora = spec.model_copy(update={"lora": adapter})
    assert sharding.training_bytes(model, lora) == 4 * n
    assert len(sharding.decoder_layers(model)) == 2
    # On GPUs: FSDP when a whole copy exceeds half the device (Llama-3.1-8B full fine-tuning in
    # bf16 with AdamW: 8 bytes a parameter, 64 GB, on an 80 GB GPU); LoRA on it stays DDP.
    gb = 10**9
    assert sharding.on_gpus(64 * gb, 80 * gb).fsdp
    assert not sharding.on_gpus(16 * gb, 80 * gb).fsdp
    assert "exceed half of one GPU's" in sharding.on_gpus(64 * gb, 80 * gb).reason
