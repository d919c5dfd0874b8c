"""torchtune's single-device LoRA recipe, extended where this provider needs more.

We keep torchtune's training loop (the reference loop, and the throughput ceiling) and change
only: every row is trained on (no dropped last batch), progress counts the non-padding tokens
fed to the model, each epoch is validated when there is a validation set, and checkpoints are
written in this provider's layout (merged + PEFT adapter, Meta or HF).
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig
from torchdata.stateful_dataloader import StatefulDataLoader
from torchtune import config as tt_config
from torchtune.data import padded_collate_sft
from torchtune.modules.peft import (
    get_adapter_state_dict,
    get_lora_module_names,
    get_merged_lora_ckpt,
)

from ...core.outputs import epoch_dir
from ...core.spec import JobSpec
from ..device import peak_memory_mb
from ..io import Output
from .export import write_epoch


def _load_torchtune_recipe():
    # torchtune installs its recipes as files, not an importable package (its
    # recipes/__init__.py raises on import), so load the module from its path the way
    # `tune run` does.
    import importlib.util
    import sys

    name = "_torchtune_lora_finetune_single_device"
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec("recipes")
    if package is None or not package.submodule_search_locations:
        raise ImportError("torchtune's recipes are not installed (pip install torchtune)")
    path = Path(next(iter(package.submodule_search_locations))) / "lora_finetune_single_device.py"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load torchtune's recipe from {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# Loaded from a file at run time: there is no static type to check against.
LoRAFinetuneRecipeSingleDevice: Any = _load_torchtune_recipe().LoRAFinetuneRecipeSingleDevice


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


def _count_collate(collate, pad_id: int, samples: list[dict]) -> dict:
    batch = collate(samples)
    counts = [_real(s, pad_id) for s in samples]
    batch["input_tokens"] = torch.tensor(sum(c[0] for c in counts))
    batch["samples"] = torch.tensor(sum(c[1] for c in counts))
    return batch


class ProviderLoRARecipe(LoRAFinetuneRecipeSingleDevice):
    def __init__(self, cfg: DictConfig, spec: JobSpec, output: Output, model_dir: Path) -> None:
        super().__init__(cfg)
        self.spec = spec
        self.use_dora = bool(spec.lora and spec.lora.use_dora)
        self.output = output
        self.model_dir = model_dir
        self.samples_seen = 0
        self._samples_at_last_epoch = 0
        self._epoch_losses: list[float] = []
        self.epochs: list[dict[str, Any]] = []
        self._val_loader = None

    def setup(self, cfg: DictConfig) -> None:
        super().setup(cfg)
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
        self._metric_logger.attach(self.output)
        self._metric_logger.begin(
            total_steps=self.total_epochs * self._steps_per_epoch,
            steps_per_epoch=self._steps_per_epoch,
            total_epochs=self.total_epochs,
            device=str(self._device),
            dtype=self.spec.train.dtype,
            rows={"train": self.train_rows, "validation": self.validation_rows},
        )

    def _setup_data(self, cfg_dataset, shuffle, batch_size, collate_fn, dataloader_state_dict=None):
        loader = super()._setup_data(
            cfg_dataset, shuffle, batch_size, collate_fn, dataloader_state_dict
        )
        # Same loader, but keep the last partial batch (torchtune drops it for compile's sake;
        # we do not compile) and count real tokens per batch.
        return StatefulDataLoader(
            dataset=loader.dataset,
            batch_size=batch_size,
            sampler=loader.sampler,
            collate_fn=partial(
                _count_collate,
                loader.collate_fn,
                getattr(loader.dataset, "padding_idx", self._tokenizer.pad_id),  # packed: 0
            ),
            drop_last=False,
        )

    def _loss_step(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        tokens = batch.pop("input_tokens", None)
        samples = batch.pop("samples", None)
        if tokens is not None and samples is not None:
            self._metric_logger.add_input_tokens(int(tokens))
            self.samples_seen += int(samples)
        loss = super()._loss_step(batch)
        if tokens is not None:
            self._epoch_losses.append(float(loss.detach()))
        return loss

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
            total += float(self._loss_step(batch)) * n
            count += n
        self._model.train()
        return total / count if count else None

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
        # copy=True: on the CPU .cpu() returns the live parameter, and get_merged_lora_ckpt
        # adds LoRA into it in place, which would corrupt the base weights for later epochs
        # (torchtune's own recipe does exactly that on CPU).
        state = {k: v.detach().to("cpu", copy=True) for k, v in self._model.state_dict().items()}
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
        )
        self.output.push(epoch_dir(epoch + 1))
        self._metric_logger.log_epoch(epoch + 1, metrics)
        self.epochs.append({"epoch": epoch + 1, **metrics})

    def peak_memory_mb(self) -> float:
        return peak_memory_mb(self._device)
