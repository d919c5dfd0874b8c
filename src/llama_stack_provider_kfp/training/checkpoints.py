"""Checkpoint folders, written so that a reader never sees half of one: everything goes to
`<name>.partial/`, metrics.json last, then one rename (see core.outputs). Step checkpoints
beyond the newest few are deleted: each one is full size."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..core import pause_points
from ..core.files import write_json
from ..core.outputs import CHECKPOINTS, METRICS, PARTIAL_SUFFIX, epoch_dir, versioned
from .io import Output


@contextlib.contextmanager
def checkpoint_writer(
    output_dir: Path, rel: str, metrics: dict[str, Any], job: str
) -> Iterator[Path]:
    """Yield the folder to write `merged/` (and `adapter/`, the training state) into; finish
    it on exit. `metrics` must name the epoch."""
    final = output_dir / rel
    tmp = final.with_name(final.name + PARTIAL_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    created = datetime.now(UTC).isoformat()
    write_json(tmp / METRICS, versioned({"created_at": created, **metrics}))
    pause_points.reach(f"checkpoint.write:{final.name}", job)  # tests only
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


@contextlib.contextmanager
def epoch_writer(output_dir: Path, epoch: int, metrics: dict[str, Any], job: str) -> Iterator[Path]:
    with checkpoint_writer(output_dir, epoch_dir(epoch), {"epoch": epoch, **metrics}, job) as tmp:
        yield tmp


def prune_step_checkpoints(output: Output, steps: list[int], keep: int) -> list[int]:
    """Delete all but the newest `keep` of these step checkpoints; return those kept."""
    steps = sorted(steps)
    drop, kept = steps[: max(len(steps) - keep, 0)], steps[-keep:] if keep else []
    for step in drop:
        output.remove(f"{CHECKPOINTS}/step_{step}")
    return kept
