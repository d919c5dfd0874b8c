"""Crash-safe JSON files (temp file, fsync, rename) and the tail of a log file."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any, durable: bool = True) -> None:
    """Readers see the old or the new content, never a mix. `durable=False` skips fsync:
    for files rewritten every few seconds, where losing the last version in a power cut
    costs nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, default=str)
            if durable:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read_json(path: Path) -> Any | None:
    """The file's content, or None when it is missing or unreadable."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def read_json_named(path: Path) -> Any | None:
    """The file's content, None when it is missing; InvalidRequest naming it when it is there
    but damaged (a request's file: the caller's to replace)."""
    from ..core.errors import InvalidRequest

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise InvalidRequest(f"{path} is damaged: not valid JSON ({e}); restore the file or "
                             "name another checkpoint") from None  # fmt: skip


def tail(path: Path, lines: int = 30, max_bytes: int = 16384) -> list[str]:
    """The last lines of a log file, read from its end (logs can be large)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return last_lines(data, lines)


# Terminal colour and cursor codes (kfp.local colours its log lines): noise in a JSON answer.
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")


def last_lines(text: str, lines: int) -> list[str]:
    """The last non-blank lines of a log's text, without terminal escape codes."""
    # Progress bars redraw with \r: keep what the last redraw shows.
    out = [_ANSI.sub("", ln.rsplit("\r", 1)[-1]) for ln in text.splitlines()]
    return [ln for ln in out if ln.strip()][-lines:]
