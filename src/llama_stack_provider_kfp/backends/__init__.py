"""Where jobs run. `select_backend` is the one place that looks at `config.mode`."""

from __future__ import annotations

from ..config import KFPPostTrainingConfig
from ..jobs.backend import Backend
from ..jobs.store import JobStore


def select_backend(config: KFPPostTrainingConfig, store: JobStore) -> Backend:
    if config.mode == "remote":
        from .kfp.backend import KFPBackend

        return KFPBackend(store, config.remote)
    from .local.backend import LocalBackend

    return LocalBackend(store, config.model_dirs)
