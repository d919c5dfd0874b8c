"""A llama-stack request -> service.submission's Submission: the checks of its own fields
(pure functions, llama-stack's field names in the messages) and the translation.

Everything here runs before anything is created; a problem is an InvalidRequest (400) or
Unsupported (501) whose message says what to change.
"""

from __future__ import annotations

import math

from llama_stack_api import (
    AlgorithmConfig,
    DPOAlignmentConfig,
    LoraFinetuningConfig,
    QATFinetuningConfig,
    SupervisedFineTuneRequest,
    TrainingConfig,
)

from ..config import DPODefaults, KFPPostTrainingConfig
from ..core.errors import InvalidRequest, Unsupported
from ..core.spec import DPOSpec
from ..service.submission import Lora, Optimizer, Training


def descriptor_repo(model: str) -> str | None:
    """The Hugging Face repo llama-stack's model registry lists for a descriptor."""
    from llama_stack.models.llama.sku_list import resolve_model as resolve_sku

    sku = resolve_sku(model)
    return getattr(sku, "huggingface_repo", None) if sku else None


def model_name(request: SupervisedFineTuneRequest) -> str:
    name = request.model or request.checkpoint_dir
    if not name:
        raise InvalidRequest(
            "name the base model: model='Llama3.2-1B-Instruct', a Hugging Face repo id or "
            "a directory, or checkpoint_dir=<directory with the weights>"
        )
    return name


def check_algorithm(algo: AlgorithmConfig | None) -> Lora | None:
    """The LoRA settings, or None for full-parameter fine-tuning (no algorithm_config, as
    llama-stack's inline::huggingface provider reads it)."""
    if algo is None:
        return None
    if isinstance(algo, QATFinetuningConfig):
        raise Unsupported("QAT fine-tuning is not supported yet; use LoRA or full fine-tuning")
    return lora(algo)


def lora(lc: LoraFinetuningConfig) -> Lora:
    return Lora(rank=lc.rank, alpha=lc.alpha, attn_modules=list(lc.lora_attn_modules),
                apply_to_mlp=lc.apply_lora_to_mlp, apply_to_output=lc.apply_lora_to_output,
                use_dora=bool(lc.use_dora), quantize_base=bool(lc.quantize_base))  # fmt: skip


def training(tc: TrainingConfig, data_format: str | None = None) -> Training:
    """The request's hyper-parameters (check_training passed them)."""
    dc, oc, ec = tc.data_config, tc.optimizer_config, tc.efficiency_config
    assert dc is not None  # check_training refused it missing
    optimizer = None if oc is None else Optimizer(
        type=oc.optimizer_type.value, lr=oc.lr, weight_decay=oc.weight_decay,
        warmup_steps=oc.num_warmup_steps)  # fmt: skip
    return Training(
        epochs=tc.n_epochs,
        batch_size=dc.batch_size,
        data_format=data_format or dc.data_format.value,
        max_steps_per_epoch=tc.max_steps_per_epoch,
        gradient_accumulation_steps=tc.gradient_accumulation_steps,
        max_validation_steps=tc.max_validation_steps,
        dtype=tc.dtype or "bf16",
        shuffle=dc.shuffle,
        packed=bool(dc.packed),
        train_on_input=bool(dc.train_on_input),
        optimizer=optimizer,
        activation_checkpointing=bool(ec and ec.enable_activation_checkpointing),
        activation_offloading=bool(ec and ec.enable_activation_offloading),
        fsdp_cpu_offload=bool(ec and ec.fsdp_cpu_offload),
        memory_efficient_fsdp_wrap=bool(ec and ec.memory_efficient_fsdp_wrap),
    )


EXTENSION = 'hyperparam_search_config["kfp"]'


