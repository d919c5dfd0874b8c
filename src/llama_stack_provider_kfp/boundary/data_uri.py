"""Rows from the dataset locations users keep data in.

    /abs/path, ./rel, file:///abs        a file on the machine that reads it
    s3://bucket/key                      S3-compatible storage (boundary.storage: the standard AWS
                                         environment locally, a Secret by reference remotely)
    https://host/path, http://...        boundary.http_data's policy (allow-list, no redirect to
                                         another host, size cap, token by reference)
    hf://org/name[:config][?split=...]   a Hugging Face dataset repo (the local HF cache first)
    huggingface://<path>?<params>        as llama-stack's huggingface datasetio reads it
    pvc://claim/path                     remote mode: a file on a claim mounted into
                                         prepare-data (the server cannot read it)
    data:<mime>,...                      CSV, JSONL or JSON inline

Formats by the file's suffix (core.data_formats): JSONL, JSON, CSV, Parquet.

`iter_rows` reads every row, lazily (s3 and http(s) objects are downloaded first, to the
step's scratch space); `sample_rows` is the server's bounded look at submit: at most
`SampleReader.max_bytes` of an s3 or http(s) object.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from ..core import hub_errors
from ..core.data_formats import DataSourceError, check_kind, iter_text, kind_of, rows_in
from ..core.http_policy import HttpPolicy
from ..core.locations import is_hf_repo_id, parse
from . import http_data, storage

__all__ = ["DataSourceError", "SampleReader", "fetch", "iter_rows", "sample_rows", "write_jsonl"]

REMOTE_SCHEMES = ("s3://", "https://", "http://")


def iter_file(path: Path) -> Iterator[dict]:
    if not path.is_file():
        raise DataSourceError(f"dataset file {path} does not exist")
    kind = kind_of(path.name)
    if kind == "parquet":
        import pyarrow.parquet as pq

        for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
            yield from batch.to_pylist()
        return
    with path.open(encoding="utf-8", newline="") as fh:
        yield from iter_text(kind, fh)


def _local_path(uri: str) -> Path | None:
    if uri.startswith("file://"):
        return Path(unquote(urlparse(uri).path))
    if "://" not in uri and not uri.startswith("data:"):
        return Path(uri).expanduser()
    return None


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
        yield from iter_text(kind, io.TextIOWrapper(resp, encoding="utf-8", newline=""))


def _iter_huggingface(uri: str) -> Iterator[dict]:
    parsed = urlparse(uri)
    params = {k: v[0] for k, v in parse_qs(parsed.query).items()}
    path = (parsed.netloc + parsed.path).strip("/")
    # The common offline case (a local JSON/CSV file): read it directly, lazily.
    files = params.get("data_files")
    if path in ("json", "csv") and files and Path(files).is_file():
        yield from iter_file(Path(files))
        return
    params.setdefault("split", "train")
    yield from _load_dataset(uri, path, **params)


def _load_dataset(uri: str, path: str, **params: Any) -> Iterator[dict]:
    import datasets as hf_datasets

    try:  # rows stream from the Hub: a failure may come while iterating too
        yield from hf_datasets.load_dataset(path, streaming=True, **params)
    except Exception as e:
        failed = hub_errors.upstream(e, f"loading {_redact(uri)}")
        if failed is not None:  # the Hub down or refusing is not the caller's mistake
            raise failed from None
        raise DataSourceError(f"cannot load {_redact(uri)}: {e}") from None


def _hf_cache(repo: str) -> str | None:
    """The dataset repo's snapshot in the local Hugging Face cache, if it is there."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    env = os.environ.get
    home = env("HF_HOME")
    cache = env("HF_HUB_CACHE") or (str(Path(home) / "hub") if home else None)
    try:
        return str(snapshot_download(repo, repo_type="dataset", local_files_only=True,
                                     cache_dir=cache))  # fmt: skip
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def parse_hf(uri: str) -> tuple[str, str | None, str]:
    """hf://org/name[:config][?split=...] -> (repo, config, split)."""
    parsed = urlparse(uri)
    rest = uri.removeprefix("hf://").split("?", 1)[0].strip("/")
    repo, _, config = rest.partition(":")
    split = parse_qs(parsed.query).get("split", ["train"])[0]
    if not is_hf_repo_id(repo) or (config and not is_hf_repo_id(config)):
        raise DataSourceError(
            f"{uri!r} is not hf://<organisation>/<dataset>[:<config>] (optional ?split=, "
            "default train)"
        )
    return repo, config or None, split


def _iter_hf(uri: str) -> Iterator[dict]:
    """A Hub dataset: from the local cache when it is there (offline), else streamed."""
    repo, config, split = parse_hf(uri)
    cached = _hf_cache(repo)
    yield from _load_dataset(uri, cached or repo, name=config, split=split)


_CREDENTIAL_PARAMS = ("token", "secret", "password", "key", "credential")


def has_credentials(uri: str) -> bool:
    """True when a query parameter looks like a credential (e.g. huggingface://...?token=)."""
    if uri.startswith("data:"):
        return False
    params = parse_qs(urlparse(uri).query)
    return any(any(c in name.lower() for c in _CREDENTIAL_PARAMS) for name in params) or bool(
        urlparse(uri).password
    )


def local_paths(uri: str) -> list[Path]:
    """The paths on this machine that `uri` would read, whether they exist or not (a path,
    file://, a Hugging Face json/csv loader's data_files); none for remote locations."""
    path = _local_path(uri)
    if path is not None:
        return [path]
    if uri.startswith("huggingface://"):
        files = parse_qs(urlparse(uri).query).get("data_files", [])
        return [Path(f).expanduser() for f in files if "://" not in f]
    return []


