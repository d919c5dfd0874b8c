"""How a request asks for OSFT (DESIGN.md "Per-request extensions"), and every refusal, as pure
functions: the ratio, the modules, algorithm_config and the extension together, the engine.
The same refusals go through HTTP in tests/e2e/test_bad_input.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from llama_stack_api import LoraFinetuningConfig, QATFinetuningConfig

from llama_stack_provider_kfp.api import translate
from llama_stack_provider_kfp.config import KFPPostTrainingConfig, OSFTConfig
from llama_stack_provider_kfp.core.engines import JobTraits, select_engine
from llama_stack_provider_kfp.core.errors import InvalidRequest, Unsupported
from llama_stack_provider_kfp.core.osft_targets import resolve_osft
from llama_stack_provider_kfp.core.spec import ModelSpec, OSFTSpec, algorithm
from llama_stack_provider_kfp.service import submission

LLAMA = ["embed_tokens", "lm_head", "mlp.down_proj", "mlp.gate_proj", "mlp.up_proj",
         "self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj",
         "self_attn.v_proj"]  # fmt: skip
GPT2 = ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj", "wpe", "wte"]
PHI3 = ["embed_tokens", "lm_head", "mlp.down_proj", "mlp.gate_up_proj", "self_attn.o_proj",
        "self_attn.qkv_proj"]  # fmt: skip
LORA = {"type": "LoRA", "lora_attn_modules": ["q_proj"], "apply_lora_to_mlp": False,
        "apply_lora_to_output": False, "rank": 8, "alpha": 16}  # fmt: skip


def _model(modules: list[str], tied: bool = False, family: str = "llama") -> ModelSpec:
    return ModelSpec(name="tiny", family=family, path="/m", layout="huggingface",
                     checkpoint_files=["model.safetensors"], hf_tokenizer=True, tied=tied,
                     tokenizer_file="", modules=modules, arch=None)  # fmt: skip


@pytest.mark.parametrize(
    ("modules", "asked", "want"),
    [
        (LLAMA, [], ["mlp.down_proj", "mlp.gate_proj", "mlp.up_proj", "self_attn.k_proj",
                     "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj"]),
        (GPT2, [], ["attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"]),
        (PHI3, [], ["mlp.down_proj", "mlp.gate_up_proj", "self_attn.o_proj",
                    "self_attn.qkv_proj"]),
        # torchtune's spelling, Hugging Face's, a fused projection, a path.
        (LLAMA, ["q_proj", "output_proj"], ["self_attn.q_proj", "self_attn.o_proj"]),
        (PHI3, ["v_proj", "down_proj"], ["self_attn.qkv_proj", "mlp.down_proj"]),
        (GPT2, ["mlp.c_fc"], ["mlp.c_fc"]),
        (LLAMA, ["lm_head"], ["lm_head"]),  # untied: a matrix like any other
        ([], ["q_proj"], []),  # weights unread at submit: the train step resolves them
    ],
)  # fmt: skip
def test_targets_default_to_attention_and_mlp_and_names_resolve(modules, asked, want):
    assert resolve_osft(asked, modules, tied=False).modules == want


def test_target_refusals_say_what_to_change():
    with pytest.raises(InvalidRequest, match=r"osft.target_modules \['qproj'\] are not in this "
                       r"model; its weight matrices are: embed_tokens"):  # fmt: skip
        resolve_osft(["qproj"], LLAMA, tied=False)
    with pytest.raises(InvalidRequest, match=r"ties to its embeddings.*leave it out"):
        resolve_osft(["lm_head"], LLAMA, tied=True)
    with pytest.raises(InvalidRequest, match=r"no attention or MLP projection.*name the matrices"):
        resolve_osft([], ["embed_tokens", "lm_head", "blocks.w1"], tied=False)
    with pytest.raises(InvalidRequest, match=r"invalid OSFT settings: osft\.target_modules"):
        submission.osft_spec(OSFTConfig(target_modules=["gate"]), _model(GPT2, family="gpt2"))


@pytest.mark.parametrize("ratio", [0, -0.1, 1.5, "half"])
def test_the_ratio_is_in_zero_one(ratio):
    with pytest.raises(InvalidRequest, match=r'kfp"\].osft.unfreeze_rank_ratio: Input should'):
        KFPPostTrainingConfig().for_request({"algorithm": "osft",
                                             "osft": {"unfreeze_rank_ratio": ratio}})  # fmt: skip


def test_a_request_asks_for_osft_through_the_extension():
    config = KFPPostTrainingConfig(work_dir=Path("/tmp/w"))
    assert config.algorithm is None  # full fine-tuning, as before OSFT existed
    got = config.for_request({"algorithm": "osft", "osft": {"unfreeze_rank_ratio": 0.5}})
    assert got.algorithm == "osft" and got.osft.unfreeze_rank_ratio == 0.5
    assert got.osft.target_modules is None  # every attention and MLP projection
    assert not got.osft.freeze_non_targets  # embeddings and norms train, as in mini-trainer
    spec = submission.osft_spec(got.osft, _model(LLAMA))
    assert spec == OSFTSpec(unfreeze_rank_ratio=0.5, requested_modules=[],
                            target_modules=resolve_osft([], LLAMA, False).modules)  # fmt: skip
    assert algorithm(None, None, spec) == "osft"
    with pytest.raises(InvalidRequest, match=r"algorithm: Input should be 'full' or 'osft'"):
        config.for_request({"algorithm": "lora"})


def test_algorithm_config_and_the_extension_together_are_refused():
    lora = LoraFinetuningConfig(**LORA)
    with pytest.raises(InvalidRequest, match=r"names its algorithm twice: algorithm_config \(LoRA\)"
                       r' and hyperparam_search_config\["kfp"\].algorithm; send one'):  # fmt: skip
        translate.check_algorithm_choice(lora, {"algorithm": "osft"})
    with pytest.raises(InvalidRequest, match="quantize_base does not apply"):
        translate.check_algorithm_choice(LoraFinetuningConfig(**LORA, quantize_base=True),
                                         {"algorithm": "osft"})  # fmt: skip
    qat = QATFinetuningConfig(type="QAT", quantizer_name="int8", group_size=32)
    with pytest.raises(InvalidRequest, match=r"algorithm_config \(QAT\).*\.osft"):
        translate.check_algorithm_choice(qat, {"osft": {"unfreeze_rank_ratio": 0.5}})
    # One of them alone is fine; the provider's own `algorithm: osft` yields to a LoRA request.
    translate.check_algorithm_choice(lora, {"max_rows": 5})
    translate.check_algorithm_choice(None, {"algorithm": "osft"})
    config = KFPPostTrainingConfig(algorithm="osft")
    translate.check_osft_settings(config, False, {})


def test_osft_settings_without_osft_are_refused():
    config = KFPPostTrainingConfig().for_request({"osft": {"unfreeze_rank_ratio": 0.5}})
    with pytest.raises(InvalidRequest, match=r'\.osft applies to OSFT.*add "algorithm": "osft"'):
        translate.check_osft_settings(config, False, {"osft": {"unfreeze_rank_ratio": 0.5}})
    translate.check_osft_settings(config, True, {"osft": {"unfreeze_rank_ratio": 0.5}})


def test_osft_with_fsdp_on_several_ranks_is_refused():
    from llama_stack_api import DataConfig, EfficiencyConfig, TrainingConfig

    from llama_stack_provider_kfp.service.submission import Submission, check_osft_sharding

    def sub(osft: bool, ranks: int, **efficiency) -> Submission:
        tc = TrainingConfig(n_epochs=1, data_config=DataConfig(
            dataset_id="d", batch_size=2, shuffle=False, data_format="instruct"),
            efficiency_config=EfficiencyConfig(**efficiency))  # fmt: skip
        config = KFPPostTrainingConfig(devices_per_job=ranks)
        return Submission("j", "m", None, translate.training(tc), None, None, config=config,
                          osft=osft)  # fmt: skip

    for flag in ("memory_efficient_fsdp_wrap", "fsdp_cpu_offload"):
        with pytest.raises(Unsupported, match="OSFT does not shard across ranks"):
            check_osft_sharding(sub(True, 2, **{flag: True}))
        check_osft_sharding(sub(True, 1, **{flag: True}))  # one rank: nothing to shard
        check_osft_sharding(sub(False, 2, **{flag: True}))  # LoRA, full: they shard
    check_osft_sharding(sub(True, 2))  # OSFT on DDP


def test_osft_trains_on_the_huggingface_engine_only():
    llama3 = _model(LLAMA).model_copy(update={"tokenizer_file": "original/tokenizer.model"})
    for algo in ("osft", "dpo-osft"):
        traits = JobTraits.of(llama3, algo, True)
        choice = select_engine(traits)
        assert (
            choice.name == "huggingface" and "OSFT runs on the huggingface engine" in choice.reason
        )
        says = r"engine 'torchtune'.*cannot train.*osft.*OSFT runs on the huggingface engine"
        with pytest.raises(Unsupported, match=says + r" \(set engine: huggingface, or auto\)"):
            select_engine(traits, "torchtune")
