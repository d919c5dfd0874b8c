"""Stream rows from the dataset locations llama-stack registrations use.

Supported: a local path or file:// URI (.jsonl, .json, .csv, .parquet), a data: URI
(CSV or JSONL, as llama-stack's localfs provider accepts) and huggingface://<path>?<params>
(as the huggingface datasetio provider reads it). Rows are yielded one at a time so a large
file is never held in memory.
"""

from __future__ import annotations

import csv
import io
import json
import urllib.request
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlparse

from . import hub_errors
from .errors import InvalidRequest


class DataSourceError(InvalidRequest):
    """A dataset location that cannot be read; the message says why."""


def _local_path(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    if "://" not in uri and not uri.startswith("data:"):
        return Path(uri).expanduser()
    return None


def _iter_text(kind: str, fh: io.TextIOBase) -> Iterator[dict]:
    if kind == "jsonl":
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataSourceError(f"line {n} is not valid JSON ({e.msg})") from None
    elif kind == "json":
        data = json.load(fh)
        if isinstance(data, dict) and isinstance(data.get("rows"), list):
            data = data["rows"]
        if not isinstance(data, list):
            raise DataSourceError("a .json dataset must hold a list of rows")
        yield from data
    elif kind == "csv":
        yield from csv.DictReader(fh)
    else:
        raise DataSourceError(f"unsupported file type {kind!r} (use .jsonl, .json, .csv)")


def _kind_of(name: str) -> str:
    suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
    return {"ndjson": "jsonl", "jsonl": "jsonl", "json": "json", "csv": "csv"}.get(suffix, suffix)


def _iter_file(path: Path) -> Iterator[dict]:
    if not path.is_file():
        raise DataSourceError(f"dataset file {path} does not exist")
    kind = _kind_of(path.name)
    if kind == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    with path.open(encoding="utf-8", newline="") as fh:
        yield from _iter_text(kind, fh)


def _iter_data_uri(uri: str) -> Iterator[dict]:
    mime = uri[5 : uri.find(",")].split(";")[0].lower()
    kind = {
        "text/csv": "csv",
        "application/jsonl": "jsonl",
        "application/x-ndjson": "jsonl",
        "application/json": "json",
    }.get(mime)
    if kind is None:
        raise DataSourceError(f"data: URI of type {mime!r} is not supported (use text/csv)")
    with urllib.request.urlopen(uri) as resp:  # data: URLs decode locally
        yield from _iter_text(kind, io.TextIOWrapper(resp, encoding="utf-8", newline=""))


def _iter_huggingface(uri: str) -> Iterator[dict]:
    parsed = urlparse(uri)
    params = {k: v[0] for k, v in parse_qs(parsed.query).items()}
    path = (parsed.netloc + parsed.path).strip("/")
    # The common offline case (a local JSON/CSV file): read it directly, lazily.
    files = params.get("data_files")
    if path in ("json", "csv") and files and Path(files).is_file():
        yield from _iter_file(Path(files))
        return
    import datasets as hf_datasets

    params.setdefault("split", "train")
    try:  # rows stream from the Hub: a failure may come while iterating too
        yield from hf_datasets.load_dataset(path, streaming=True, **params)
    except Exception as e:
        failed = hub_errors.upstream(e, f"loading {_redact(uri)}")
        if failed is not None:  # the Hub down or refusing is not the caller's mistake
            raise failed from None
        raise DataSourceError(f"cannot load {_redact(uri)}: {e}") from None


_CREDENTIAL_PARAMS = ("token", "secret", "password", "key", "credential")


def has_credentials(uri: str) -> bool:
    """True when a query parameter looks like a credential (e.g. huggingface://...?token=)."""
    if uri.startswith("data:"):
        return False
    params = parse_qs(urlparse(uri).query)
    return any(any(c in name.lower() for c in _CREDENTIAL_PARAMS) for name in params) or bool(
        urlparse(uri).password
    )


def local_file(uri: str) -> Path | None:
    """The file on this machine that `uri` reads, if any (path, file://, local HF json/csv)."""
    path = _local_path(uri)
    if path is None and uri.startswith("huggingface://"):
        parsed = urlparse(uri)
        files = parse_qs(parsed.query).get("data_files", [None])[0]
        path = Path(files) if files and Path(files).is_file() else None
    return path if path is not None and path.is_file() else None


def iter_rows(uri: str) -> Iterator[dict]:
    """Yield the rows at `uri` one by one; any reading problem is a DataSourceError, the
    Hub failing or refusing is Unavailable / Refused (neither is an OSError)."""
    try:
        yield from _iter_rows(uri)
    except DataSourceError:
        raise
    except (OSError, csv.Error, UnicodeDecodeError, ValueError) as e:
        raise DataSourceError(f"cannot read {_redact(uri)}: {type(e).__name__}: {e}") from None


def _redact(uri: str) -> str:
    return uri if len(uri) < 200 else uri[:200] + "..."


def _iter_rows(uri: str) -> Iterator[dict]:
    path = _local_path(uri)
    if path is not None:
        yield from _iter_file(path)
    elif uri.startswith("data:"):
        yield from _iter_data_uri(uri)
    elif uri.startswith("huggingface://"):
        yield from _iter_huggingface(uri)
    else:
        raise DataSourceError(
            f"dataset URI {uri!r} is not supported here; use a local path, file://, data: or "
            "huggingface:// URI"
        )


def write_jsonl(rows: Iterable[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def sample_rows(uri: str, n: int) -> list[dict]:
    """The first `n` rows at `uri`."""
    return list(islice(iter_rows(uri), n))
