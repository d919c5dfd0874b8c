"""prepare-data: check every row, convert to chat messages, write JSONL, split validation."""

from __future__ import annotations

import json
import random
import tempfile
from itertools import islice
from pathlib import Path

from ..boundary.data_uri import iter_rows
from ..core.rows import RowError, to_messages, to_preference
from ..core.spec import JobSpec
from .io import fetch_data, report_errors

MAX_REPORTED_ROWS = 10


def _convert(row: dict, fmt: str) -> dict:
    """A checked row in the form the engines read: chat messages, or a preference triple."""
    if fmt == "preference":
        return to_preference(row)
    return {"messages": to_messages(row, fmt)}


def _write(fh, converted: dict) -> None:
    fh.write(json.dumps(converted, ensure_ascii=False) + "\n")


def prepare(spec: JobSpec, train_path: str, validation_path: str) -> dict[str, int]:
    """The job's rows (spec.data) checked, converted and split into the two files."""
    with report_errors(spec.output_uri, "prepare-data"), tempfile.TemporaryDirectory() as tmp:
        http = spec.data.http
        dataset_uri = fetch_data(spec.data.uri, Path(tmp), http)
        validation = spec.data.validation_uri
        validation_uri = fetch_data(validation, Path(tmp), http) if validation else ""
        return _prepare(spec, dataset_uri, validation_uri, train_path, validation_path)


def _prepare(
    spec: JobSpec, dataset_uri: str, validation_uri: str, train_path: str, validation_path: str
) -> dict[str, int]:
    fmt = spec.data.data_format
    fraction = 0.0 if validation_uri else spec.data.validation_fraction
    rng = random.Random(spec.train.seed)
    bad: list[str] = []
    bad_count = 0
    counts = {"train_rows": 0, "validation_rows": 0}

    def take(uri: str, label: str, pick_split, limit: int | None = None) -> None:
        nonlocal bad_count
        for n, row in enumerate(islice(iter_rows(uri, spec.data.http), limit), 1):
            try:
                messages = _convert(row, fmt)
            except RowError as e:
                bad_count += 1
                if len(bad) < MAX_REPORTED_ROWS:
                    bad.append(f"{label} row {n}: {e}")
                continue
            key = pick_split()
            counts[key] += 1
            _write(files[key], messages)

    Path(train_path).parent.mkdir(parents=True, exist_ok=True)
    Path(validation_path).parent.mkdir(parents=True, exist_ok=True)
    with (
        open(train_path, "w", encoding="utf-8") as ft,
        open(validation_path, "w", encoding="utf-8") as fv,
    ):
        files = {"train_rows": ft, "validation_rows": fv}
        take(
            dataset_uri,
            "training",
            lambda: "validation_rows" if fraction and rng.random() < fraction else "train_rows",
            spec.data.max_rows,  # the first rows of the dataset, before the split
        )
        if validation_uri:
            take(validation_uri, "validation", lambda: "validation_rows")

    if bad_count:
        raise ValueError(
            f"{bad_count} row(s) do not match data_format={fmt!r}; first ones: " + "; ".join(bad)
        )
    if counts["train_rows"] == 0:
        raise ValueError("the dataset has no training rows")
    cap = spec.data.max_rows
    capped = f" (max_rows={cap}: rows after the dataset's first {cap} were not read)" if cap else ""
    print(
        f"prepare-data: {counts['train_rows']} training rows, "
        f"{counts['validation_rows']} validation rows{capped}"
    )
    return counts
