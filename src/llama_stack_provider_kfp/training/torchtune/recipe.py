"""torchtune's LoRA recipes, extended where this provider needs more: ProviderRecipe holds
the additions, ProviderLoRARecipe applies them to the single-device recipe (the distributed
one is in distributed_recipe.py).

We keep torchtune's training loop (the reference loop, and the throughput ceiling) and change
only: every row is trained on (no dropped last batch; a short last accumulation group is a
step of its own, groups.py), progress counts the non-padding tokens
fed to the model, the adapter starts from weights drawn from the job's seed alone, each epoch
is validated when there is a validation set, and checkpoints are written in this provider's
layout (merged + PEFT adapter, Meta or HF).
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torchdata.stateful_dataloader import StatefulDataLoader
from torchtune import config as tt_config
from torchtune.data import padded_collate_sft
from torchtune.modules.peft import (
    DoRALinear,
    LoRALinear,
    get_adapter_state_dict,
    get_lora_module_names,
    get_merged_lora_ckpt,
)

from ...core.outputs import epoch_dir
from ..context import TrainingContext
from ..device import peak_memory_mb
from .export import write_epoch
from .groups import FilledGroups, ZeroLossWhileFilling


def load_torchtune_recipe(file: str) -> Any:
    """One of torchtune's recipe modules (e.g. lora_finetune_single_device.py)."""
    # torchtune installs its recipes as files, not an importable package (its
    # recipes/__init__.py raises on import), so load the module from its path the way
    # `tune run` does.
    import importlib.util
    import sys

    name = f"_torchtune_{Path(file).stem}"
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec("recipes")
    if package is None or not package.submodule_search_locations:
        raise ImportError("torchtune's recipes are not installed (pip install torchtune)")
    path = Path(next(iter(package.submodule_search_locations))) / file
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load torchtune's recipe from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# Loaded from a file at run time: there is no static type to check against.
LoRAFinetuneRecipeSingleDevice: Any = load_torchtune_recipe(
    "lora_finetune_single_device.py"
).LoRAFinetuneRecipeSingleDevice


def _real(sample: dict, pad_id: int) -> tuple[int, int]:
    """(non-padding tokens, samples) of one dataset item. A packed item is max_seq_len long and
    torchtune lists its padding as a last entry of seq_lens (a run of pad ids at the end: every
    real sample ends with its end-of-turn token)."""
    tokens = [int(t) for t in sample["tokens"]]
    if "seq_lens" not in sample:
        return len(tokens), 1
    seq_lens = [int(n) for n in sample["seq_lens"]]
    trailing = 0
    while trailing < len(tokens) and tokens[-1 - trailing] == pad_id:
        trailing += 1
    if trailing and seq_lens and seq_lens[-1] == trailing:
        return len(tokens) - trailing, len(seq_lens) - 1
    return len(tokens), len(seq_lens)


def _count_collate(collate, pad_id: int, sink, samples: list[dict]) -> dict:
    """torchtune's collate, handing the batch's (non-padding tokens, samples) to `sink`. The
    loaders run in the training process (no workers), so the counts arrive just before the
    batch is used."""
    sink(*map(sum, zip(*(_real(s, pad_id) for s in samples), strict=True)))
    return collate(samples)


def lora_init(
    cfg_model: DictConfig, base: dict[str, torch.Tensor], seed: int, dtype: torch.dtype
) -> dict[str, torch.Tensor]:
    """The adapter's starting weights as torchtune draws them (A: Kaiming uniform, B: zero;
    DoRA's magnitude: the row norms of the base weight, since B is zero), from the job's seed
    alone. torchtune draws A from the global generator while it builds the model, which gives
    other numbers on several ranks (per-rank seeds, sharded parameters) than on one: with this
    start, 1 and N ranks train the same curve."""
    with torch.device("meta"):  # shapes only; NF4 quantization needs real tensors
        model = tt_config.instantiate(OmegaConf.merge(cfg_model, {"quantize_base": False}))
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name, module in model.named_modules():
        if not isinstance(module, LoRALinear | DoRALinear):
            continue
        a = torch.empty(module.lora_a.weight.shape)
        torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
        state[f"{name}.lora_a.weight"] = a.to(dtype)
        state[f"{name}.lora_b.weight"] = torch.zeros(module.lora_b.weight.shape, dtype=dtype)
        if isinstance(module, DoRALinear):
            weight = base[f"{name}.weight"].to(dtype)
            state[f"{name}.magnitude"] = torch.linalg.norm(weight, dim=1).to(dtype)
    return state


