"""Write one epoch's results in the output layout.

<output>/checkpoints/epoch_<N>/
    merged/    full weights with LoRA merged, in the requested layout, plus config + tokenizer
    adapter/   PEFT adapter (adapter_config.json + adapter_model.safetensors)
    metrics.json
The folder is built under a temporary name and renamed, so readers never see half of it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torchtune.models import convert_weights

from ...core.outputs import ADAPTER, MERGED, epoch_dir
from ...core.spec import ModelArch, ModelSpec
from ..checkpoints import epoch_writer

_HF_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


def hf_config(arch: ModelArch, dtype: str) -> dict[str, Any]:
    cfg: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": arch.vocab_size,
        "hidden_size": arch.embed_dim,
        "intermediate_size": arch.intermediate_dim,
        "num_hidden_layers": arch.num_layers,
        "num_attention_heads": arch.num_heads,
        "num_key_value_heads": arch.num_kv_heads,
        "head_dim": arch.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": 131072 if arch.rope_scale_factor else 8192,
        "rms_norm_eps": arch.norm_eps,
        "rope_theta": arch.rope_base,
        "rope_scaling": None,
        "tie_word_embeddings": arch.tie_word_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 128000,
        "eos_token_id": 128001,
        "torch_dtype": dtype,
    }
    if arch.rope_scale_factor:
        cfg["rope_scaling"] = {
            "rope_type": "llama3",
            "factor": arch.rope_scale_factor,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
    return cfg


def meta_params(arch: ModelArch) -> dict[str, Any]:
    return {
        "dim": arch.embed_dim,
        "n_layers": arch.num_layers,
        "n_heads": arch.num_heads,
        "n_kv_heads": arch.num_kv_heads,
        "vocab_size": arch.vocab_size,
        "norm_eps": arch.norm_eps,
        "rope_theta": arch.rope_base,
        "use_scaled_rope": bool(arch.rope_scale_factor),
        # Not in Meta's files; stated so the dimensions round-trip without a lookup table.
        "hidden_dim": arch.intermediate_dim,
        "tie_word_embeddings": arch.tie_word_embeddings,
        "rope_scale_factor": arch.rope_scale_factor,
    }


def _dims(arch: ModelArch) -> dict[str, int]:
    """The attention shape torchtune's weight converters need."""
    heads, kv_heads, dim = arch.num_heads, arch.num_kv_heads, arch.embed_dim
    return {"num_heads": heads, "num_kv_heads": kv_heads, "dim": dim, "head_dim": arch.head_dim}


def _copy_if_exists(src: Path, dst: Path) -> None:
    if src.is_file():
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)


def _write_merged(
    out: Path,
    merged: dict[str, torch.Tensor],
    model: ModelSpec,
    arch: ModelArch,
    src: Path,
    fmt: str,
    dtype: str,
) -> None:
    out.mkdir(parents=True)
    tokenizer = src / model.tokenizer_file
    if fmt == "huggingface":
        sd = convert_weights.tune_to_hf(merged, **_dims(arch))
        save_file({k: v.contiguous() for k, v in sd.items()}, out / "model.safetensors")
        if model.layout == "huggingface":
            shutil.copy2(src / "config.json", out / "config.json")
            for name in _HF_TOKENIZER_FILES:
                _copy_if_exists(src / name, out / name)
        else:
            (out / "config.json").write_text(json.dumps(hf_config(arch, dtype), indent=2))
        _copy_if_exists(tokenizer, out / "original" / "tokenizer.model")
    else:
        sd = convert_weights.tune_to_meta(merged)
        if arch.tie_word_embeddings:
            # Meta checkpoints of tied models still store output.weight.
            sd["output.weight"] = sd["tok_embeddings.weight"]
        torch.save(sd, out / "consolidated.00.pth")
        if model.layout == "meta":
            shutil.copy2(src / "params.json", out / "params.json")
        else:
            (out / "params.json").write_text(json.dumps(meta_params(arch), indent=2))
        _copy_if_exists(tokenizer, out / "tokenizer.model")


def _write_adapter(
    out: Path, adapter: dict[str, torch.Tensor], adapter_config: dict, arch: ModelArch
) -> None:
    out.mkdir(parents=True)
    weights = convert_weights.tune_to_peft_adapter_weights(adapter, **_dims(arch))
    for key, value in weights.items():
        # torchtune permutes q/k LoRA-B rows into HF's RoPE order but not the DoRA magnitude
        # (one entry per output row), which then scales the wrong rows: permute it the same way.
        for proj, heads in (("q_proj", arch.num_heads), ("k_proj", arch.num_kv_heads)):
            if key.endswith(f"{proj}.lora_magnitude_vector"):
                weights[key] = value.view(heads, arch.head_dim // 2, 2).transpose(1, 2).reshape(-1)
    save_file({k: v.contiguous() for k, v in weights.items()}, out / "adapter_model.safetensors")
    config = convert_weights.tune_to_peft_adapter_config(dict(adapter_config))
    config.update(task_type="CAUSAL_LM", bias="none", lora_dropout=0.0, inference_mode=True)
    (out / "adapter_config.json").write_text(json.dumps(config, indent=2))


def write_epoch(
    output_dir: Path,
    epoch: int,
    merged: dict[str, torch.Tensor],
    adapter: dict[str, torch.Tensor],
    adapter_config: dict,
    model: ModelSpec,
    model_dir: Path,
    fmt: str,
    dtype: str,
    metrics: dict[str, Any],
    job: str,
) -> Path:
    if model.arch is None:
        raise ValueError(f"{model.path}: the model's architecture is unknown (not inspected)")
    arch = model.arch
    with epoch_writer(output_dir, epoch, {"format": fmt, **metrics}, job) as tmp:
        _write_merged(tmp / MERGED, merged, model, arch, model_dir, fmt, dtype)
        _write_adapter(tmp / ADAPTER, adapter, adapter_config, arch)
    return output_dir / epoch_dir(epoch)
