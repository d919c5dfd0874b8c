"""Human-readable output of the read commands (`--output json` prints the answers as they are)."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

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
    if res.get("paused"):
        table.add_row("paused", f"at {res['paused'].get('paused_at')}; resume: "
                      f"{res['paused'].get('resume')}")  # fmt: skip
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
    if res.get("osft"):
        table.add_row("osft", osft(res["osft"]))
    if res.get("stages"):
        table.add_row("stages", stages(res["stages"]))
    error = res.get("error") or {}
    if error.get("message"):
        table.add_row("error", _error(error))
    table.add_row("checkpoints", str(len(st.get("checkpoints") or [])))
    if res.get("registry"):
        table.add_row("registry", registration(res["registry"]))
    console.print(table)
    if res.get("evaluation"):
        evaluation(console, res["evaluation"])


def osft(facts: dict[str, Any]) -> str:
    """OSFT's decomposition: while the SVD runs (matrices done so far), then what it froze."""
    done, total = facts.get("decomposed"), facts.get("matrices")
    if "frozen_directions" not in facts:
        return f"SVD {done}/{total} matrices, {facts.get('svd_seconds', 0)} s"
    share = facts["trainable_parameters"] / max(facts["model_parameters"], 1)
    return (
        f"{total} matrices, {facts['frozen_directions']}/{facts['directions']} singular "
        f"directions frozen (unfreeze_rank_ratio {facts['unfreeze_rank_ratio']}), "
        f"{share:.0%} of the parameters train; SVD {facts['svd_seconds']} s"
    )


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
    """After `watch`: how the job ended, its stages, why it failed, where its checkpoints
    are, the evaluation and the registry entry."""
    res = st.get("resources_allocated") or {}
    console.print(f"job {st['job_uuid']}: [bold]{st['status']}[/bold]")
    if res.get("stages"):
        console.print(Text("stages: ").append_text(stages(res["stages"])), highlight=False)
    if st["status"] in ("failed", "cancelled"):
        error = res.get("error") or {}
        if error.get("message"):
            console.print(_error(error), highlight=False)
        for line in (error.get("log_tail") or res.get("log_tail") or [])[-lines:]:
            console.print(f"  {line}", markup=False, highlight=False)
        # A later stage's failure leaves the trained checkpoints (DESIGN.md "Stage outcomes").
        for c in st.get("checkpoints") or []:
            console.print(f"checkpoint epoch {c['epoch']}: {c['path']}", highlight=False)
        return
    result = res.get("result") or {}
    if result:
        keys = ("first_loss", "final_loss", "tokens_per_second", "train_rows", "samples_seen")
        console.print(", ".join(f"{k} {result[k]}" for k in keys if result.get(k) is not None))
    for c in st.get("checkpoints") or []:
        console.print(f"checkpoint epoch {c['epoch']}: {c['path']}", highlight=False)
    if res.get("evaluation"):
        evaluation(console, res["evaluation"])
    if res.get("registry"):
        console.print(Text("registry: ").append_text(registration(res["registry"])))


# ---- stages (resources_allocated.stages, .evaluation, .registry) -------------------------

MARK = {"completed": ("✓", "green"), "failed": ("✗", "bold red"), "running": ("running", "cyan")}
# Metrics where a smaller tuned value is the improvement; every other metric: larger is.
LOWER_IS_BETTER = ("loss", "perplexity", "bits_per_byte")
SAMPLE_CHARS = 160


def _seconds(stage: dict[str, Any]) -> str:
    try:
        started = datetime.fromisoformat(stage["started_at"])
        finished = datetime.fromisoformat(stage["finished_at"])
    except (KeyError, TypeError, ValueError):  # not both, or not ISO: no duration
        return ""
    return f" {(finished - started).total_seconds():.1f}s"


