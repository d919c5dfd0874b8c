"""Where jobs run. `select_backend` is the one place that looks at `config.mode`."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the local worker imports this package: it needs no config
    from ..config import KFPPostTrainingConfig
    from ..jobs.backend import Backend
    from ..jobs.store import JobStore


def select_backend(config: KFPPostTrainingConfig, store: JobStore) -> Backend:
    if config.mode == "remote":
        from .kfp.backend import KFPBackend

        return KFPBackend(store, config.remote, save_on_cancel=config.save_on_cancel)
    from .local.backend import LocalBackend

    return LocalBackend(
        store,
        config.model_dirs,
        save_on_cancel=config.save_on_cancel,
        stop_grace_seconds=config.stop_grace_seconds,
    )
