"""torchtune's distributed LoRA recipe (FSDP2, one process per device under torchrun) with the
provider's behaviours (recipe.ProviderRecipe), for jobs with several ranks.

torchtune's training loop is kept. Differences from the single-device recipe: each rank
gets `batch_size / ranks` rows of every global batch (its StatefulDistributedSampler takes
every ranks-th row, repeating rows when the count does not divide); the per-step loss is
torchtune's token-weighted mean over the global batch (the single-device recipe averages
micro-batches with gradient accumulation); every rank runs the whole validation set (FSDP
needs every rank in every forward) and rank 0 alone writes.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torchtune import training

from .recipe import ProviderRecipe, load_torchtune_recipe

# Loaded from a file at run time: there is no static type to check against.
LoRAFinetuneRecipeDistributed: Any = load_torchtune_recipe(
    "lora_finetune_distributed.py"
).LoRAFinetuneRecipeDistributed


@contextlib.contextmanager
def _cpu_support(device: torch.device) -> Iterator[None]:
    """torchtune 0.6.1's distributed recipe assumes a GPU in three places that are only
    book-keeping: memory statistics (raise "not supported on CPU devices") and the cleanup
    before training (torch.cpu has no empty_cache / reset_peak_memory_stats). On the CPU these
    become no-ops (and a gc) while the recipe runs; nothing changes on GPUs."""
    if device.type != "cpu":
        yield
        return
    cpu = {
        "get_memory_stats": lambda *a, **k: {},
        "log_memory_stats": lambda *a, **k: None,
        "cleanup_before_training": gc.collect,
    }
    saved = {name: getattr(training, name) for name in cpu}
    try:
        for name, fn in cpu.items():
            setattr(training, name, fn)
        yield
    finally:
        for name, fn in saved.items():
            setattr(training, name, fn)


class ProviderLoRARecipeDistributed(ProviderRecipe, LoRAFinetuneRecipeDistributed):
    """Runs in the process group the ranks already joined (training.distributed.join_ranks)."""

    def setup(self, cfg: Any) -> None:
        with _cpu_support(self._device):
            super().setup(cfg)
        if self.writes:
            # torchtune's loop computes the loss inline (no _loss_step to extend): the epoch's
            # train loss is the mean of the step losses it logs, on rank 0.
            log_dict = self._metric_logger.log_dict

            def record(payload: dict[str, Any], step: int) -> None:
                self._epoch_losses.append(float(payload["loss"]))
                log_dict(payload, step)

            self._metric_logger.log_dict = record

    def train(self) -> None:
        with _cpu_support(self._device):
            super().train()

    def _counted(self, tokens: int, samples: int) -> None:
        # Every rank counts its share; the sums are what the job fed the model. Each rank
        # collates the same number of batches, so this collective lines up.
        all_tokens, all_samples = self.ctx.ranks.sum(tokens, samples)
        if self.writes:
            self._metric_logger.add_input_tokens(int(all_tokens))
        self.samples_seen += int(all_samples)

    def _full_state(self) -> dict[str, torch.Tensor]:
        # Collective: every rank gathers its FSDP shards; rank 0 gets the full tensors, new
        # ones (all-gathered), so merging LoRA into them leaves the training weights alone.
        return training.gather_cpu_state_dict(self._model, self.writes, device=self._device)

    def save_checkpoint(self, epoch: int) -> None:
        super().save_checkpoint(epoch)
        dist.barrier()  # the others wait until rank 0 has written the epoch
