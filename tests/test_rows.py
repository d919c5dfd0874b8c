import json

import pytest

from llama_stack_provider_kfp.core.rows import RowError, to_messages


def test_instruct_row_becomes_messages():
    row = {
        "chat_completion_input": json.dumps([{"role": "user", "content": "hi"}]),
        "expected_answer": "hello",
    }
    assert to_messages(row, "instruct") == [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "hello"},
    ]


def test_dialog_with_text_items():
    dialog = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
        {"role": "assistant", "content": "ok"},
    ]
    msgs = to_messages({"dialog": dialog}, "dialog")
    assert msgs[1]["content"] == "ab" and msgs[-1] == {"role": "assistant", "content": "ok"}


@pytest.mark.parametrize(
    ("row", "fmt", "words"),
    [
        ({"expected_answer": "x"}, "instruct", "chat_completion_input"),
        ({"chat_completion_input": "{bad", "expected_answer": "x"}, "instruct", "valid JSON"),
        ({"chat_completion_input": "[]", "expected_answer": "x"}, "instruct", "non-empty"),
        (
            {"chat_completion_input": '[{"role":"user","content":"q"}]', "expected_answer": ""},
            "instruct",
            "expected_answer",
        ),
        ({"dialog": '[{"role":"robot","content":"x"}]'}, "dialog", "robot"),
        ({"dialog": '[{"role":"user","content":"x"}]'}, "dialog", "no assistant"),
        (
            {"dialog": '[{"role":"assistant","content":"x"},{"role":"user","content":"y"}]'},
            "dialog",
            "last message",
        ),
        ({"dialog": '[{"role":"assistant","content":{"type":"image"}}]'}, "dialog", "content"),
    ],
)
def test_bad_rows_say_what_is_wrong(row, fmt, words):
    with pytest.raises(RowError, match=words):
        to_messages(row, fmt)
