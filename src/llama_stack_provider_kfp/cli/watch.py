"""Follow a job to its end: a live bar (stage, epoch, step, loss, tokens/s, ETA) from its
status."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from ..client import job_status

TERMINAL = ("completed", "failed", "cancelled")
# Exit codes of `watch` (and of `supervised_fine_tune --watch`): scripts branch on them.
EXIT = {"completed": 0, "failed": 1, "cancelled": 2}
STILL_RUNNING = 3  # --timeout ran out; the job goes on


def describe(progress: dict[str, Any]) -> str:
    parts = []
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.4f}")
    if progress.get("grad_norm") is not None:  # clipping on: the norm before clipping
        parts.append(f"grad norm {progress['grad_norm']:.3g}")
    if progress.get("tokens_per_second"):
        parts.append(f"{progress['tokens_per_second']:.0f} tok/s")
    if progress.get("eta_seconds") is not None:
        parts.append(f"eta {progress['eta_seconds']:.0f}s")
    return " ".join(parts)


def current_stage(status: dict[str, Any]) -> str | None:
    """The stage running now (resources_allocated.stages); None from servers without stages."""
    for stage in (status.get("resources_allocated") or {}).get("stages") or []:
        if stage.get("status") == "running":
            return str(stage.get("name"))
    return None


def headline(status: dict[str, Any]) -> str:
    """The live line's description: the running stage, and the epoch while training."""
    progress = (status.get("resources_allocated") or {}).get("progress") or {}
    stage = current_stage(status)
    parts = [stage] if stage else []
    if progress.get("total_steps") and stage in (None, "train"):
        parts.append(f"epoch {progress.get('epoch', 0)}/{progress.get('total_epochs')}")
    return " ".join(parts) or str(status["status"])


def follow(
    client: Any,
    job_uuid: str,
    console: Console,
    interval: float = 1.0,
    timeout: float | None = None,
    show_bar: bool = True,
) -> dict[str, Any]:
    """Poll the job's status until it ends (or `timeout` seconds pass); the last status."""
    started = time.monotonic()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        disable=not show_bar,
    ) as bar:
        task = bar.add_task(job_uuid, total=None, info="")
        while True:
            status = job_status(client, job_uuid)
            progress = (status.get("resources_allocated") or {}).get("progress") or {}
            if progress.get("total_steps"):
                bar.update(
                    task,
                    total=progress["total_steps"],
                    completed=progress.get("step", 0),
                    description=headline(status),
                    info=describe(progress),
                )
            else:
                bar.update(task, description=headline(status))
            if status["status"] in TERMINAL:
                return status
            if timeout is not None and time.monotonic() - started > timeout:
                return status
            time.sleep(interval)


def exit_code(status: dict[str, Any]) -> int:
    return EXIT.get(status["status"], STILL_RUNNING)
