"""Reading files that another release wrote: format versions, migrations, unknown fields.

Every file the server reads back carries `format_version`; a file without one was written
before versions existed and is version 1. A reader migrates older versions step by step
(`migrations[v]` turns a version-v dict into a version-(v+1) one, setting the values that
reproduce what that release did), and drops fields it does not know (a newer release wrote
them), reporting their paths so that a caller can refuse to act on a record it only partly
understands. What still does not validate is `Unreadable`, with a reason a person can read.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

Migration = Callable[[dict[str, Any]], dict[str, Any]]


class Unreadable(ValueError):
    """A stored file that this release cannot read; the message says why."""


def read_versioned[M: BaseModel](
    cls: type[M],
    data: Any,
    current: int,
    migrations: Mapping[int, Migration] | None = None,
) -> tuple[M, list[str]]:
    """`data` (a parsed JSON file) as `cls` at version `current`, and the dotted paths of the
    fields that were dropped because this release does not know them."""
    if not isinstance(data, dict):
        raise Unreadable(f"expected a JSON object, found {type(data).__name__}")
    data = copy.deepcopy(data)
    found = data.get("format_version", 1)
    if not isinstance(found, int) or isinstance(found, bool) or found < 1:
        raise Unreadable(f"format_version {found!r} is not a version number")
    for version in range(found, current):
        step = (migrations or {}).get(version)
        data = step(data) if step else data
    # A newer file keeps its version: saved again, its unknown fields are kept (see merge).
    data["format_version"] = max(found, current)
    ignored: list[str] = []
    for _ in range(64):  # each round drops at least one field
        try:
            return cls.model_validate(data), ignored
        except ValidationError as e:
            extra = [err["loc"] for err in e.errors() if err["type"] == "extra_forbidden"]
            if not extra:
                raise Unreadable(_reason(e)) from None
            for loc in extra:
                if not _drop(data, loc):
                    raise Unreadable(_reason(e)) from None
                ignored.append(".".join(str(p) for p in loc))
    raise Unreadable("too many unknown fields")


def merge_unknown(stored: Any, written: dict[str, Any]) -> dict[str, Any]:
    """`written` with the fields of `stored` that `written` lacks, at every depth: a release
    that saves a record it only partly understood keeps what a newer release put there."""
    if not isinstance(stored, dict):
        return written
    out = dict(written)
    for key, value in stored.items():
        if key not in out:
            out[key] = value
        elif isinstance(value, dict) and isinstance(out[key], dict):
            out[key] = merge_unknown(value, out[key])
    return out


def _drop(data: Any, loc: tuple[int | str, ...]) -> bool:
    """Delete the field at `loc`; pydantic puts union member tags in the path, which are not
    keys of the data and are skipped."""
    node = data
    for part in loc[:-1]:
        in_dict = isinstance(node, dict) and part in node
        if in_dict or (isinstance(node, list) and isinstance(part, int) and part < len(node)):
            node = node[part]
    if isinstance(node, dict) and loc[-1] in node:
        del node[loc[-1]]
        return True
    return False


def _reason(e: ValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "(top level)"
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"
