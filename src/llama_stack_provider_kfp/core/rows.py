"""Check dataset rows against llama-stack's data formats and turn them into chat messages.

Pure Python: used on a bounded sample at submit time (server) and on every row in
prepare-data (pipeline), so both tiers apply the same rules.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import InvalidRequest

ROLES = ("system", "user", "assistant")
REQUIRED_COLUMNS = {
    "instruct": ("chat_completion_input", "expected_answer"),
    "dialog": ("dialog",),
}


class RowError(InvalidRequest):
    """A row that does not match the data format."""


def _json_field(row: dict, key: str) -> Any:
    value = row[key]
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError as e:
            raise RowError(f"column {key!r} is not valid JSON ({e.msg})") from None
    return value


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        content = [content]
    if isinstance(content, list) and all(
        isinstance(c, dict) and c.get("type") == "text" and isinstance(c.get("text"), str)
        for c in content
    ):
        return "".join(c["text"] for c in content)
    raise RowError("message content must be a string or a list of text items")


def _message(m: Any) -> dict[str, str]:
    if not isinstance(m, dict) or "role" not in m or "content" not in m:
        raise RowError("each message needs 'role' and 'content'")
    if m["role"] not in ROLES:
        raise RowError(f"role {m['role']!r} is not one of {', '.join(ROLES)}")
    return {"role": m["role"], "content": _text(m["content"])}


def to_messages(row: dict, data_format: str) -> list[dict[str, str]]:
    """Return the row as OpenAI-style messages, or raise RowError saying what is wrong."""
    if not isinstance(row, dict):
        raise RowError("a row must be an object")
    missing = [c for c in REQUIRED_COLUMNS[data_format] if c not in row]
    if missing:
        raise RowError(
            f"missing column(s) {', '.join(missing)} required by data_format={data_format}"
        )
    if data_format == "instruct":
        prompt = _json_field(row, "chat_completion_input")
        if isinstance(prompt, dict):
            prompt = [prompt]
        if not isinstance(prompt, list) or not prompt:
            raise RowError("chat_completion_input must be a non-empty list of messages")
        messages = [_message(m) for m in prompt]
        answer = row["expected_answer"]
        if not isinstance(answer, str) or not answer:
            raise RowError("expected_answer must be a non-empty string")
        messages.append({"role": "assistant", "content": answer})
    else:
        dialog = _json_field(row, "dialog")
        if not isinstance(dialog, list) or not dialog:
            raise RowError("dialog must be a non-empty list of messages")
        messages = [_message(m) for m in dialog]
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("no assistant message to learn from")
    if messages[-1]["role"] != "assistant":
        raise RowError("the last message must be the assistant's answer")
    return messages


def _turns(value: Any, key: str, default_role: str) -> list[dict[str, str]]:
    """A string (one message in `default_role`) or a list of messages (JSON string allowed)."""
    if isinstance(value, str):
        stripped = value.strip()
        if stripped.startswith("[") and stripped.endswith("]"):
            value = _json_field({key: value}, key)
        else:
            if not value:
                raise RowError(f"{key} is empty")
            return [{"role": default_role, "content": value}]
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise RowError(f"{key} must be a string or a non-empty list of messages")
    return [_message(m) for m in value]


def to_preference(row: dict) -> dict[str, list[dict[str, str]]]:
    """A preference row (prompt / chosen / rejected, each a string or a message list) as
    {"prompt": messages, "chosen": messages, "rejected": messages}, whatever data_format says.

    A prompt repeated at the head of chosen and rejected (hh-rlhf style: whole conversations)
    is recognised and taken out, so it is not trained twice; without a prompt column the turns
    chosen and rejected share are the prompt."""
    if not isinstance(row, dict):
        raise RowError("a row must be an object")
    missing = [c for c in ("chosen", "rejected") if c not in row]
    if missing:
        raise RowError(
            f"missing column(s) {', '.join(missing)}: preference rows need prompt, chosen and "
            "rejected"
        )
    chosen = _turns(row["chosen"], "chosen", "assistant")
    rejected = _turns(row["rejected"], "rejected", "assistant")
    prompt = _turns(row["prompt"], "prompt", "user") if row.get("prompt") else []
    n = len(prompt)
    if prompt and chosen[:n] == prompt and rejected[:n] == prompt:
        chosen, rejected = chosen[n:], rejected[n:]
    shared = 0
    while shared < min(len(chosen), len(rejected)) - 1 and chosen[shared] == rejected[shared]:
        shared += 1
    prompt, chosen, rejected = prompt + chosen[:shared], chosen[shared:], rejected[shared:]
    if not prompt:
        raise RowError("no prompt: give a prompt column, or conversations that share a prompt")
    for key, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[-1]["role"] != "assistant":
            raise RowError(f"{key} must end with the assistant's answer")
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