def stages(records: list[dict[str, Any]]) -> Text:
    """`prepare-data ✓ 2.1s, train ✓ 30.2s, evaluate running, register pending`; a failed
    stage in red with its error."""
    out = Text()
    for i, stage in enumerate(records):
        if i:
            out.append(", ")
        status = str(stage.get("status", "?"))
        mark, style = MARK.get(status, (status, "dim"))
        text = f"{stage.get('name', '?')} {mark}{_seconds(stage)}"
        if stage.get("error"):
            text += f" ({_clip(stage['error'], 120)})"
        out.append(text, style=style if status != "completed" else "")
    return out


def _error(error: dict[str, Any]) -> Text:
    where = f"[{error['stage']}] " if error.get("stage") else ""
    return Text(f"{where}{error['message']}", style="red")


def lower_is_better(metric: str) -> bool:
    return any(word in metric.lower() for word in LOWER_IS_BETTER)


def _num(value: Any, sign: bool = False) -> str:
    if not isinstance(value, int | float):
        return "—"
    if abs(value) >= 1000:
        return f"{value:+,.1f}" if sign else f"{value:,.1f}"
    return f"{value:+.4f}" if sign else f"{value:.4f}"


def _delta(metric: str, delta: Any) -> Text:
    if not isinstance(delta, int | float) or delta == 0:
        return Text(_num(delta, sign=True))
    better = delta < 0 if lower_is_better(metric) else delta > 0
    return Text(_num(delta, sign=True), style="green" if better else "red")


def _clip(text: Any, limit: int = SAMPLE_CHARS) -> str:
    """One line: line breaks shown as ⏎ (an answer of blank lines must not read as none)."""
    lines = [" ".join(line.split()) for line in str(text or "").strip(" \t").split("\n")]
    flat = "⏎".join(lines)
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def evaluation(console: Console, ev: dict[str, Any]) -> None:
    """Base vs tuned per task and metric (delta green where the tuned model is better), the
    notes, and the held-out prompts both answered."""
    title = "evaluation"
    if ev.get("epoch") is not None:
        title += f" of epoch {ev['epoch']}"
    facts = [f"{ev['held_out_rows']} held-out rows"] if ev.get("held_out_rows") else []
    if ev.get("seconds") is not None:
        facts.append(f"{ev['seconds']:.1f}s")
    if facts:
        title += f" ({', '.join(facts)})"
    results = ev.get("results") or {}
    if results:
        table = Table(title=title, title_justify="left")
        for column in ("task", "metric", "base", "tuned", "delta"):
            table.add_column(
                column, justify="right" if column in ("base", "tuned", "delta") else "left"
            )
        for task, metrics in results.items():
            for metric, c in (metrics or {}).items():
                table.add_row(
                    Text(task),
                    Text(metric),
                    _num(c.get("base")),
                    _num(c.get("tuned")),
                    _delta(metric, c.get("delta")),
                )
        console.print(table)
    else:
        console.print(Text(f"{title}: no results"))
    for note in ev.get("notes") or []:
        console.print(Text(f"note: {note}", style="yellow"))
    samples = ev.get("samples") or []
    if samples:
        table = Table(title="held-out samples", title_justify="left")
        for column in ("prompt", "base", "tuned"):
            table.add_column(column, overflow="fold", ratio=1)
        for sample in samples:
            table.add_row(*(Text(_clip(sample.get(k))) for k in ("prompt", "base", "tuned")))
        console.print(table)


def registration(reg: dict[str, Any]) -> Text:
    """`mlflow: my-model version 3 (s3://...)`, or `mlflow: not registered: <gate reason>`."""
    out = Text(f"{reg.get('kind', '?')}: ")
    gate = reg.get("gate") or {}
    if not reg.get("registered"):
        reason = gate.get("reason") or "no reason given"
        return out.append(f"not registered: {reason}", style="yellow")
    out.append(str(reg.get("name", "?")), style="bold")
    if reg.get("version") is not None:
        out.append(f" version {reg['version']}")
    where = [str(reg[k]) for k in ("uri", "url") if reg.get(k)]
    if where:
        out.append(f" ({', '.join(where)})")
    if gate:
        out.append("; gate passed" + (f": {gate['reason']}" if gate.get("reason") else ""))
    return out