class ProviderRecipe:
    """What this provider adds to torchtune's LoRA recipes, single-device and distributed;
    mixed in before the torchtune recipe class, whose attributes (_model, _device, _loss_fn,
    _metric_logger, ...) it uses. On several ranks only rank 0 has the metric logger and
    writes; every rank validates and gathers the checkpoint (both are collective under FSDP).
    """

    # Set by the torchtune recipe (whose class is loaded from a file: no static type).
    _model: Any
    _device: torch.device
    _dtype: torch.dtype
    _loss_fn: Any
    _tokenizer: Any
    _metric_logger: Any
    _dataloader: Any
    _steps_per_epoch: int
    _groups: FilledGroups
    _gradient_accumulation_steps: int
    _lora_rank: int
    _lora_alpha: float
    _lora_attn_modules: list[str]
    _apply_lora_to_mlp: bool
    _apply_lora_to_output: bool
    ignore_labels_cache: torch.Tensor
    total_epochs: int
    global_step: int

    def __init__(self, cfg: DictConfig, ctx: TrainingContext) -> None:
        super().__init__(cfg)  # type: ignore[call-arg]  # the torchtune recipe's
        self.ctx = ctx
        self.spec = ctx.spec
        self.use_dora = bool(ctx.spec.lora and ctx.spec.lora.use_dora)
        self.output = ctx.output
        self.model_dir = ctx.model_dir
        self.samples_seen = 0
        self._samples_at_last_epoch = 0
        self._epoch_losses: list[float] = []
        self.epochs: list[dict[str, Any]] = []
        self._val_loader: StatefulDataLoader | None = None

    @property
    def writes(self) -> bool:
        """Whether this process writes progress and outputs: the single device, or rank 0."""
        return bool(getattr(self, "_is_rank_zero", True))

    def setup(self, cfg: DictConfig) -> None:
        super().setup(cfg)  # type: ignore[misc]
        if cfg.get("dataset_val") is not None:
            ds = tt_config.instantiate(cfg.dataset_val, self._tokenizer)
            if len(ds):
                self._val_loader = StatefulDataLoader(
                    ds,
                    batch_size=cfg.batch_size,
                    shuffle=False,
                    collate_fn=partial(
                        padded_collate_sft,
                        padding_idx=self._tokenizer.pad_id,
                        ignore_idx=self._loss_fn.ignore_index,
                    ),
                )
        if self._steps_per_epoch < 1:
            raise ValueError(
                f"{len(self._dataloader)} batch(es) per epoch is fewer than "
                f"gradient_accumulation_steps={self._gradient_accumulation_steps}: no optimizer "
                "step would run; lower gradient_accumulation_steps or batch_size, or add rows"
            )
        dataset = self._dataloader.dataset
        self.train_rows = len(getattr(dataset, "ds", dataset))  # PackedDataset wraps the rows
        self.validation_rows = len(self._val_loader.dataset) if self._val_loader else 0
        if self.writes:
            self._metric_logger.attach(
                self.output, self.ctx.tracker, self.spec.job_uuid, self.ctx.phases
            )
            self._metric_logger.begin(
                total_steps=self.total_epochs * self._steps_per_epoch,
                steps_per_epoch=self._steps_per_epoch,
                total_epochs=self.total_epochs,
                device=str(self._device),
                dtype=self.spec.train.dtype,
                rows={"train": self.train_rows, "validation": self.validation_rows},
            )

    def _setup_model(self, **kwargs: Any) -> Any:
        # A fresh job (not a resumed adapter) starts from lora_init's weights.
        if kwargs.get("lora_weights_state_dict") is None:
            kwargs["lora_weights_state_dict"] = lora_init(
                kwargs["cfg_model"],
                kwargs["base_model_state_dict"],
                self.spec.train.seed,
                self._dtype,
            )
        model = super()._setup_model(**kwargs)  # type: ignore[misc]
        self.ctx.phases.mark("model_loaded")
        return model

    def _setup_data(self, cfg_dataset, shuffle, batch_size, collate_fn, dataloader_state_dict=None):
        loader = super()._setup_data(  # type: ignore[misc]
            cfg_dataset, shuffle, batch_size, collate_fn, dataloader_state_dict
        )
        # Same loader, but keep the last partial batch (torchtune drops it for compile's sake;
        # we do not compile) and count real tokens per batch.
        ours = StatefulDataLoader(
            dataset=loader.dataset,
            batch_size=batch_size,
            sampler=loader.sampler,
            collate_fn=partial(
                _count_collate,
                loader.collate_fn,
                getattr(loader.dataset, "padding_idx", self._tokenizer.pad_id),  # packed: 0
                self._counted,
            ),
            drop_last=False,
        )
        accum = self.spec.train.gradient_accumulation_steps
        self._groups = FilledGroups(ours, accum, self._loss_fn.ignore_index)
        if self.spec.steps_per_epoch(len(ours)) == len(ours) // accum:
            return ours  # no short group to step on, or a record that keeps torchtune's count
        self._loss_fn = ZeroLossWhileFilling(self._loss_fn, self._groups)
        return self._groups

    def _counted(self, tokens: int, samples: int) -> None:
        """A training batch's non-padding tokens and samples (this process's share)."""
        self._metric_logger.add_input_tokens(tokens)
        self.samples_seen += samples

    def _eval_loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Mean loss over a batch's label tokens, as torchtune's training step computes it."""
        labels = batch.pop("labels")
        logits = self._model(**batch)
        labels = torch.hstack((labels[..., 1:], self.ignore_labels_cache[: labels.shape[0]]))
        if not isinstance(logits, list):
            labels, logits = labels.reshape(-1), logits.reshape(-1, logits.size(-1))
        return self._loss_fn(logits, labels)

    @torch.no_grad()
    def validate(self) -> float | None:
        if self._val_loader is None:
            return None
        self._model.eval()
        total, count = 0.0, 0
        limit = self.spec.train.max_validation_steps
        for i, batch in enumerate(self._val_loader):
            if limit is not None and i >= limit:
                break
            batch = {k: v.to(self._device) for k, v in batch.items()}
            n = int((batch["labels"] != self._loss_fn.ignore_index).sum())
            total += float(self._eval_loss(batch)) * n
            count += n
        self._model.train()
        return total / count if count else None

    def _full_state(self) -> dict[str, torch.Tensor]:
        """The whole model's state on the CPU, a copy the merge may change (empty on ranks
        that do not write)."""
        raise NotImplementedError

    def save_checkpoint(self, epoch: int) -> None:
        epoch_samples = self.samples_seen - self._samples_at_last_epoch
        self._samples_at_last_epoch = self.samples_seen
        train_loss = (
            sum(self._epoch_losses) / len(self._epoch_losses) if self._epoch_losses else None
        )
        self._epoch_losses = []
        val_loss = self.validate()
        metrics = {
            "train_loss": train_loss,
            "validation_loss": val_loss,
            "perplexity": math.exp(min(val_loss, 50.0)) if val_loss is not None else None,
            "samples_seen": epoch_samples,
            "global_step": self.global_step,
        }
        exporting = time.perf_counter()
        state = self._full_state()
        self.epochs.append({"epoch": epoch + 1, **metrics})
        if not self.writes:
            return
        adapter = get_adapter_state_dict(state)
        merged = get_merged_lora_ckpt(state, rank=self._lora_rank, alpha=self._lora_alpha)
        adapter_config = {
            "r": self._lora_rank,
            "lora_alpha": self._lora_alpha,
            "target_modules": get_lora_module_names(
                self._lora_attn_modules, self._apply_lora_to_mlp, self._apply_lora_to_output
            ),
            "peft_type": "LORA",
            "use_dora": self.use_dora,
        }
        write_epoch(
            self.output.local,
            epoch + 1,  # epochs are numbered from 1 in the output layout
            merged,
            adapter,
            adapter_config,
            self.spec.model,
            self.model_dir,
            self.spec.output_format or self.spec.model.layout or "huggingface",
            self.spec.train.dtype,
            metrics,
            self.spec.job_uuid,
        )
        self.output.push(epoch_dir(epoch + 1))
        self.ctx.phases.add("export_seconds", time.perf_counter() - exporting)
        self._metric_logger.log_epoch(epoch + 1, metrics)

    def peak_memory_mb(self) -> float:
        return peak_memory_mb(self._device)


class ProviderLoRARecipe(ProviderRecipe, LoRAFinetuneRecipeSingleDevice):
    """torchtune's single-device LoRA recipe with this provider's behaviours."""

    def _loss_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = super()._loss_step(batch)
        if not self._groups.filling:
            self._epoch_losses.append(float(loss.detach()))
        return loss

    def _full_state(self) -> dict[str, torch.Tensor]:
        # copy=True: on the CPU .cpu() returns the live parameter, and get_merged_lora_ckpt
        # adds LoRA into it in place, which would corrupt the base weights for later epochs
        # (torchtune's own recipe does exactly that on CPU).
        return {k: v.detach().to("cpu", copy=True) for k, v in self._model.state_dict().items()}
