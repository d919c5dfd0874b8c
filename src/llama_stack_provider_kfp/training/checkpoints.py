"""Checkpoint folders, written so that a reader never sees half of one: everything goes to
`<name>.partial/`, metrics.json last, then one rename (see core.outputs). Step checkpoints
beyond the newest few are deleted: each one is full size."""

from __future__ import annotations

import contextlib
import errno
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..boundary import pause_points
from ..boundary.files import write_json
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
    try:
        tmp.mkdir(parents=True)
        yield tmp
        created = datetime.now(UTC).isoformat()
        write_json(tmp / METRICS, versioned({"created_at": created, **metrics}))
    except Exception as e:
        if not _out_of_space(e, output_dir):
            raise
        raise _disk_full(output_dir, tmp, final.name) from None
    pause_points.reach(f"checkpoint.write:{final.name}", job)  # tests only
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)


def _out_of_space(e: Exception, folder: Path) -> bool:
    """ENOSPC, however the writer reports it: an OSError, safetensors' StorageFull, torch's
    'file write failed' (its writer drops the errno); a disk with under 1 MiB left decides."""
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
        return True
    if "No space left" in str(e) or "StorageFull" in str(e):
        return True
    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False


class DiskFull(OSError):
    """The disk under a job's outputs filled while a checkpoint was written."""


def _disk_full(output_dir: Path, partial: Path, name: str) -> DiskFull:
    """The unfinished checkpoint removed (its space back, so the error can be written), and
    what it would have needed: the size of the largest complete checkpoint, or at least what
    was written before the disk filled."""
    written = _size(partial)
    shutil.rmtree(partial, ignore_errors=True)
    done = [_size(p) for p in (output_dir / CHECKPOINTS).glob("*")
            if p.is_dir() and not p.name.endswith(PARTIAL_SUFFIX)]  # fmt: skip
    need = max([*done, written])
    free = shutil.disk_usage(output_dir).free
    return DiskFull(
        errno.ENOSPC,
        f"the disk holding {output_dir} is full: checkpoint {name} needs about "
        f"{_mib(need)} and {_mib(free)} is free (its unfinished copy was removed; earlier "
        "checkpoints are intact); free space there, or give the job a larger volume "
        "(remote: remote.scratch_size)",
    )


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


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
