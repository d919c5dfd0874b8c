"""A job's figure as a PNG: the loss curve from the status's `loss_history` ([[step, loss],
...]) and, when the job was evaluated, base vs tuned per task and metric from its
`evaluation` (`results: {task: {metric: {base, tuned, delta}}}`) beside it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def comparisons(evaluation: dict[str, Any] | None) -> list[tuple[str, float, float]]:
    """(`task/metric`, base, tuned) for each metric both models have a number for."""
    out = []
    for task, metrics in ((evaluation or {}).get("results") or {}).items():
        for metric, c in (metrics or {}).items():
            base, tuned = c.get("base"), c.get("tuned")
            if isinstance(base, int | float) and isinstance(tuned, int | float):
                out.append((f"{task}/{metric}", float(base), float(tuned)))
    return out


def figure(history: list[list[float]], evaluation: dict[str, Any] | None, title: str) -> Figure:
    """One panel per thing there is: the loss curve, the base-vs-tuned bars."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    compared = comparisons(evaluation)
    panels = int(bool(history)) + int(bool(compared))
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(6 * max(panels, 1), 3.5), dpi=120)
    axes = list(axes) if panels > 1 else [axes]
    if history:
        ax = axes.pop(0)
        ax.plot([p[0] for p in history], [p[1] for p in history], marker=".", linewidth=1)
        ax.set(xlabel="optimizer step", ylabel="training loss", title=title)
        ax.grid(alpha=0.3)
    if compared:
        _bars(axes.pop(0), compared, title if not history else "base vs tuned")
    fig.tight_layout()
    return fig


def _bars(ax: Any, compared: list[tuple[str, float, float]], title: str) -> None:
    labels = [c[0] for c in compared]
    where = range(len(compared))
    width = 0.38
    base = ax.bar([x - width / 2 for x in where], [c[1] for c in compared], width, label="base")
    tuned = ax.bar([x + width / 2 for x in where], [c[2] for c in compared], width, label="tuned")
    for bars in (base, tuned):
        ax.bar_label(bars, fmt="%.3g", fontsize=7)
    values = [v for c in compared for v in c[1:]]
    # Metrics of different scales (perplexity ~30, accuracy ~0.5): a log axis shows both.
    if min(values) > 0 and max(values) / min(values) > 50:
        ax.set_yscale("log")
    ax.set_xticks(list(where), labels, rotation=20, ha="right", fontsize=8)
    ax.set(ylabel="value", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")


def save_plot(
    history: list[list[float]], evaluation: dict[str, Any] | None, path: Path, title: str
) -> Path:
    import matplotlib.pyplot as plt

    fig = figure(history, evaluation, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
