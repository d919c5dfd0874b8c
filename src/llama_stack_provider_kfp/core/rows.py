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
# Row shapes recognised by their column whatever data_format says: OpenAI chat `messages`
# ({role, content}) and ShareGPT `conversations` ({from, value}).
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant",
                    "assistant": "assistant", "system": "system"}  # fmt: skip
# What no chat template renders as plain text turns: these are refused, never dropped.
_TOOL_ROLES = ("tool", "function", "ipython", "observation", "function_call", "tool_call")
_TOOL_KEYS = ("tool_calls", "function_call", "tool_call_id")
_NO_TOOLS = (
    "tool calls and tool/function results are not trained by this provider; remove those "
    "turns (or the row), or flatten them into user/assistant text"
)


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
    raise RowError(
        "message content must be a string or a list of text items ({type: text, text}); "
        "images, audio and other parts are not trained: remove them"
    )


def _message(m: Any, n: int = 0) -> dict[str, str]:
    where = f"message {n}" if n else "a message"
    if isinstance(m, dict):
        tool = next((k for k in _TOOL_KEYS if m.get(k)), None)
        if tool:
            raise RowError(f"{where} has {tool!r}: {_NO_TOOLS}")
        if m.get("role") in _TOOL_ROLES:
            raise RowError(f"{where} has role {m['role']!r}: {_NO_TOOLS}")
    if not isinstance(m, dict) or "role" not in m or "content" not in m:
        raise RowError("each message needs 'role' and 'content'")
    if m["role"] not in ROLES:
        raise RowError(f"role {m['role']!r} is not one of {', '.join(ROLES)}")
    try:
        return {"role": m["role"], "content": _text(m["content"])}
    except RowError as e:
        raise RowError(f"{where}: {e}") from None


def _messages(value: Any, key: str) -> list[dict[str, str]]:
    if not isinstance(value, list) or not value:
        raise RowError(f"{key} must be a non-empty list of messages")
    return [_message(m, n) for n, m in enumerate(value, 1)]


def _sharegpt(value: Any) -> list[dict[str, str]]:
    """ShareGPT turns ({from: human|gpt|system, value}) as messages."""
    if not isinstance(value, list) or not value:
        raise RowError("conversations must be a non-empty list of {from, value} turns")
    out = []
    for n, turn in enumerate(value, 1):
        if isinstance(turn, dict) and "from" in turn:
            who = turn["from"]
            if who in _TOOL_ROLES:
                raise RowError(f"turn {n} is from {who!r}: {_NO_TOOLS}")
            if who not in SHAREGPT_ROLES:
                raise RowError(
                    f"turn {n} is from {who!r}; ShareGPT turns are from human, gpt or system"
                )
            if not isinstance(turn.get("value"), str):
                raise RowError(f"turn {n} needs a string 'value'")
            out.append({"role": SHAREGPT_ROLES[who], "content": turn["value"]})
        else:
            out.append(_message(turn, n))
    return out


def _end_on_answer(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    if not any(m["role"] == "assistant" for m in messages):
        raise RowError("no assistant message to learn from")
    if messages[-1]["role"] != "assistant":
        raise RowError("the last message must be the assistant's answer")
    return messages


def to_messages(row: dict, data_format: str) -> list[dict[str, str]]:
    """Return the row as OpenAI-style messages, or raise RowError saying what is wrong.

    A `messages` or `conversations` column is read as such whatever `data_format` says;
    otherwise the row needs the columns of its data_format (instruct, dialog)."""
    if not isinstance(row, dict):
        raise RowError("a row must be an object")
    if "messages" in row:
        return _end_on_answer(_messages(_json_field(row, "messages"), "messages"))
    if "conversations" in row:
        return _end_on_answer(_sharegpt(_json_field(row, "conversations")))
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
        messages = [_message(m, n) for n, m in enumerate(prompt, 1)]
        answer = row["expected_answer"]
        if not isinstance(answer, str) or not answer:
            raise RowError("expected_answer must be a non-empty string")
        messages.append({"role": "assistant", "content": answer})
    else:
        messages = _messages(_json_field(row, "dialog"), "dialog")
    return _end_on_answer(messages)


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
    return [_message(m, n) for n, m in enumerate(value, 1)]


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
