"""Reading the lm-eval task files a job names (core.eval_tasks checks what they hold)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..core.errors import InvalidRequest
from ..core.eval_tasks import MAX_TASK_FILE_BYTES
from ..core.http_policy import HttpPolicy
from ..core.locations import parse
from . import http_data, storage


def read_task_file(location: str, s3: Any = None, http: HttpPolicy | None = None) -> bytes:
    """A task file at a local path, s3://, or http(s):// (read under `http`, the job's data
    policy: boundary.http_data; without one, http(s) locations are refused)."""
    too_big = f"evaluation task file {location} is larger than {MAX_TASK_FILE_BYTES} bytes"
    if location.startswith(("https://", "http://")):
        if http is None:
            raise InvalidRequest(f"evaluation task file {location}: http(s) is not read here")
        body, complete = http_data.read_head(location, http, MAX_TASK_FILE_BYTES)
        if not complete:
            raise InvalidRequest(too_big)
        return body
    loc = parse(location)
    if loc.scheme == "s3":
        found = storage.read_bytes(loc, s3)
        if found is None:
            raise InvalidRequest(f"evaluation task file {location} does not exist")
        body = found
    elif loc.is_local and loc.scheme == "file":
        path = Path(loc.path)
        if not path.is_file():
            raise InvalidRequest(f"evaluation task file {location} does not exist")
        if path.stat().st_size > MAX_TASK_FILE_BYTES:
            raise InvalidRequest(too_big)
        body = path.read_bytes()
    else:
        raise InvalidRequest(
            f"evaluation task file {location}: use a local path, s3:// or https:// location"
        )
    if len(body) > MAX_TASK_FILE_BYTES:
        raise InvalidRequest(too_big)
    return body
