"""One epoch's checkpoint folder, written so that a reader never sees half of it: everything
goes to `epoch_<N>.partial/`, metrics.json last, then one rename (see core.outputs)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..core.files import write_json
from ..core.outputs import METRICS, PARTIAL_SUFFIX, epoch_dir


@contextlib.contextmanager
def epoch_writer(output_dir: Path, epoch: int, metrics: dict[str, Any]) -> Iterator[Path]:
    """Yield the folder to write `merged/` (and `adapter/`) into; finish it on exit."""
    final = output_dir / epoch_dir(epoch)
    tmp = final.with_name(final.name + PARTIAL_SUFFIX)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    yield tmp
    created = datetime.now(UTC).isoformat()
    write_json(tmp / METRICS, {"epoch": epoch, "created_at": created, **metrics})
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