def check_algorithm_choice(algo: AlgorithmConfig | None, extension: object) -> None:
    """The request names its algorithm once: algorithm_config, or the extension's
    `algorithm` (DESIGN.md "Per-request extensions": both -> 400)."""
    if algo is None or not isinstance(extension, dict):
        return
    named = [k for k in ("algorithm", "osft") if k in extension]
    if not named:
        return
    qlora = " (OSFT trains full-precision factors: quantize_base does not apply)" if getattr(
        algo, "quantize_base", False) else ""  # fmt: skip
    raise InvalidRequest(
        f"the request names its algorithm twice: algorithm_config ({algo.type}) and "
        f"{EXTENSION}.{named[0]}{qlora}; send one of them (for OSFT: no algorithm_config, and "
        f'{EXTENSION} = {{"algorithm": "osft", "osft": {{"unfreeze_rank_ratio": ...}}}})'
    )


def check_osft_settings(config: KFPPostTrainingConfig, osft: bool, extension: object) -> None:
    """OSFT settings in a request that does not train OSFT are a mistake, not a no-op."""
    if not osft and isinstance(extension, dict) and "osft" in extension:
        raise InvalidRequest(
            f"{EXTENSION}.osft applies to OSFT, and this request trains "
            f'{config.algorithm or "with its default algorithm"}; add "algorithm": "osft" '
            "beside it"
        )


def check_training(tc: TrainingConfig, ranks: int = 1) -> None:
    problems = []
    if tc.n_epochs < 1:
        problems.append(f"n_epochs must be >= 1 (got {tc.n_epochs})")
    if tc.max_steps_per_epoch is not None and tc.max_steps_per_epoch < 1:
        problems.append(f"max_steps_per_epoch must be >= 1 (got {tc.max_steps_per_epoch})")
    if tc.gradient_accumulation_steps < 1:
        problems.append(
            f"gradient_accumulation_steps must be >= 1 (got {tc.gradient_accumulation_steps})"
        )
    if tc.max_validation_steps is not None and tc.max_validation_steps < 1:
        problems.append(
            f"max_validation_steps must be >= 1 or null (got {tc.max_validation_steps})"
        )
    if (tc.dtype or "bf16") not in ("bf16", "fp32"):
        problems.append(f"dtype {tc.dtype!r} is not supported: use 'bf16' or 'fp32'")
    dc, oc = tc.data_config, tc.optimizer_config
    if dc is None:
        problems.append("training_config.data_config is required (dataset_id, batch_size, ...)")
    elif dc.batch_size < 1:
        problems.append(f"data_config.batch_size must be >= 1 (got {dc.batch_size})")
    elif dc.batch_size < ranks:
        problems.append(
            f"data_config.batch_size ({dc.batch_size}) is smaller than the {ranks} devices each "
            "job trains on (devices_per_job / remote.resources.gpu_count x nodes): every "
            "device takes its share of each batch; raise batch_size to at least that"
        )
    if oc is not None:
        if not (math.isfinite(oc.lr) and oc.lr > 0):
            problems.append(f"optimizer_config.lr must be a positive number (got {oc.lr})")
        if not (math.isfinite(oc.weight_decay) and oc.weight_decay >= 0):
            problems.append(f"optimizer_config.weight_decay must be >= 0 (got {oc.weight_decay})")
        if oc.num_warmup_steps < 0:
            problems.append(
                f"optimizer_config.num_warmup_steps must be >= 0 (got {oc.num_warmup_steps})"
            )
    if problems:
        raise InvalidRequest("invalid training_config: " + "; ".join(problems))


def check_dpo(algo: DPOAlignmentConfig) -> DPOSpec:
    loss = algo.loss_type.value
    if loss not in ("sigmoid", "hinge", "ipo"):
        raise Unsupported(
            f"DPO loss_type {loss!r} is not supported (TRL dropped kto_pair); use sigmoid, "
            "hinge or ipo"
        )
    if not (math.isfinite(algo.beta) and algo.beta > 0):
        raise InvalidRequest(f"beta must be a positive number (got {algo.beta})")
    return DPOSpec(beta=algo.beta, loss_type=loss)


def dpo_lora(defaults: DPODefaults) -> Lora | None:
    """The LoRA a DPO job trains (provider config), or None for full DPO."""
    if defaults.full:
        return None
    return Lora(rank=defaults.lora_rank, alpha=defaults.lora_alpha,
                attn_modules=list(defaults.lora_modules),
                apply_to_mlp=defaults.apply_lora_to_mlp)  # fmt: skip
