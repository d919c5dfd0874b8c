"""The torchtune engine: a JobSpec becomes torchtune's recipe config, and its LoRA recipe
(extended in recipe.py) trains. Runs Llama-3-architecture models with a tiktoken tokenizer."""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import Any

from ...core.outputs import PROGRESS
from ...core.spec import JobSpec, LoraSpec, ModelArch, ModelSpec
from ..context import TrainingContext
from ..device import resolve_device
from ..result import summary

_OPTIMIZERS = {"adam": "torch.optim.Adam", "adamw": "torch.optim.AdamW", "sgd": "torch.optim.SGD"}


def _arch(model: ModelSpec) -> ModelArch:
    if model.arch is None:
        raise ValueError(f"{model.path}: the model's architecture is unknown (not inspected)")
    return model.arch


def _lora(spec: JobSpec) -> LoraSpec:
    if spec.lora is None:
        raise ValueError("the torchtune engine trains LoRA/DoRA only; full fine-tuning runs on "
                         "the huggingface engine")  # fmt: skip
    return spec.lora


def _steps(spec: JobSpec, train_path: str) -> int:
    """Optimizer steps of the job (for the warm-up), counted as the recipe will (its last
    partial batch kept); before packing, which the recipe does later."""
    with open(train_path, encoding="utf-8") as fh:
        rows = sum(1 for line in fh if line.strip())
    t = spec.train
    return spec.steps_per_epoch(math.ceil(rows / t.batch_size)) * t.epochs


def _model_component(spec: JobSpec) -> dict[str, Any]:
    arch, lora = _arch(spec.model), _lora(spec)
    cfg: dict[str, Any] = {
        "vocab_size": arch.vocab_size,
        "num_layers": arch.num_layers,
        "num_heads": arch.num_heads,
        "num_kv_heads": arch.num_kv_heads,
        "embed_dim": arch.embed_dim,
        "intermediate_dim": arch.intermediate_dim,
        "max_seq_len": spec.train.max_seq_len,
        "norm_eps": arch.norm_eps,
        "rope_base": arch.rope_base,
        "lora_attn_modules": list(lora.attn_modules),
        "apply_lora_to_mlp": lora.apply_to_mlp,
        "apply_lora_to_output": lora.apply_to_output,
        "lora_rank": lora.rank,
        "lora_alpha": lora.alpha,
        "lora_dropout": 0.0,
        "use_dora": lora.use_dora,
        "quantize_base": lora.quantize_base,
    }
    if arch.tie_word_embeddings:
        # Llama 3.2 builder: tied output; with scale factor 1 its RoPE equals plain RoPE.
        cfg["_component_"] = "torchtune.models.llama3_2.lora_llama3_2"
        cfg["scale_factor"] = arch.rope_scale_factor or 1
        cfg["tie_word_embeddings"] = True
    elif arch.rope_scale_factor:
        cfg["_component_"] = "torchtune.models.llama3_1.lora_llama3_1"
        cfg["scale_factor"] = arch.rope_scale_factor
    else:
        cfg["_component_"] = "torchtune.models.llama3.lora_llama3"
    return cfg


def _checkpointer(model: ModelSpec, model_dir: str, scratch: str) -> dict[str, Any]:
    model_type = "LLAMA3_2" if _arch(model).tie_word_embeddings else "LLAMA3"
    component = (
        "torchtune.training.FullModelHFCheckpointer"
        if model.layout == "huggingface"
        else "torchtune.training.FullModelMetaCheckpointer"
    )
    return {
        "_component_": component,
        "checkpoint_dir": model_dir,
        "checkpoint_files": list(model.checkpoint_files),
        "model_type": model_type,
        "output_dir": scratch,
    }


def _dataset(path: str, train_on_input: bool, packed: bool = False) -> dict[str, Any]:
    return {
        "_component_": "torchtune.datasets.chat_dataset",
        "source": "json",
        "data_files": path,
        "split": "train",
        "conversation_column": "messages",
        "conversation_style": "openai",
        "train_on_input": train_on_input,
        "packed": packed,  # torchtune's PackedDataset: block-causal masks, positions per sample
    }


