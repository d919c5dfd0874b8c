"""The loss curve of a job as a PNG, from the status's `loss_history` ([[step, loss], ...])."""

from __future__ import annotations

from pathlib import Path


def save_loss_plot(history: list[list[float]], path: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    steps = [point[0] for point in history]
    losses = [point[1] for point in history]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, losses, marker=".", linewidth=1)
    ax.set(xlabel="optimizer step", ylabel="training loss", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
