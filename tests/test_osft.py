"""OSFT in the Hugging Face engine, on the train step (no server, no KFP): the decomposition
reproduces the model, training moves only the low singular subspaces of the target matrices
(the frozen top ones stay as they were, exactly), the outputs are plain weights, a resumed job
equals an uninterrupted one, 2 ranks train the 1-rank curve, and every family trains."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from model_checks import logits

from harness.demo_data import instruct_rows
from harness.tiny_families import FAMILIES, make
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
from llama_stack_provider_kfp.core.osft_targets import resolve_osft
from llama_stack_provider_kfp.core.spec import (
    DataSpec,
    EngineChoice,
    JobSpec,
    OptimSpec,
    OSFTSpec,
    TrainSpec,
)
from llama_stack_provider_kfp.training.huggingface import osft
from llama_stack_provider_kfp.training.prepare import prepare
from llama_stack_provider_kfp.training.steps import train_step

# fp32: the rebuilt matrices differ from the originals by SVD rounding only.
STEP0_ATOL = 1e-5
# U_high^T W V_high^T against diag(S_high) after training (fp32 rounding of the projections).
FROZEN_ATOL = 1e-4
RATIO = 0.5


@pytest.fixture(scope="module")
def family_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("osft-families")
    return {f: make(f, root / f) for f in FAMILIES}


def _spec(model_dir: Path, work: Path, *, ratio=RATIO, modules=(), epochs=2, ranks=1,
          every=None, resume_from=None, osft_on=True, lr=2e-3, out="out") -> JobSpec:  # fmt: skip
    model = inspect_model_dir(model_dir.name, model_dir)
    data = write_jsonl(instruct_rows(16, seed=2), work / "rows.jsonl")
    chosen = resolve_osft(list(modules), model.modules, model.is_tied).modules
    return JobSpec(
        job_uuid="osft", engine=EngineChoice(name="huggingface", reason="test"), model=model,
        data=DataSpec(uri=str(data), data_format="instruct"),
        train=TrainSpec(epochs=epochs, max_steps_per_epoch=None, gradient_accumulation_steps=1,
                        batch_size=4, shuffle=True, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=96, seed=3, device="cpu",
                        ranks=ranks, checkpoint_every_steps=every, keep_step_checkpoints=8),
        lora=None,
        osft=OSFTSpec(unfreeze_rank_ratio=ratio, requested_modules=list(modules),
                      target_modules=chosen) if osft_on else None,
        optim=OptimSpec(type="adamw", lr=lr, weight_decay=0.01, warmup_steps=0),
        output_format="huggingface", output_uri=str(work / out), resume_from=resume_from,
    )  # fmt: skip


def _train(spec: JobSpec, model_dir: Path, work: Path) -> dict:
    train, val = str(work / "t.jsonl"), str(work / "v.jsonl")
    if not Path(train).exists():
        prepare(spec, train, val)
    return train_step(spec.model_dump_json(), str(model_dir), spec.output_uri, train, val)


def _matrices(model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("family", ["smollm2", "gpt2", "phi3"])
def test_step0_model_equals_the_base(family, family_models):
    """Linear, GPT-2's Conv1D ([in, out]) and Phi-3's fused qkv / gate_up: the model rebuilt
    from its factors gives the base model's logits."""
    from transformers import AutoModelForCausalLM

    model_dir = family_models[family]
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    base = logits(model_dir)
    info = inspect_model_dir(family, model_dir)
    targets = resolve_osft([], info.modules, info.is_tied).modules
    done = osft.apply(model, targets, RATIO)
    assert done.summary.matrices == 2 * len(targets)  # two layers
    assert 0 < done.summary.frozen_directions < done.summary.directions
    with torch.no_grad():
        rebuilt = model(torch.tensor([[5, 17, 42, 99, 120, 7, 3]])).logits
    assert float((rebuilt - base).abs().max()) <= STEP0_ATOL
    # What trains: the low factors and every non-target parameter; no target weight itself.
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert not any(n.endswith(f"{t}.weight") for n in trainable for t in targets)
    assert any(".parametrizations.weight.original0" in n for n in trainable)


