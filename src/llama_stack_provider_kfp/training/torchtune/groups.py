"""A short last accumulation group as a step of its own, in torchtune's unchanged loop.

torchtune's loop steps the optimizer after every `gradient_accumulation_steps` micro-batches
only, so an epoch whose micro-batches do not fill its last group makes no step for them, and
their gradients join the next epoch's first step (JobSpec.steps_per_epoch states the rule this
provider keeps on every engine instead). `FilledGroups` ends each epoch with as many filler
micro-batches as fill that group: a filler is the epoch's last batch with every label ignored,
so it adds no label token to the group's count, and `ZeroLossWhileFilling` gives it a zero
loss that is still connected to the model (under FSDP every rank runs the same forwards and
backwards). The group's step then averages its gradients over its own label tokens, as
torchtune averages any group.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch


class FilledGroups:
    """A dataloader (torchtune's: it keeps `sampler`, `dataset` and its state) whose epochs
    are a whole number of accumulation groups long."""

    def __init__(self, loader: Any, accum: int, ignore_index: int) -> None:
        self.loader, self.accum, self.ignore_index = loader, accum, ignore_index
        self.filling = False  # while the loop computes a filler's loss

    @property
    def sampler(self) -> Any:
        return self.loader.sampler

    @property
    def dataset(self) -> Any:
        return self.loader.dataset

    def state_dict(self) -> dict[str, Any]:
        return self.loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loader.load_state_dict(state)

    def __len__(self) -> int:
        return -(-len(self.loader) // self.accum) * self.accum

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        self.filling, seen, last = False, 0, None
        for batch in self.loader:
            seen, last = seen + 1, batch
            yield batch
        if last is None:
            return
        try:
            for _ in range((-seen) % self.accum):
                self.filling = True
                yield self._filler(last)
        finally:  # also when the loop stops early (max_steps_per_epoch) right after a filler
            self.filling = False

    def _filler(self, batch: dict[str, Any]) -> dict[str, Any]:
        # The last batch as the loop left it (its labels popped), whole: a packed batch's
        # attention mask (a BlockMask under flex attention) is reused as it is, not sliced.
        out = {key: value for key, value in batch.items() if key != "labels"}
        out["labels"] = torch.full_like(out["tokens"], self.ignore_index)
        return out


class ZeroLossWhileFilling:
    """The recipe's loss function, returning a zero connected to the logits for a filler."""

    def __init__(self, loss_fn: Any, groups: FilledGroups) -> None:
        self.loss_fn, self.groups = loss_fn, groups

    def __getattr__(self, name: str) -> Any:  # ignore_index, num_output_chunks, ...
        return getattr(self.loss_fn, name)

    def __call__(self, logits: Any, labels: torch.Tensor) -> torch.Tensor:
        if not self.groups.filling:
            return self.loss_fn(logits, labels)
        chunks = logits if isinstance(logits, list) else [logits]
        return sum(chunk.sum() for chunk in chunks) * 0.0
