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

from llama_stack_provider_kfp.api import translate
from llama_stack_provider_kfp.api.datasets import check_sample
from llama_stack_provider_kfp.config import KFPPostTrainingConfig
from llama_stack_provider_kfp.core.engines import JobTraits, select_engine
from llama_stack_provider_kfp.core.errors import InvalidRequest, Unsupported
from llama_stack_provider_kfp.core.lora_targets import resolve
from llama_stack_provider_kfp.core.spec import ModelArch, ModelSpec
from llama_stack_provider_kfp.jobs.backend import StagedInputs
from llama_stack_provider_kfp.service import submission

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


LLAMA = [
    "embed_tokens",
    "lm_head",
    "mlp.down_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "self_attn.k_proj",
    "self_attn.o_proj",
    "self_attn.q_proj",
    "self_attn.v_proj",
]
GPT2 = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "wpe", "wte"]
PHI3 = ["embed_tokens", "lm_head", "mlp.down_proj", "mlp.gate_up_proj", "self_attn.o_proj",
        "self_attn.qkv_proj"]  # fmt: skip


def _model(tied: bool = True, family: str = "llama", modules: list[str] = LLAMA) -> ModelSpec:
    arch = ModelArch(vocab_size=256, num_layers=2, num_heads=4, num_kv_heads=2, embed_dim=64,
                     intermediate_dim=128, norm_eps=1e-5, rope_base=5e5, rope_scale_factor=32.0,
                     tie_word_embeddings=tied) if family == "llama" else None  # fmt: skip
    return ModelSpec(name="tiny", family=family, path="/m", layout="huggingface",
                     checkpoint_files=["model.safetensors"], hf_tokenizer=True, tied=tied,
                     tokenizer_file="original/tokenizer.model" if arch else "",
                     modules=modules if tied or "lm_head" in modules else [*modules, "lm_head"],
                     arch=arch)  # fmt: skip


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
        ({"optimizer_config": {"lr": 0.0}}, ["lr must be a positive number"]),
        ({"optimizer_config": {"lr": float("nan")}}, ["lr must be a positive number"]),
        ({"optimizer_config": {"weight_decay": -1.0}}, ["weight_decay"]),
        ({"optimizer_config": {"num_warmup_steps": -1}}, ["num_warmup_steps"]),
    ],
)
def test_training_config_refusals(over, words):
    with pytest.raises(InvalidRequest) as err:
        translate.check_training(_tc(**over))
    for w in words:
        assert w in str(err.value)


def test_all_training_problems_reported_at_once():
    with pytest.raises(InvalidRequest) as err:
        translate.check_training(_tc(n_epochs=0, data_config={"batch_size": 0}))
    assert "n_epochs" in str(err.value) and "batch_size" in str(err.value)


def test_a_good_training_config_passes():
    translate.check_training(_tc())
    translate.check_training(_tc(optimizer_config=None))  # optional in the 0.6.1 API
    translate.check_training(_tc(data_config={"packed": True}))


def test_algorithm_refusals_and_full_fine_tuning_by_default():
    assert translate.check_algorithm(None) is None  # full-parameter fine-tuning
    qat = QATFinetuningConfig(type="QAT", quantizer_name="int8", group_size=32)
    with pytest.raises(Unsupported, match="QAT"):
        translate.check_algorithm(qat)
    assert translate.check_algorithm(LoraFinetuningConfig(**LORA)).rank == 8
    assert translate.check_algorithm(LoraFinetuningConfig(**LORA, quantize_base=True))


