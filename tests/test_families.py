"""The Hugging Face engine's train step on a tiny model of each family it is documented for
(no server, no KFP): LoRA learns and its PEFT adapter on the base model reproduces the merged
checkpoint; full fine-tuning writes loadable weights that differ from the base."""

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

LOGIT_ATOL = 1e-4
# Fused projections: q/v/output resolve to the module that holds them.
ATTENTION_TARGETS = {
    "gpt2": {"attn.c_attn", "attn.c_proj"},
    "phi3": {"self_attn.qkv_proj", "self_attn.o_proj"},
}


@pytest.fixture(scope="module")
def family_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("families")
    return {f: make(f, root / f) for f in FAMILIES}


def _run(model_dir: Path, work: Path, lora: bool, packed: bool = False) -> dict:
    model = inspect_model_dir(model_dir.name, model_dir)
    data = write_jsonl(instruct_rows(16, seed=2), work / "rows.jsonl")
    spec = JobSpec(
        job_uuid="f", engine=EngineChoice(name="huggingface", reason="test"), model=model,
        data=DataSpec(uri=str(data), data_format="instruct"),
        train=TrainSpec(epochs=2, max_steps_per_epoch=None, gradient_accumulation_steps=1,
                        batch_size=4, shuffle=True, train_on_input=False, dtype="fp32",
                        packed=packed,
                        max_validation_steps=None, max_seq_len=256 if packed else 96,
                        seed=3, device="cpu"),
        lora=LoraSpec(rank=8, alpha=16, attn_modules=[], apply_to_mlp=False,
                      apply_to_output=False,
                      requested_modules=["q_proj", "v_proj", "output_proj"]) if lora else None,
        optim=OptimSpec(type="adamw", lr=2e-2 if lora else 2e-3, weight_decay=0.0,
                        warmup_steps=0),
        output_format="huggingface", output_uri=str(work / "out"),
    )  # fmt: skip
    js = spec.model_dump_json()
    prepare(spec, str(work / "t.jsonl"), str(work / "v.jsonl"))
    return train_step(js, str(model_dir), str(work / "out"), str(work / "t.jsonl"),
                      str(work / "v.jsonl"))  # fmt: skip


@pytest.mark.parametrize("family", list(FAMILIES))
def test_lora_learns_and_the_adapter_matches_the_merged_weights(family, family_models, tmp_path):
    result = _run(family_models[family], tmp_path, lora=True)
    assert result["final_loss"] < result["first_loss"]
    epoch = tmp_path / "out" / "checkpoints" / "epoch_2"
    config = json.loads((epoch / "adapter" / "adapter_config.json").read_text())
    expected = ATTENTION_TARGETS.get(family, {"self_attn.q_proj", "self_attn.v_proj",
                                              "self_attn.o_proj"})  # fmt: skip
    assert set(config["target_modules"]) == expected
    merged = logits(epoch / "merged")
    assert float((merged - logits(family_models[family])).abs().max()) > 1e-4
    peft = logits(family_models[family], epoch / "adapter")
    assert torch.allclose(peft, merged, atol=LOGIT_ATOL, rtol=0), float((peft - merged).abs().max())


@pytest.mark.parametrize("family", list(FAMILIES))
def test_full_fine_tuning_writes_loadable_weights(family, family_models, tmp_path):
    result = _run(family_models[family], tmp_path, lora=False)
    assert result["final_loss"] < result["first_loss"]
    merged = tmp_path / "out" / "checkpoints" / "epoch_2" / "merged"
    assert not (merged.parent / "adapter").exists()
    assert float((logits(merged) - logits(family_models[family])).abs().max()) > 1e-2


@pytest.mark.parametrize("family", list(FAMILIES))
def test_packed_samples_do_not_see_each_other(family, family_models):
    from transformers import AutoModelForCausalLM

    from llama_stack_provider_kfp.training.huggingface import data

    model = AutoModelForCausalLM.from_pretrained(family_models[family], dtype=torch.float32)
    a = data.Sample([5, 17, 42, 99], [5, 17, 42, 99])
    b = data.Sample([120, 7, 3], [120, 7, 3])
    (row,) = data.pack([a, b], max_len=8)
    batch = data.collate_packed([row], pad_id=0)
    assert batch["labels"][0, 4] == data.IGNORE  # b's first token: not predicted from a
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                       position_ids=batch["position_ids"]).logits[0]  # fmt: skip
        alone = [model(torch.tensor([s.ids])).logits[0] for s in (a, b)]
    assert torch.allclose(packed[:7], torch.cat(alone), atol=1e-5)


def test_packed_training_trains_every_row_in_fewer_steps(family_models, tmp_path):
    plain = _run(family_models["qwen2"], tmp_path / "plain", lora=False)
    packed = _run(family_models["qwen2"], tmp_path / "packed", lora=False, packed=True)
    assert packed["train_rows"] == plain["train_rows"] == 16
    assert packed["samples_seen"] == plain["samples_seen"] == 32  # every row, both epochs
    assert packed["global_step"] < plain["global_step"]
    assert packed["final_loss"] < packed["first_loss"]


def _preference_rows(n: int) -> list[dict]:
    names = ["Ada", "Alan", "Grace", "Linus", "Ken", "Tim"]
    return [{"prompt": f"Greet {names[i % 6]}.",
             "chosen": f"Hello, {names[i % 6]}! Nice to meet you.", "rejected": "Go away."}
            for i in range(n)]  # fmt: skip