def _frozen_drift(base: dict, tuned: dict, targets: list[str], ratio: float) -> float:
    """max |U_high^T W V_high^T - diag(S_high)| over the targets, the top subspace taken from
    the base weights' SVD."""
    worst = 0.0
    for name, w0 in base.items():
        if w0.ndim != 2 or not any(name.endswith(f"{t}.weight") for t in targets):
            continue
        u, s, vt = torch.linalg.svd(w0, full_matrices=False)
        k = osft.frozen_rank(s.shape[0], ratio)
        seen = u[:, :k].T @ tuned[name] @ vt[:k].T
        worst = max(worst, float((seen - torch.diag(s[:k])).abs().max()))
    return worst


def test_training_keeps_the_frozen_subspace_and_writes_plain_weights(family_models, tmp_path):
    model_dir = family_models["smollm2"]
    spec = _spec(model_dir, tmp_path)
    result = _train(spec, model_dir, tmp_path)
    assert result["final_loss"] < result["first_loss"]
    assert result["osft"]["matrices"] == 14 and result["osft"]["unfreeze_rank_ratio"] == RATIO
    epoch = tmp_path / "out" / "checkpoints" / "epoch_2"
    assert not (epoch / "adapter").exists()
    names = {p.name for p in (epoch / "merged").iterdir()}
    assert "model.safetensors" in names and "config.json" in names
    base, tuned = _matrices(model_dir), _matrices(epoch / "merged")
    assert set(base) == set(tuned)  # a plain model: no factor in the saved weights
    targets = spec.osft.target_modules
    changed = [n for n in base if any(n.endswith(f"{t}.weight") for t in targets)]
    assert all(float((tuned[n] - base[n]).abs().max()) > 1e-4 for n in changed)
    assert _frozen_drift(base, tuned, targets, RATIO) <= FROZEN_ATOL

    # The same job trained on every parameter moves the top subspace: the check can fail.
    full = _spec(model_dir, tmp_path, osft_on=False, out="full")
    _train(full, model_dir, tmp_path)
    moved = _matrices(tmp_path / "full" / "checkpoints" / "epoch_2" / "merged")
    assert _frozen_drift(base, moved, targets, RATIO) > 100 * FROZEN_ATOL

    # The training state carries the factors a resumed job continues with.
    saved = torch.load(epoch / "training_state.pt", weights_only=True)
    assert set(saved["osft"]) == {f"model.layers.{i}.{t}" for i in range(2) for t in targets}
    state = json.loads((epoch / "training_state.json").read_text())
    assert state["algorithm"] == "osft"


def test_freeze_non_targets_trains_only_the_low_subspaces(family_models, tmp_path):
    model_dir = family_models["smollm2"]
    spec = _spec(model_dir, tmp_path, epochs=1)
    spec = spec.model_copy(update={"osft": spec.osft.model_copy(
        update={"freeze_non_targets": True})})  # fmt: skip
    result = _train(spec, model_dir, tmp_path)
    assert result["final_loss"] < result["first_loss"]
    base = _matrices(model_dir)
    tuned = _matrices(tmp_path / "out" / "checkpoints" / "epoch_1" / "merged")
    targets = spec.osft.target_modules
    moved = {n for n in base if float((tuned[n] - base[n]).abs().max()) > 0}
    assert moved and all(any(n.endswith(f"{t}.weight") for t in targets) for n in moved)
    low = 0  # what trains: U_low, S_low, V_low of each target, nothing else
    for name, w in base.items():
        if any(name.endswith(f"{t}.weight") for t in targets):
            (m, n), r = w.shape, min(w.shape)
            free = r - osft.frozen_rank(r, RATIO)
            low += free * (m + 1 + n)
    assert result["osft"]["trainable_parameters"] == low