def build_config(
    spec: JobSpec,
    model_dir: str,
    output_dir: Path,
    train_path: str,
    val_path: str | None,
    scratch: str,
    world: int = 1,
) -> dict[str, Any]:
    """torchtune's recipe config; with `world` ranks, that of its distributed recipe, where
    `batch_size` is per rank (the request's is the global batch, a multiple of the ranks)."""
    t, o = spec.train, spec.optim
    optimizer: dict[str, Any] = {"_component_": _OPTIMIZERS[o.type], "lr": o.lr}
    optimizer["weight_decay"] = o.weight_decay
    return {
        **(_fsdp(spec) if world > 1 else {}),
        "output_dir": scratch,
        "device": resolve_device(t.device),
        "dtype": t.dtype,
        "seed": t.seed,
        "epochs": t.epochs,
        "max_steps_per_epoch": t.max_steps_per_epoch,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "clip_grad_norm": t.max_grad_norm,  # None: torchtune does not clip (nor log a norm)
        "batch_size": t.batch_size // world,
        "shuffle": t.shuffle,
        "resume_from_checkpoint": False,
        "compile": False,
        "enable_activation_checkpointing": t.enable_activation_checkpointing,
        "enable_activation_offloading": t.enable_activation_offloading,
        "log_every_n_steps": 1,
        "log_peak_memory_stats": False,
        "model": _model_component(spec),
        "tokenizer": {
            "_component_": "torchtune.models.llama3.llama3_tokenizer",
            "path": str(Path(model_dir) / spec.model.tokenizer_file),
            "max_seq_len": t.max_seq_len,
        },
        "checkpointer": _checkpointer(spec.model, model_dir, scratch),
        "dataset": _dataset(train_path, t.train_on_input, t.packed),
        "dataset_val": _dataset(val_path, t.train_on_input) if val_path else None,
        "optimizer": optimizer,
        "lr_scheduler": {
            "_component_": "torchtune.training.lr_schedulers.get_cosine_schedule_with_warmup",
            "num_warmup_steps": o.warmup(_steps(spec, train_path)),
        },
        "loss": {"_component_": "torchtune.modules.loss.CEWithChunkedOutputLoss"},
        "metric_logger": {
            "_component_": "llama_stack_provider_kfp.training.progress.ProgressLogger",
            "path": str(output_dir / PROGRESS),
        },
        "profiler": {"enabled": False},
    }


def _fsdp(spec: JobSpec) -> dict[str, Any]:
    """The distributed recipe's sharding options. fsdp_cpu_offload keeps parameters,
    gradients and optimizer state in CPU memory between uses (less device memory, slower);
    memory_efficient_fsdp_wrap makes an untied model's embeddings and output projection FSDP
    units of their own, so these vocab-sized weights are gathered only while used (tied ones
    stay in the root unit: the output reuses the embedding weight outside the embedding's
    unit, which FSDP cannot reshard). On the CPU the weights are in CPU memory already, and
    FSDP's offload pins memory, which needs CUDA: there fsdp_cpu_offload does nothing."""
    t = spec.train
    untied = not _arch(spec.model).tie_word_embeddings
    layers = ["tok_embeddings", "output"] if untied else None
    return {
        "fsdp_cpu_offload": t.fsdp_cpu_offload and resolve_device(t.device) != "cpu",
        "custom_sharded_layers": layers if t.memory_efficient_fsdp_wrap else None,
    }


def _check_meta_tying(spec: JobSpec, model_dir: str) -> None:
    """params.json does not say whether embeddings are tied: check the weights themselves."""
    if spec.model.layout != "meta":
        return
    import torch

    sd = torch.load(
        Path(model_dir) / spec.model.checkpoint_files[0],
        map_location="cpu",
        mmap=True,
        weights_only=True,
    )
    out, emb = sd.get("output.weight"), sd["tok_embeddings.weight"]
    tied = out is None or (out.shape == emb.shape and torch.equal(out, emb))
    if tied != _arch(spec.model).tie_word_embeddings:
        raise ValueError(
            f"{model_dir}: output.weight {'equals' if tied else 'differs from'} the embeddings, "
            f"but the model was read as {'tied' if not tied else 'untied'}; add "
            f'"tie_word_embeddings": {str(tied).lower()} to params.json'
        )


class TorchtuneEngine:
    name = "torchtune"

    def train(self, ctx: TrainingContext) -> dict[str, Any]:
        return _run(ctx)


def _run(ctx: TrainingContext) -> dict[str, Any]:
    from omegaconf import OmegaConf

    spec, model_dir, output = ctx.spec, ctx.model_dir, ctx.output
    train_path, val_path = ctx.train_path, ctx.val_path
    # Several ranks (under torchrun): the distributed recipe, in the process group the ranks
    # joined (training.distributed.join_ranks).
    world = ctx.ranks.world
    if world > 1:
        from .distributed_recipe import ProviderLoRARecipeDistributed as Recipe
    else:
        from .recipe import ProviderLoRARecipe as Recipe
    ctx.imports_done()

    _check_meta_tying(spec, str(model_dir))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tt-scratch-") as scratch:
        cfg = OmegaConf.create(
            build_config(
                spec,
                str(model_dir),
                output.local,
                train_path,
                val_path,
                scratch,
                world,
            )
        )
        recipe = Recipe(cfg=cfg, ctx=ctx)
        recipe.setup(cfg=cfg)
        recipe.train()
        ctx.phases.mark("exports_done")
        recipe.cleanup()
    if not recipe.writes:
        return {"epochs": recipe.epochs}  # rank 0 reports the job
    return summary(
        epochs=recipe.epochs,
        train_rows=recipe.train_rows,
        validation_rows=recipe.validation_rows,
        samples_seen=recipe.samples_seen,
        global_step=recipe.global_step,
        device=str(recipe._device),
        dtype=spec.train.dtype,
        peak_memory_mb=recipe.peak_memory_mb(),
        progress=recipe._metric_logger,
        train_seconds=time.perf_counter() - started,
    )


ENGINE = TorchtuneEngine()