@pytest.mark.parametrize("family", list(FAMILIES))
def test_dpo_raises_the_margin(family, family_models, tmp_path):
    from llama_stack_provider_kfp.core.spec import DPOSpec

    model = inspect_model_dir(family, family_models[family])
    data = write_jsonl(_preference_rows(16), tmp_path / "rows.jsonl")
    spec = JobSpec(
        job_uuid="d", engine=EngineChoice(name="huggingface", reason="test"), model=model,
        data=DataSpec(uri=str(data), data_format="preference", validation_fraction=0.25),
        train=TrainSpec(epochs=2, max_steps_per_epoch=None, gradient_accumulation_steps=2,
                        batch_size=2, shuffle=True, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=96, seed=3, device="cpu"),
        lora=LoraSpec(rank=8, alpha=16, attn_modules=[], apply_to_mlp=True, apply_to_output=False,
                      requested_modules=["q_proj", "v_proj"]),
        dpo=DPOSpec(beta=0.1, loss_type="sigmoid"),
        optim=OptimSpec(type="adamw", lr=1e-2, weight_decay=0.0, warmup_steps=0),
        output_format="huggingface", output_uri=str(tmp_path / "out"),
    )  # fmt: skip
    js = spec.model_dump_json()
    prepare(spec, str(tmp_path / "t.jsonl"), str(tmp_path / "v.jsonl"))
    result = train_step(js, str(family_models[family]), str(tmp_path / "out"),
                        str(tmp_path / "t.jsonl"), str(tmp_path / "v.jsonl"))  # fmt: skip
    first, last = result["epochs"]
    assert last["validation_reward_margin"] > first["validation_reward_margin"] > 0
    assert result["final_loss"] < result["first_loss"]


def test_seeded_runs_repeat(family_models, tmp_path):
    def losses(name: str) -> list:
        work = tmp_path / name
        work.mkdir()
        _run(family_models["smollm2"], work, lora=True)
        return json.loads((work / "out" / "progress.json").read_text())["loss_history"]

    first = losses("a")
    assert len(first) == 8 and first == losses("b")


def test_prompt_masking_follows_the_chat_template(family_models):
    from transformers import AutoTokenizer

    from llama_stack_provider_kfp.training.huggingface import data

    tok = AutoTokenizer.from_pretrained(family_models["smollm2"])
    messages = [{"role": "user", "content": "Greet Ada."},
                {"role": "assistant", "content": "Hello, Ada!"}]  # fmt: skip
    masked = data.encode(tok, messages, 512, train_on_input=False)
    full = data.encode(tok, messages, 512, train_on_input=True)
    assert masked.ids == full.ids and full.labels == full.ids
    learned = [t for t in masked.labels if t != data.IGNORE]
    # Exactly the answer and its end-of-turn: nothing of the system prompt or the question.
    assert tok.decode(learned) == "Hello, Ada!<|im_end|>\n"
    assert data.encode(tok, messages, 8, train_on_input=False).ids == full.ids[:8]


@pytest.mark.parametrize("dpo", [False, True])
def test_rows_that_leave_nothing_to_learn_are_refused_before_the_first_step(
    dpo, family_models, tmp_path
):
    """A row whose answer is truncated away (or that encodes to under two tokens): named in
    the train step's error before any optimizer step, for SFT and DPO alike (a DPO pair of
    them used to crash the log-likelihood with an IndexError)."""
    from llama_stack_provider_kfp.core.errors import InvalidRequest
    from llama_stack_provider_kfp.core.spec import DPOSpec

    long = "Tell me everything about the capital of France and the quick brown fox " * 40
    if dpo:
        rows = [{"prompt": long if i == 2 else "Greet Ada.", "chosen": "Hello, Ada!",
                 "rejected": "Go away."} for i in range(6)]  # fmt: skip
    else:
        rows = instruct_rows(6, seed=1)
        rows[2] = {**rows[2], "chat_completion_input": json.dumps(
            [{"role": "user", "content": long}])}  # fmt: skip
    model = inspect_model_dir("qwen2", family_models["qwen2"])
    data = write_jsonl(rows, tmp_path / "rows.jsonl")
    spec = JobSpec(
        job_uuid="short", engine=EngineChoice(name="huggingface", reason="test"), model=model,
        data=DataSpec(uri=str(data), data_format="preference" if dpo else "instruct"),
        train=TrainSpec(epochs=1, max_steps_per_epoch=None, gradient_accumulation_steps=1,
                        batch_size=2, shuffle=False, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=400, seed=3, device="cpu"),
        lora=None, dpo=DPOSpec(beta=0.1, loss_type="sigmoid") if dpo else None,
        optim=OptimSpec(type="adamw", lr=1e-3, weight_decay=0.0, warmup_steps=0),
        output_format="huggingface", output_uri=str(tmp_path / "out"),
    )  # fmt: skip
    prepare(spec, str(tmp_path / "t.jsonl"), str(tmp_path / "v.jsonl"))
    with pytest.raises(InvalidRequest, match=r"training.* row\(s\) 3 leave no token to learn"):
        train_step(spec.model_dump_json(), str(family_models["qwen2"]), str(tmp_path / "out"),
                   str(tmp_path / "t.jsonl"), str(tmp_path / "v.jsonl"))  # fmt: skip
    error = json.loads((tmp_path / "out" / "error.json").read_text())
    assert "raise max_seq_len" in error["message"]
    assert not (tmp_path / "out" / "checkpoints").exists()  # before any step
