"""Training and validation files checked with OpenAI's rules when a job is created, every line
(a 400 naming the file, the line and what is wrong):

- supervised: `{"messages": [...]}` with system / user / assistant messages ending on the
  assistant's answer (core.rows: the llama-stack face's rules for the same shape). `weight` on
  an assistant message may be 1; 0 (do not learn this turn) is refused: every assistant turn is
  learned here.
- dpo: `{"input": {"messages": [...]}, "preferred_output": [assistant message],
  "non_preferred_output": [assistant message]}`, turned into the provider's preference rows
  (prompt / chosen / rejected).
- at least MIN_TRAINING_ROWS rows in a training file, as OpenAI requires.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..core.rows import RowError, to_messages, to_preference
from .errors import APIError

MIN_TRAINING_ROWS = 10


def _bad(param: str, file_id: str, message: str) -> APIError:
    return APIError(400, f"{param} {file_id}: {message}", param=param, code="invalid_file_format")


def _rows(path: Path, param: str, file_id: str) -> list[tuple[int, dict]]:
    rows = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw)
            except (UnicodeDecodeError, ValueError) as e:
                raise _bad(param, file_id, f"line {n} is not valid JSON ({e}); each line must "
                           "be one JSON object (JSONL)") from None  # fmt: skip
            if not isinstance(row, dict):
                raise _bad(param, file_id, f"line {n} is not a JSON object")
            rows.append((n, row))
    return rows


def supervised_rows(path: Path, param: str, file_id: str, minimum: int) -> int:
    """Checks every line; the number of examples."""
    rows = _rows(path, param, file_id)
    for n, row in rows:
        if "messages" not in row:
            raise _bad(param, file_id, f'line {n} has no "messages": supervised examples are '
                       '{"messages": [{"role": ..., "content": ...}, ...]}')  # fmt: skip
        for m in row["messages"] if isinstance(row["messages"], list) else []:
            if isinstance(m, dict) and m.get("weight") not in (None, 1):
                raise _bad(param, file_id, f"line {n}: weight {m.get('weight')!r} is not "
                           "supported: every assistant message is learned (weight 1); drop "
                           "the turn or the weight")  # fmt: skip
        try:
            to_messages({"messages": row["messages"]}, "dialog")
        except RowError as e:
            raise _bad(param, file_id, f"line {n}: {e}") from None
    _enough(rows, param, file_id, minimum)
    return len(rows)


def preference_rows(path: Path, param: str, file_id: str, minimum: int) -> list[dict]:
    """Every line checked and turned into a preference row (prompt / chosen / rejected)."""
    rows = _rows(path, param, file_id)
    out = []
    for n, row in rows:
        missing = [k for k in ("input", "preferred_output", "non_preferred_output")
                   if k not in row]  # fmt: skip
        if missing or not isinstance(row["input"], dict) or "messages" not in row["input"]:
            raise _bad(param, file_id, f"line {n}: DPO examples are "
                       '{"input": {"messages": [...]}, "preferred_output": [assistant '
                       'message], "non_preferred_output": [assistant message]}'
                       + (f" (missing {', '.join(missing)})" if missing else ""))  # fmt: skip
        converted = {"prompt": row["input"]["messages"], "chosen": row["preferred_output"],
                     "rejected": row["non_preferred_output"]}  # fmt: skip
        try:
            to_preference(converted)
        except RowError as e:
            raise _bad(param, file_id, f"line {n}: {e}") from None
        out.append(converted)
    _enough(rows, param, file_id, minimum)
    return out


def _enough(rows: list, param: str, file_id: str, minimum: int) -> None:
    if len(rows) < minimum:
        raise _bad(param, file_id, f"has {len(rows)} example(s), and a training file needs at "
                   f"least {minimum}")  # fmt: skip