def test_qlora_needs_nf4_sized_matrices_and_the_torchtune_engine():
    qlora = translate.lora(LoraFinetuningConfig(**LORA, quantize_base=True))
    with pytest.raises(InvalidRequest, match=r"NF4.*k_proj 32x64.*quantize_base=false"):
        submission.lora_targets(qlora, _model())  # 64 wide: too small for NF4 blocks
    wide = _model().model_copy(update={"arch": _model().arch.model_copy(
        update={"embed_dim": 2048, "num_heads": 32, "num_kv_heads": 8,
                "intermediate_dim": 8192})})  # fmt: skip
    spec = submission.lora_spec(qlora, submission.lora_targets(qlora, wide))
    assert spec is not None and spec.quantize_base
    assert select_engine(JobTraits.of(wide, "qlora", True)).name == "torchtune"
    with pytest.raises(Unsupported, match="bitsandbytes on a CUDA device"):
        select_engine(JobTraits.of(_model(family="qwen2", modules=LLAMA), "qlora", True))


@pytest.mark.parametrize(
    ("over", "tied", "words"),
    [
        ({"lora_attn_modules": ["q_proj", "w9"]}, True, ["['w9']", "self_attn.q_proj"]),
        ({"lora_attn_modules": [], "apply_lora_to_mlp": False}, True, ["no module to adapt"]),
        ({"rank": 0}, True, ["rank must be >= 1"]),
        ({"alpha": 0}, True, ["alpha must be > 0"]),
        ({"apply_lora_to_output": True}, True, ["apply_lora_to_output=false"]),
    ],
)
def test_lora_refusals(over, tied, words):
    with pytest.raises(InvalidRequest) as err:
        submission.lora_targets(
            translate.lora(LoraFinetuningConfig(**{**LORA, **over})), _model(tied)
        )
    for w in words:
        assert w in str(err.value)


def test_all_problems_of_a_lora_config_at_once():
    bad = translate.lora(
        LoraFinetuningConfig(**{**LORA, "lora_attn_modules": ["q_proj", "w9"], "rank": 0})
    )
    with pytest.raises(InvalidRequest) as err:
        submission.lora_targets(bad, _model())
    assert "w9" in str(err.value) and "rank must be >= 1" in str(err.value)


def test_lora_on_an_untied_output_is_fine():
    targets = submission.lora_targets(
        translate.lora(LoraFinetuningConfig(**{**LORA, "apply_lora_to_output": True})),
        _model(tied=False),
    )
    assert "lm_head" in targets.peft


@pytest.mark.parametrize(
    ("modules", "asked", "mlp", "peft", "torchtune"),
    [
        # Both spellings, on a Llama: the same modules; torchtune gets its own names.
        (LLAMA, ["q_proj", "v_proj", "output_proj"], True,
         ["self_attn.q_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.down_proj",
          "mlp.gate_proj", "mlp.up_proj"], ["q_proj", "v_proj", "output_proj"]),
        (LLAMA, ["q_proj", "o_proj"], False, ["self_attn.q_proj", "self_attn.o_proj"],
         ["q_proj", "output_proj"]),
        # A single MLP projection by name: real, but torchtune's builders cannot express it.
        (LLAMA, ["gate_proj"], False, ["mlp.gate_proj"], None),
        # GPT-2: q/v live in the fused c_attn; the attention output is attn.c_proj, not the
        # MLP's c_proj.
        (GPT2, ["q_proj", "v_proj", "output_proj"], False, ["attn.c_attn", "attn.c_proj"],
         ["q_proj", "v_proj", "output_proj"]),
        (GPT2, [], True, ["mlp.c_fc", "mlp.c_proj"], []),
        # Phi-3: fused qkv_proj and gate_up_proj.
        (PHI3, ["q_proj", "k_proj"], True,
         ["self_attn.qkv_proj", "mlp.down_proj", "mlp.gate_up_proj"], ["q_proj", "k_proj"]),
    ],
)  # fmt: skip
def test_module_names_resolve_per_model(modules, asked, mlp, peft, torchtune):
    targets = resolve(asked, mlp, False, modules, tied=True)
    assert targets.peft == peft
    assert targets.torchtune_attn == torchtune
    if modules is GPT2 and asked:
        assert any("fused attn.c_attn" in n for n in targets.notes)


