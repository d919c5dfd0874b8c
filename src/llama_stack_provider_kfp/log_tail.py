"""The last lines of a log file, read from its end (logs can be large)."""

from __future__ import annotations

import os
from pathlib import Path


def tail(path: Path, lines: int = 30, max_bytes: int = 16384) -> list[str]:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    # Progress bars redraw with \r: keep what the last redraw shows.
    out = [ln.rsplit("\r", 1)[-1] for ln in data.splitlines()]
    return [ln for ln in out if ln.strip()][-lines:]
