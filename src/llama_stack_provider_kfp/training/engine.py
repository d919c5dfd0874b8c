"""The engine seam: how a job trains. core.engines declares what each engine runs (and picks
one at submit, without torch); this module finds the implementation the JobSpec names."""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from .context import TrainingContext

# name -> module with an `ENGINE` object; imported only when a step trains with it.
IMPLEMENTATIONS = {
    "torchtune": "llama_stack_provider_kfp.training.torchtune.engine",
    "huggingface": "llama_stack_provider_kfp.training.huggingface.engine",
}


class Engine(Protocol):
    name: str

    def train(self, ctx: TrainingContext) -> dict[str, Any]:
        """Train; write progress and per-epoch checkpoints through `ctx.output` (core.outputs
        layout); return the result summary (result.json)."""
        ...


def get_engine(name: str) -> Engine:
    try:
        module = IMPLEMENTATIONS[name]
    except KeyError:
        raise ValueError(
            f"engine {name!r} is not installed here; have {list(IMPLEMENTATIONS)}"
        ) from None
    engine: Engine = importlib.import_module(module).ENGINE
    return engine