def test_model_name_required():
    req = SupervisedFineTuneRequest(job_uuid="j", training_config=_tc(),
                                    hyperparam_search_config={}, logger_config={})  # fmt: skip
    with pytest.raises(InvalidRequest, match="name the base model"):
        translate.model_name(req)
    req.checkpoint_dir = "/weights"
    assert translate.model_name(req) == "/weights"


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


def _traits(model: ModelSpec, algo: str = "lora", fits: bool = True) -> JobTraits:
    return JobTraits.of(model, algo, fits)


def test_torchtune_runs_several_ranks_with_a_batch_they_divide():
    llama3 = _model()
    assert select_engine(JobTraits.of(llama3, "lora", True, ranks=2)).name == "torchtune"
    assert select_engine(JobTraits.of(llama3, "dora", True, ranks=4)).name == "torchtune"
    with pytest.raises(Unsupported, match="QLoRA on several devices"):
        select_engine(JobTraits.of(llama3, "qlora", True, ranks=2), "torchtune")
    nodes = select_engine(JobTraits.of(llama3, "lora", True, ranks=4, nodes=2))
    assert nodes.name == "huggingface" and "several nodes" in nodes.reason
    submission.check_batch_split(8, 4, "torchtune")
    submission.check_batch_split(6, 4, "huggingface")  # DDP shares out any batch
    with pytest.raises(InvalidRequest, match=r"batch_size \(6\) does not divide .* 4 devices"
                       r".*multiple of 4 \(e.g. 4\)"):  # fmt: skip
        submission.check_batch_split(6, 4, "torchtune")


def test_engine_selection_explains_itself():
    llama3 = _model()
    choice = select_engine(_traits(llama3, "dora"))
    assert choice.name == "torchtune" and choice.reason.startswith("auto:")
    assert "provider config" in select_engine(_traits(llama3), "torchtune").reason
    # What torchtune cannot run goes to the Hugging Face engine, with the reason why.
    for traits in (_traits(llama3, "full"), _traits(llama3, fits=False),
                   _traits(_model(family="qwen2", modules=LLAMA))):  # fmt: skip
        choice = select_engine(traits)
        assert choice.name == "huggingface" and "not torchtune" in choice.reason
    with pytest.raises(Unsupported, match=r"torchtune.*cannot train a 'qwen2' model"):
        select_engine(_traits(_model(family="qwen2", modules=LLAMA)), "torchtune")
    with pytest.raises(Unsupported, match="does not exist"):
        select_engine(_traits(llama3), "megatron")
    meta_full = _traits(llama3.model_copy(update={"layout": "meta"}), "full")
    with pytest.raises(Unsupported, match=r"no engine can train.*Meta"):
        select_engine(meta_full)


