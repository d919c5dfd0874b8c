"""Read what a job has produced so far from its output location (local path or s3://)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from . import storage
from .atomic_json import read_json

_EPOCH_DIR = re.compile(r"^epoch_(\d+)$")


def _read(output_uri: str, name: str) -> Any | None:
    if storage.is_s3(output_uri):
        return storage.read_json(storage.join(output_uri, name))
    return read_json(Path(output_uri) / name)


def read_progress(output_uri: str) -> dict[str, Any] | None:
    return _read(output_uri, "progress.json")


def read_result(output_uri: str) -> dict[str, Any] | None:
    return _read(output_uri, "result.json")


def read_error(output_uri: str) -> dict[str, Any] | None:
    error = _read(output_uri, "error.json")
    if error:
        error.pop("traceback", None)
    return error


def list_checkpoints(output_uri: str) -> list[dict[str, Any]]:
    """One entry per finished epoch (metrics.json is written, or uploaded, last)."""
    if storage.is_s3(output_uri):
        root = storage.join(output_uri, "checkpoints")
        _, root_key = storage.split(root)
        names = {
            key[len(root_key) + 1 :].split("/")[0]
            for key in storage.list_keys(root + "/")
            if key.endswith("/metrics.json")
        }
        locations = {name: storage.join(root, name) for name in names}
        read = lambda loc: storage.read_json(storage.join(loc, "metrics.json"))  # noqa: E731
    else:
        root_dir = Path(output_uri) / "checkpoints"
        names = {d.name for d in root_dir.iterdir()} if root_dir.is_dir() else set()
        locations = {name: str(root_dir / name) for name in names}
        read = lambda loc: read_json(Path(loc) / "metrics.json")  # noqa: E731
    found = []
    for name, loc in locations.items():
        m = _EPOCH_DIR.match(name)
        metrics = read(loc) if m else None
        if metrics is not None:
            found.append({**metrics, "epoch": int(m.group(1)), "path": loc})
    return sorted(found, key=lambda c: c["epoch"])
