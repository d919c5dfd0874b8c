"""The train step's result summary (result.json), built in one place for every engine."""

from __future__ import annotations

from typing import Any

from .progress import ProgressLogger


def summary(
    *,
    epochs: list[dict[str, Any]],
    train_rows: int,
    validation_rows: int,
    samples_seen: int,
    global_step: int,
    device: str,
    dtype: str,
    peak_memory_mb: float,
    progress: ProgressLogger,
    train_seconds: float,
    **extra: Any,
) -> dict[str, Any]:
    """What a finished train step reports: its rows, steps, device, throughput (progress's
    medians), first and last loss, and the last epoch's metrics as `final_metrics` (logged
    as the KFP run's Metrics). `extra` carries engine-specific facts (steps run, resume)."""
    history = progress.history
    last = epochs[-1] if epochs else {}
    return {
        "epochs": epochs,
        "train_rows": train_rows,
        "validation_rows": validation_rows,
        "samples_seen": samples_seen,
        "global_step": global_step,
        **extra,
        "device": device,
        "dtype": dtype,
        "peak_memory_mb": round(peak_memory_mb, 1),
        **progress.throughput(),
        "first_loss": history[0][1] if history else None,
        "final_loss": history[-1][1] if history else None,
        "train_seconds": round(train_seconds, 2),
        "final_metrics": {
            k: float(v) for k, v in last.items() if isinstance(v, int | float) and k != "epoch"
        },
    }
