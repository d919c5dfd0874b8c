"""The job's lm-eval task files, fetched into one local folder lm-eval indexes.

Each file comes from a local path, s3:// or https:// and is checked again here
(core.eval_tasks). A task's data files (`dataset_kwargs.data_files`) may be anywhere this
project reads too: s3:// and https:// ones are downloaded beside the task files, and a relative
one is taken relative to its task file's location (lm-eval itself would read it relative to
the working directory). `.yml` files are written as `.yaml`, the only suffix lm-eval indexes.
"""

from __future__ import annotations

import posixpath
from pathlib import Path
from typing import Any

from ...boundary import http_data, storage
from ...boundary.eval_task_files import read_task_file
from ...core.eval_tasks import (
    YAML_SUFFIXES,
    check_task_file,
    dump_task_yaml,
    file_name,
    is_code_file,
    load_task_yaml,
)
from ...core.http_policy import HttpPolicy
from ...core.locations import parse
from ...core.spec import EvaluationSpec

MAX_DATA_FILE_BYTES = 1 << 30
_REMOTE = ("s3://", "https://", "http://")


def reader(http: HttpPolicy):
    """How task files are read: local paths, s3://, and http(s):// under the job's data
    policy (allowed hosts, CA bundle, size cap, no redirect elsewhere: boundary.http_data)."""

    def read(location: str) -> bytes:
        return read_task_file(location, http=http)

    return read


def _beside(task_location: str, relative: str) -> str:
    """A data file named relative to its task file, as a location of the same kind."""
    if task_location.startswith(_REMOTE):
        head, _, _ = task_location.rpartition("/")
        return f"{head}/{posixpath.normpath(relative)}"
    return str(Path(task_location).expanduser().resolve().parent / relative)


class _Fetcher:
    def __init__(self, dest: Path, http: HttpPolicy) -> None:
        self.dest = dest
        self.count = 0
        self.http = http

    def data_file(self, task_location: str, name: str) -> str:
        if not name.startswith(_REMOTE) and Path(name).is_absolute():
            return name
        location = name if name.startswith(_REMOTE) else _beside(task_location, name)
        if not location.startswith(_REMOTE):
            return location
        self.count += 1
        local = self.dest / "data" / f"{self.count}-{file_name(location)}"
        local.parent.mkdir(parents=True, exist_ok=True)
        if location.startswith("s3://"):
            storage.download_file(parse(location), local)
        else:
            cap = self.http.model_copy(update={
                "max_bytes": min(self.http.max_bytes, MAX_DATA_FILE_BYTES)})  # fmt: skip
            http_data.download(location, local, cap)
        return str(local)

    def localize(self, task_location: str, data: dict[str, Any]) -> dict[str, Any]:
        kwargs = data.get("dataset_kwargs")
        if not isinstance(kwargs, dict) or "data_files" not in kwargs:
            return data

        def one(value: Any) -> Any:
            if isinstance(value, str):
                return self.data_file(task_location, value)
            if isinstance(value, list):
                return [one(v) for v in value]
            if isinstance(value, dict):
                return {k: one(v) for k, v in value.items()}
            return value

        return {**data, "dataset_kwargs": {**kwargs, "data_files": one(kwargs["data_files"])}}


def fetch_task_files(evaluation: EvaluationSpec, dest: Path, http: HttpPolicy) -> list[str]:
    """Every task file checked and written under `dest` (with its data); returns the task
    names they define."""
    dest.mkdir(parents=True, exist_ok=True)
    fetcher = _Fetcher(dest, http)
    read = reader(http)
    defined: list[str] = []
    for location in evaluation.task_files:
        body = read(location)
        defined += check_task_file(location, body, evaluation.allow_task_code)
        name = file_name(location)
        if is_code_file(location):
            (dest / name).write_bytes(body)
            continue
        if name.endswith(YAML_SUFFIXES):
            name = name.rsplit(".", 1)[0] + ".yaml"
        data = fetcher.localize(location, load_task_yaml(body, location))
        (dest / name).write_text(dump_task_yaml(data), encoding="utf-8")
    return defined
