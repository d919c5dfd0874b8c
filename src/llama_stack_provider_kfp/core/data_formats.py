"""Dataset file formats: JSONL, JSON, CSV and Parquet, from a whole file or a bounded prefix.

The format is the file name's suffix (`.jsonl`/`.ndjson`, `.json`, `.csv`, `.parquet`), wherever
the file lives (path, s3:// key, https:// path). Whole files are read lazily (row by row, or a
Parquet batch at a time; boundary.data_uri opens them). A prefix (the first bytes of an
object the server samples at submit) yields the complete rows it holds for the formats that
can be cut: JSONL and CSV line by line, and a JSON list element by element; a Parquet file or
a JSON object needs its whole bytes.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator

from .errors import InvalidRequest

KINDS = ("jsonl", "json", "csv", "parquet")
_SUFFIXES = {"jsonl": "jsonl", "ndjson": "jsonl", "json": "json", "csv": "csv",
             "parquet": "parquet", "pq": "parquet"}  # fmt: skip


class DataSourceError(InvalidRequest):
    """A dataset location that cannot be read; the message says why."""


def kind_of(name: str) -> str:
    """The format a file name says (its suffix); unknown suffixes are returned as they are."""
    base = name.rsplit("/", 1)[-1]
    suffix = base.rsplit(".", 1)[-1].lower() if "." in base else ""
    return _SUFFIXES.get(suffix, suffix)


def check_kind(name: str) -> str:
    kind = kind_of(name)
    if kind not in KINDS:
        raise DataSourceError(
            f"cannot tell the format of {name!r} from its name: end it with .jsonl, .json, .csv "
            "or .parquet"
        )
    return kind


def iter_text(kind: str, fh: io.TextIOBase) -> Iterator[dict]:
    if kind == "jsonl":
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataSourceError(f"line {n} is not valid JSON ({e.msg})") from None
    elif kind == "json":
        try:
            data = json.load(fh)
        except json.JSONDecodeError as e:
            raise DataSourceError(f"not valid JSON ({e.msg}, line {e.lineno})") from None
        if isinstance(data, dict) and isinstance(data.get("rows"), list):
            data = data["rows"]
        if not isinstance(data, list):
            raise DataSourceError("a .json dataset must hold a list of rows")
        yield from data
    elif kind == "csv":
        yield from csv.DictReader(fh)
    else:
        raise DataSourceError(f"unsupported file type {kind!r} (use .jsonl, .json, .csv, .parquet)")


def _json_list_prefix(text: str) -> Iterator[dict]:
    """The complete elements at the head of a JSON list cut anywhere."""
    decoder = json.JSONDecoder()
    pos = text.find("[")
    if pos < 0 or text[:pos].strip():
        return  # a {"rows": [...]} object: not readable from a prefix
    pos += 1
    while True:
        while pos < len(text) and text[pos] in " \t\r\n,":
            pos += 1
        try:
            row, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            return  # the cut element (or the list's end)
        yield row


def rows_in(kind: str, data: bytes, complete: bool) -> list[dict] | None:
    """The rows in `data`, the first bytes of a file (all of it when `complete`); None when the
    format cannot be read from a prefix (Parquet; a JSON object)."""
    if complete:
        if kind == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            try:
                return pq.read_table(pa.BufferReader(data)).to_pylist()
            except pa.ArrowException as e:
                raise DataSourceError(f"not a readable Parquet file ({e})") from None
        return list(iter_text(kind, io.StringIO(data.decode("utf-8"), newline="")))
    if kind == "parquet":
        return None  # its index is at the end of the file
    # Cut mid-character or mid-line: keep only complete lines.
    text = data.decode("utf-8", errors="ignore")
    if kind == "json":
        return list(_json_list_prefix(text)) or None
    head = text[: text.rfind("\n") + 1]
    rows = list(iter_text(kind, io.StringIO(head, newline="")))
    if kind == "csv":
        rows = rows[:-1]  # a quoted field may span lines: the last row may be cut
    return rows or None
