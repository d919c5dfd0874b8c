"""Human-readable output of the read commands (`--output json` prints the answers as they are)."""

from __future__ import annotations

import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from .watch import describe


def stdout() -> Console:
    # soft_wrap: long lines (paths, log lines) stay whole when piped or copied.
    return Console(soft_wrap=True)


def as_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def status(console: Console, st: dict[str, Any]) -> None:
    res = st.get("resources_allocated") or {}
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_row("job", st["job_uuid"])
    table.add_row("status", f"[bold]{st['status']}[/bold]")
    for key in ("scheduled_at", "started_at", "completed_at"):
        if st.get(key):
            table.add_row(key.replace("_", " "), str(st[key]))
    engine = res.get("engine") or {}
    if engine.get("name"):
        table.add_row("engine", f"{engine['name']} ({engine.get('reason', '')})".strip())
    progress = res.get("progress") or {}
    if progress.get("total_steps"):
        table.add_row(
            "progress",
            f"step {progress.get('step', 0)}/{progress['total_steps']}, epoch "
            f"{progress.get('epoch')}/{progress.get('total_epochs')}  {describe(progress)}",
        )
    if res.get("device"):
        table.add_row("device", f"{res['device']} {res.get('dtype') or ''}".strip())
    error = res.get("error") or {}
    if error.get("message"):
        table.add_row("error", f"[red]{error['message']}[/red]")
    table.add_row("checkpoints", str(len(st.get("checkpoints") or [])))
    console.print(table)


def checkpoints(console: Console, job_uuid: str, ckpts: list[dict[str, Any]]) -> None:
    if not ckpts:
        console.print(f"job {job_uuid}: no checkpoints yet")
    for c in ckpts:  # one line each: paths are long and must not wrap
        m = c.get("training_metrics") or {}
        extra = (
            f"  validation loss {m['validation_loss']:.4f}, perplexity {m['perplexity']:.3f}"
            if m.get("validation_loss") is not None
            else ""
        )
        console.print(f"epoch {c.get('epoch')}: {c.get('path')}{extra}", highlight=False)


def outcome(console: Console, st: dict[str, Any], lines: int = 15) -> None:
    """After `watch`: how the job ended, why it failed, where its checkpoints are."""
    res = st.get("resources_allocated") or {}
    console.print(f"job {st['job_uuid']}: [bold]{st['status']}[/bold]")
    if st["status"] in ("failed", "cancelled"):
        error = res.get("error") or {}
        if error.get("message"):
            console.print(f"[red]{error['message']}[/red]", highlight=False)
        for line in (error.get("log_tail") or res.get("log_tail") or [])[-lines:]:
            console.print(f"  {line}", markup=False, highlight=False)
        return
    result = res.get("result") or {}
    if result:
        keys = ("first_loss", "final_loss", "tokens_per_second", "train_rows", "samples_seen")
        console.print(", ".join(f"{k} {result[k]}" for k in keys if result.get(k) is not None))
    for c in st.get("checkpoints") or []:
        console.print(f"checkpoint epoch {c['epoch']}: {c['path']}", highlight=False)