def test_resumed_equals_uninterrupted(family_models, tmp_path):
    model_dir = family_models["qwen2"]
    whole = _spec(model_dir, tmp_path, every=3, out="whole")
    uninterrupted = _train(whole, model_dir, tmp_path)
    step = tmp_path / "whole" / "checkpoints" / "step_6"  # inside epoch 2 (4 steps an epoch)
    resumed_spec = _spec(model_dir, tmp_path, resume_from=str(step), out="resumed")
    resumed = _train(resumed_spec, model_dir, tmp_path)
    assert resumed["resumed_from"]["step"] == 6 and resumed["steps_run"] == 2
    assert abs(resumed["final_loss"] - uninterrupted["final_loss"]) <= 1e-6
    a = _matrices(tmp_path / "whole" / "checkpoints" / "epoch_2" / "merged")
    b = _matrices(tmp_path / "resumed" / "checkpoints" / "epoch_2" / "merged")
    assert max(float((a[n] - b[n]).abs().max()) for n in a) <= 1e-6


def test_two_ranks_train_the_one_rank_curve(family_models, tmp_path):
    model_dir = family_models["qwen2"]
    _train(_spec(model_dir, tmp_path, out="one"), model_dir, tmp_path)
    _train(_spec(model_dir, tmp_path, ranks=2, out="two"), model_dir, tmp_path)

    def curve(out: str) -> list[float]:
        progress = json.loads((tmp_path / out / "progress.json").read_text())
        return [v for _, v in progress["loss_history"]]

    one, two = curve("one"), curve("two")
    assert len(one) == len(two) == 8
    # Rank 0's SVD reached rank 1 (zeros there otherwise): the same curve, float rounding apart.
    assert two == pytest.approx(one, rel=1e-4)
    a = _matrices(tmp_path / "one" / "checkpoints" / "epoch_2" / "merged")
    b = _matrices(tmp_path / "two" / "checkpoints" / "epoch_2" / "merged")
    assert max(float((a[n] - b[n]).abs().max()) for n in a) <= 1e-4


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_trains_with_osft(family, family_models, tmp_path):
    model_dir = family_models[family]
    result = _train(_spec(model_dir, tmp_path, epochs=1, lr=5e-3), model_dir, tmp_path)
    assert result["final_loss"] < result["first_loss"]
    merged = tmp_path / "out" / "checkpoints" / "epoch_1" / "merged"
    assert float((logits(merged) - logits(model_dir)).abs().max()) > 1e-4


def test_dpo_with_osft_raises_the_margin(family_models, tmp_path):
    """DPO on OSFT's parametrization: the reference is the base model, the policy trains its
    low subspaces."""
    from llama_stack_provider_kfp.core.spec import DPOSpec

    names = ["Ada", "Alan", "Grace", "Linus"]
    rows = [{"prompt": f"Greet {names[i % 4]}.", "rejected": "Go away.",
             "chosen": f"Hello, {names[i % 4]}! Nice to meet you."} for i in range(16)]  # fmt: skip
    model_dir = family_models["smollm2"]
    spec = _spec(model_dir, tmp_path, lr=1e-2).model_copy(update={
        "dpo": DPOSpec(beta=0.1, loss_type="sigmoid"),
        "data": DataSpec(uri=str(write_jsonl(rows, tmp_path / "pref.jsonl")),
                         data_format="preference", validation_fraction=0.25)})  # fmt: skip
    result = _train(spec, model_dir, tmp_path)
    first, last = result["epochs"]
    assert last["validation_reward_margin"] > first["validation_reward_margin"] > 0
    state = json.loads((tmp_path / "out" / "checkpoints" / "epoch_2" / "training_state.json")
                       .read_text())  # fmt: skip
    assert state["algorithm"] == "dpo-osft"
