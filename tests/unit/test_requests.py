"""The request checks and the request -> JobSpec translation, as pure functions (no server).

The same refusals are exercised through HTTP in tests/e2e/test_bad_input.py; here each check
is pinned down on its own, with the message that tells the caller what to change.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from llama_stack_api import (
    LoraFinetuningConfig,
    QATFinetuningConfig,
    SupervisedFineTuneRequest,
    TrainingConfig,
)

from llama_stack_provider_kfp.api import requests
from llama_stack_provider_kfp.api.datasets import check_sample
from llama_stack_provider_kfp.config import KFPPostTrainingConfig
from llama_stack_provider_kfp.core.engines import select_engine
from llama_stack_provider_kfp.core.errors import InvalidRequest, Unsupported
from llama_stack_provider_kfp.core.spec import ModelArch, ModelSpec
from llama_stack_provider_kfp.jobs.backend import StagedInputs

TC = {
    "n_epochs": 2,
    "max_steps_per_epoch": 10,
    "gradient_accumulation_steps": 1,
    "dtype": "fp32",
    "data_config": {"dataset_id": "ds", "batch_size": 4, "shuffle": True,
                    "data_format": "instruct"},
    "optimizer_config": {"optimizer_type": "adamw", "lr": 1e-3, "weight_decay": 0.0,
                         "num_warmup_steps": 2},
}  # fmt: skip
LORA = {"type": "LoRA", "lora_attn_modules": ["q_proj", "v_proj"], "apply_lora_to_mlp": True,
        "apply_lora_to_output": False, "rank": 8, "alpha": 16}  # fmt: skip


def _tc(**over) -> TrainingConfig:
    cfg = copy.deepcopy(TC)
    for key, value in over.items():
        if isinstance(value, dict) and key in cfg:
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return TrainingConfig.model_validate(cfg)


def _model(tied: bool = True) -> ModelSpec:
    arch = ModelArch(vocab_size=256, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=64,
                     intermediate_dim=128, norm_eps=1e-5, rope_base=5e5, rope_scale_factor=32.0,
                     tie_word_embeddings=tied)  # fmt: skip
    return ModelSpec(name="tiny", path="/m", layout="huggingface",
                     checkpoint_files=["model.safetensors"],
                     tokenizer_file="original/tokenizer.model", arch=arch)  # fmt: skip


@pytest.mark.parametrize(
    ("over", "words"),
    [
        ({"n_epochs": 0}, ["n_epochs must be >= 1"]),
        ({"max_steps_per_epoch": 0}, ["max_steps_per_epoch"]),
        ({"gradient_accumulation_steps": 0}, ["gradient_accumulation_steps"]),
        ({"max_validation_steps": 0}, ["max_validation_steps"]),
        ({"dtype": "fp16"}, ["fp16", "'bf16' or 'fp32'"]),
        ({"data_config": None}, ["data_config is required"]),
        ({"data_config": {"batch_size": 0}}, ["batch_size"]),
        ({"optimizer_config": None}, ["optimizer_config is required"]),
        ({"optimizer_config": {"lr": 0.0}}, ["lr must be a positive number"]),
        ({"optimizer_config": {"lr": float("nan")}}, ["lr must be a positive number"]),
        ({"optimizer_config": {"weight_decay": -1.0}}, ["weight_decay"]),
        ({"optimizer_config": {"num_warmup_steps": -1}}, ["num_warmup_steps"]),
    ],
)
def test_training_config_refusals(over, words):
    with pytest.raises(InvalidRequest) as err:
        requests.check_training(_tc(**over))
    for w in words:
        assert w in str(err.value)


def test_all_training_problems_reported_at_once():
    with pytest.raises(InvalidRequest) as err:
        requests.check_training(_tc(n_epochs=0, data_config={"batch_size": 0}))
    assert "n_epochs" in str(err.value) and "batch_size" in str(err.value)


def test_a_good_training_config_passes_and_packed_is_501():
    requests.check_training(_tc())
    with pytest.raises(Unsupported, match="packed"):
        requests.check_training(_tc(data_config={"packed": True}))


def test_algorithm_refusals():
    with pytest.raises(InvalidRequest, match="lora_attn_modules"):
        requests.check_algorithm(None)
    qat = QATFinetuningConfig(type="QAT", quantizer_name="int8", group_size=32)
    with pytest.raises(Unsupported, match="QAT"):
        requests.check_algorithm(qat)
    with pytest.raises(Unsupported, match="quantize_base"):
        requests.check_algorithm(LoraFinetuningConfig(**LORA, quantize_base=True))
    assert requests.check_algorithm(LoraFinetuningConfig(**LORA)).rank == 8


@pytest.mark.parametrize(
    ("over", "tied", "words"),
    [
        ({"lora_attn_modules": ["q_proj", "w9"]}, True, ["w9", "choose from"]),
        ({"lora_attn_modules": [], "apply_lora_to_mlp": False}, True, ["no module to adapt"]),
        ({"rank": 0}, True, ["rank must be >= 1"]),
        ({"alpha": 0}, True, ["alpha must be > 0"]),
        ({"apply_lora_to_output": True}, True, ["apply_lora_to_output=false"]),
    ],
)
def test_lora_refusals(over, tied, words):
    with pytest.raises(InvalidRequest) as err:
        requests.check_lora(LoraFinetuningConfig(**{**LORA, **over}), _model(tied))
    for w in words:
        assert w in str(err.value)


def test_lora_on_an_untied_output_is_fine():
    requests.check_lora(LoraFinetuningConfig(**{**LORA, "apply_lora_to_output": True}),
                        _model(tied=False))  # fmt: skip


def test_model_name_required():
    req = SupervisedFineTuneRequest(job_uuid="j", training_config=_tc(),
                                    hyperparam_search_config={}, logger_config={})  # fmt: skip
    with pytest.raises(InvalidRequest, match="name the base model"):
        requests.model_name(req)
    req.checkpoint_dir = "/weights"
    assert requests.model_name(req) == "/weights"


@pytest.mark.parametrize(
    ("rows", "words"),
    [
        ([], ["is empty"]),
        ([{"question": "q"}], ["row 1", "chat_completion_input", "expected_answer"]),
    ],
)
def test_sample_refusals(rows, words):
    with pytest.raises(InvalidRequest) as err:
        check_sample("ds", rows, "instruct")
    for w in words:
        assert w in str(err.value)


def test_engine_selection_explains_itself():
    choice = select_engine("llama", "dora")
    assert choice.name == "torchtune" and "auto" in choice.reason
    assert "provider config" in select_engine("llama", "lora", "torchtune").reason
    with pytest.raises(Unsupported, match="no engine trains a 'qwen2' model"):
        select_engine("qwen2", "lora")
    with pytest.raises(Unsupported, match="does not exist"):
        select_engine("llama", "lora", "megatron")


def test_build_spec_carries_every_setting():
    config = KFPPostTrainingConfig(work_dir=Path("/tmp/w"), max_seq_len=512, seed=7,
                                   validation_fraction=0.1, device="cpu")  # fmt: skip
    req = SupervisedFineTuneRequest(
        job_uuid="j-1", model="tiny", training_config=_tc(
            efficiency_config={"enable_activation_checkpointing": True},
            data_config={"train_on_input": True}),
        hyperparam_search_config={}, logger_config={},
    )  # fmt: skip
    lora = LoraFinetuningConfig(**{**LORA, "use_dora": True})
    staged = StagedInputs("/in/train.jsonl", None, "/out")
    engine = select_engine("llama", requests.algorithm_name(lora))
    spec = requests.build_spec(req, lora, _model(), staged, engine, config)
    assert spec.engine.name == "torchtune" and spec.data.uri == "/in/train.jsonl"
    assert spec.data.validation_fraction == 0.1 and spec.output_uri == "/out"
    t = spec.train
    assert (t.epochs, t.max_steps_per_epoch, t.batch_size, t.dtype) == (2, 10, 4, "fp32")
    assert (t.max_seq_len, t.seed, t.device) == (512, 7, "cpu")
    assert t.train_on_input and t.enable_activation_checkpointing
    assert not t.enable_activation_offloading
    assert spec.lora.use_dora and spec.lora.attn_modules == ["q_proj", "v_proj"]
    assert (spec.optim.type, spec.optim.lr, spec.optim.warmup_steps) == ("adamw", 1e-3, 2)
    assert spec.output_format == "huggingface"  # the input layout, none configured