def local_file(uri: str) -> Path | None:
    """The file on this machine that `uri` reads, if any (path, file://, local HF json/csv)."""
    path = _local_path(uri)
    if path is None and uri.startswith("huggingface://"):
        parsed = urlparse(uri)
        files = parse_qs(parsed.query).get("data_files", [None])[0]
        path = Path(files) if files and Path(files).is_file() else None
    return path if path is not None and path.is_file() else None


@dataclass(frozen=True)
class SampleReader:
    """How the server reads a bounded sample at submit."""

    http: HttpPolicy = field(default_factory=HttpPolicy)
    # Bytes read from the head of an s3 or http(s) object.
    max_bytes: int = 4 * 2**20
    # The server's S3 endpoint and CA (None: the AWS environment's) and its read timeout.
    s3_endpoint: str | None = None
    s3_ca_bundle: str | None = None
    s3_timeout: float = 30.0
    # pvc:// is read by the prepare-data step of a remote job, never by the server.
    remote: bool = False


def fetch(uri: str, workdir: Path, http: HttpPolicy | None = None) -> str:
    """A dataset URI that iter_rows reads without the network: s3 and http(s) objects
    downloaded into `workdir` (under their own file name, which says their format), a pvc://
    location as the path where the step mounted its claim; any other URI as it is."""
    if uri.startswith("pvc://"):
        return str(parse(uri).path)
    if not uri.startswith(REMOTE_SCHEMES):
        return uri
    kind = check_kind(urlparse(uri).path)
    target = Path(tempfile.mkdtemp(prefix="dataset-", dir=workdir)) / f"dataset.{kind}"
    if uri.startswith("s3://"):
        loc = parse(uri)
        try:
            return str(storage.download_file(loc, target))
        except FileNotFoundError:
            raise DataSourceError(f"{uri} does not exist (no such S3 object)") from None
    return str(http_data.download(uri, target, http or HttpPolicy()))


def iter_rows(uri: str, http: HttpPolicy | None = None) -> Iterator[dict]:
    """Yield the rows at `uri` one by one; any reading problem is a DataSourceError, the
    Hub or a storage failing or refusing is Unavailable / Refused (neither is an OSError)."""
    try:
        if uri.startswith(REMOTE_SCHEMES):
            with tempfile.TemporaryDirectory(prefix="dataset-") as tmp:
                yield from _iter_rows(fetch(uri, Path(tmp), http))
        else:
            yield from _iter_rows(fetch(uri, Path("."), http))
    except DataSourceError:
        raise
    except (OSError, csv.Error, UnicodeDecodeError, ValueError) as e:
        raise DataSourceError(f"cannot read {_redact(uri)}: {type(e).__name__}: {e}") from None


def _redact(uri: str) -> str:
    uri = http_data.public_url(uri) if uri.startswith(("https://", "http://")) else uri
    return uri if len(uri) < 200 else uri[:200] + "..."


def _iter_rows(uri: str) -> Iterator[dict]:
    path = _local_path(uri)
    if path is not None:
        yield from iter_file(path)
    elif uri.startswith("data:"):
        yield from _iter_data_uri(uri)
    elif uri.startswith("huggingface://"):
        yield from _iter_huggingface(uri)
    elif uri.startswith("hf://"):
        yield from _iter_hf(uri)
    else:
        raise DataSourceError(
            f"dataset URI {_redact(uri)!r} is not supported; use a local path, file://, "
            "s3://, https://, http://, hf://, huggingface://, pvc:// (remote mode) or data:"
        )


def write_jsonl(rows: Iterable[dict], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


def sample_rows(uri: str, n: int, reader: SampleReader | None = None) -> list[dict] | None:
    """The first `n` rows at `uri`, reading at most `reader.max_bytes` of an s3 or http(s)
    object; None when the server cannot look (pvc://, which only a remote job's step reads;
    a Parquet file or JSON object larger than max_bytes, whose rows need the whole file):
    prepare-data then checks every row."""
    reader = reader or SampleReader()
    if uri.startswith("pvc://"):
        if not reader.remote:
            raise DataSourceError(
                f"{uri} is on a PersistentVolumeClaim, which only remote jobs read (the "
                "prepare-data step mounts the claim); locally, register the file's path"
            )
        parse(uri)  # a malformed claim or path is refused now
        return None
    if not uri.startswith(REMOTE_SCHEMES):
        return list(islice(iter_rows(uri), n))
    kind = check_kind(urlparse(uri).path)
    if uri.startswith("s3://"):
        loc = parse(uri)
        s3 = storage.client(reader.s3_endpoint, ca_bundle=reader.s3_ca_bundle,
                            timeout=reader.s3_timeout)  # fmt: skip
        head = storage.read_head(loc, reader.max_bytes, s3)
        if head is None:
            raise DataSourceError(
                f"{uri} does not exist (S3 has no key {loc.key!r} in bucket {loc.root!r})"
            )
    else:
        head = http_data.read_head(uri, reader.http, reader.max_bytes)
    try:
        rows = rows_in(kind, *head)
    except (csv.Error, UnicodeDecodeError, ValueError) as e:
        if isinstance(e, DataSourceError):
            raise DataSourceError(f"cannot read {_redact(uri)}: {e}") from None
        raise DataSourceError(f"cannot read {_redact(uri)}: {type(e).__name__}: {e}") from None
    return None if rows is None else rows[:n]