def test_build_spec_carries_every_setting():
    config = KFPPostTrainingConfig(work_dir=Path("/tmp/w"), max_seq_len=512, seed=7,
                                   validation_fraction=0.1, device="cpu")  # fmt: skip
    req = SupervisedFineTuneRequest(
        job_uuid="j-1", model="tiny", training_config=_tc(
            efficiency_config={"enable_activation_checkpointing": True,
                               "memory_efficient_fsdp_wrap": True},
            data_config={"train_on_input": True}),
        hyperparam_search_config={}, logger_config={},
    )  # fmt: skip
    lora = translate.lora(LoraFinetuningConfig(**{**LORA, "use_dora": True}))
    staged = StagedInputs("/in/train.jsonl", None, "/out")
    lspec = submission.lora_spec(lora, submission.lora_targets(lora, _model()))
    engine = select_engine(_traits(_model(), "dora"))
    sub = submission.Submission("j-1", "tiny", None, translate.training(req.training_config),
                                lora, None, config=config)  # fmt: skip
    spec = submission.build_spec(sub, lspec, _model(), staged, engine)
    assert spec.engine.name == "torchtune" and spec.data.uri == "/in/train.jsonl"
    assert spec.data.validation_fraction == 0.1 and spec.output_uri == "/out"
    t = spec.train
    assert (t.epochs, t.max_steps_per_epoch, t.batch_size, t.dtype) == (2, 10, 4, "fp32")
    assert (t.max_seq_len, t.seed, t.device) == (512, 7, "cpu")
    assert t.train_on_input and t.enable_activation_checkpointing
    assert not t.enable_activation_offloading
    # A new job may shard on the huggingface engine (a record without the field: DDP).
    assert t.memory_efficient_fsdp_wrap and not t.fsdp_cpu_offload and t.sharding == "auto"
    assert spec.lora.use_dora and spec.lora.attn_modules == ["q_proj", "v_proj"]
    assert spec.lora.requested_modules == ["q_proj", "v_proj"]
    assert spec.lora.target_modules[:2] == ["self_attn.q_proj", "self_attn.v_proj"]
    assert (spec.optim.type, spec.optim.lr, spec.optim.warmup_steps) == ("adamw", 1e-3, 2)
    assert spec.output_format == "huggingface"  # the input layout, none configured
    assert spec.stages == ["train"] and spec.evaluation is None and spec.registry is None


def test_omitted_fields_take_documented_defaults():
    config = KFPPostTrainingConfig(work_dir=Path("/tmp/w"))
    tc = TrainingConfig.model_validate({"n_epochs": 1, "max_steps_per_epoch": 1,
        "data_config": {"dataset_id": "ds", "batch_size": 1, "shuffle": False,
                        "data_format": "instruct"}})  # fmt: skip
    translate.check_training(tc)
    req = SupervisedFineTuneRequest(job_uuid="j", model="m", training_config=tc,
                                    hyperparam_search_config={}, logger_config={})  # fmt: skip
    staged = StagedInputs("/in", None, "/out")
    engine = select_engine(_traits(_model(), "full"))
    sub = submission.Submission(req.job_uuid, "m", None, translate.training(tc), None, None,
                                config=config)  # fmt: skip
    spec = submission.build_spec(sub, None, _model(), staged, engine)
    assert spec.lora is None and spec.engine.name == "huggingface"
    assert spec.train.dtype == "bf16"  # the API's own default
    o = spec.optim
    assert (o.type, o.lr, o.weight_decay, o.warmup_steps) == ("adamw", 2e-5, 0.01, None)
    assert o.warmup(1) == 0 and o.warmup(100) == 10  # a one-step job trains at full lr


def test_dpo_checks_and_default_lora():
    from llama_stack_api import DPOAlignmentConfig

    dpo = translate.check_dpo(DPOAlignmentConfig(beta=0.1, loss_type="ipo"))
    assert (dpo.beta, dpo.loss_type) == (0.1, "ipo")
    with pytest.raises(Unsupported, match=r"kto_pair.*use sigmoid, hinge or ipo"):
        translate.check_dpo(DPOAlignmentConfig(beta=0.1, loss_type="kto_pair"))
    with pytest.raises(InvalidRequest, match="beta must be a positive number"):
        translate.check_dpo(DPOAlignmentConfig(beta=0.0))
    config = KFPPostTrainingConfig(work_dir=Path("/tmp/w"))
    lora = translate.dpo_lora(config.dpo)
    assert lora is not None and lora.attn_modules == ["q_proj", "v_proj", "output_proj"]
    assert translate.dpo_lora(config.dpo.model_copy(update={"full": True})) is None
    # Preference rows are read as such whatever data_format says (upstream sends dialog).
    tc = _tc(data_config={"data_format": "dialog"})
    sub = submission.Submission("j", "m", None, translate.training(tc), lora, dpo)
    assert sub.data_format == "preference"
    engine = select_engine(_traits(_model(), "dpo-lora"))
    assert engine.name == "huggingface"
