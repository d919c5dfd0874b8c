"""Read what a job has produced so far from its output location (plain dicts)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from .atomic_json import read_json

_EPOCH_DIR = re.compile(r"^epoch_(\d+)$")


def read_progress(output_dir: Path) -> dict[str, Any] | None:
    return read_json(output_dir / "progress.json")


def read_result(output_dir: Path) -> dict[str, Any] | None:
    return read_json(output_dir / "result.json")


def list_checkpoints(output_dir: Path) -> list[dict[str, Any]]:
    """One entry per finished epoch folder (metrics.json is written last, then renamed in)."""
    root = output_dir / "checkpoints"
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        m = _EPOCH_DIR.match(d.name)
        metrics = read_json(d / "metrics.json") if m else None
        if metrics is not None:
            found.append({**metrics, "epoch": int(m.group(1)), "path": str(d)})
    return sorted(found, key=lambda c: c["epoch"])
