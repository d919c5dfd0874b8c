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


def _msgs(*pairs):
    return [{"role": r, "content": c} for r, c in pairs]


def test_preference_rows_in_every_shape():
    from llama_stack_provider_kfp.core.rows import to_preference

    expected = {"prompt": _msgs(("user", "Hi?")), "chosen": _msgs(("assistant", "Hello!")),
                "rejected": _msgs(("assistant", "No."))}  # fmt: skip
    # Strings.
    assert to_preference({"prompt": "Hi?", "chosen": "Hello!", "rejected": "No."}) == expected
    # hh-rlhf style: whole conversations with the prompt repeated at their head (JSON or not).
    full = {"prompt": "Hi?", "chosen": _msgs(("user", "Hi?"), ("assistant", "Hello!")),
            "rejected": json.dumps(_msgs(("user", "Hi?"), ("assistant", "No.")))}  # fmt: skip
    assert to_preference(full) == expected
    # No prompt column: the turns both share are the prompt.
    multi = {"chosen": _msgs(("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")),
             "rejected": _msgs(("user", "a"), ("assistant", "b"), ("user", "c"),
                               ("assistant", "x"))}  # fmt: skip
    got = to_preference(multi)
    assert len(got["prompt"]) == 3 and got["chosen"] == _msgs(("assistant", "d"))


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ({"prompt": "Hi?", "chosen": "Hello!"}, "rejected"),
        ({"chosen": "Hello!", "rejected": "No."}, "no prompt"),
        ({"prompt": "Hi?", "chosen": _msgs(("user", "more?")), "rejected": "No."},
         "chosen must end with the assistant"),
        ({"prompt": "Hi?", "chosen": "", "rejected": "No."}, "chosen is empty"),
    ],
)  # fmt: skip
def test_bad_preference_rows(row, words):
    from llama_stack_provider_kfp.core.rows import to_preference

    with pytest.raises(RowError, match=words):
        to_preference(row)


# ---- messages (OpenAI chat) and conversations (ShareGPT), whatever data_format says -----

CHAT = [
    {"role": "system", "content": "be brief"},
    {"role": "user", "content": "hi"},
    {"role": "assistant", "content": "hello"},
]


@pytest.mark.parametrize("fmt", ["instruct", "dialog"])
def test_messages_and_conversations_are_recognised_by_their_column(fmt):
    assert to_messages({"messages": CHAT}, fmt) == CHAT
    assert to_messages({"messages": json.dumps(CHAT)}, fmt) == CHAT  # CSV / Parquet strings
    turns = [{"from": "system", "value": "be brief"}, {"from": "human", "value": "hi"},
             {"from": "gpt", "value": "hello"}]  # fmt: skip
    assert to_messages({"conversations": turns, "id": 7}, fmt) == CHAT


@pytest.mark.parametrize(
    ("row", "words"),
    [
        ({"messages": [*CHAT[:2], {"role": "assistant", "content": None,
                                   "tool_calls": [{"id": "c1", "type": "function"}]}]},
         ["message 3 has 'tool_calls'", "remove those turns"]),
        ({"messages": [*CHAT, {"role": "tool", "content": "42", "tool_call_id": "c1"},
                       {"role": "assistant", "content": "it is 42"}]},
         ["message 4 has 'tool_call_id'", "tool/function results"]),
        ({"messages": [*CHAT[:2], {"role": "function", "name": "f", "content": "x"}, CHAT[2]]},
         ["message 3 has role 'function'"]),
        ({"messages": [CHAT[0], {"role": "user", "content": [{"type": "image_url"}]}, CHAT[2]]},
         ["message 2", "list of text items", "images"]),
        ({"conversations": [{"from": "human", "value": "hi"},
                            {"from": "function_call", "value": "{}"}]},
         ["turn 2 is from 'function_call'", "tool calls"]),
        ({"conversations": [{"from": "bot", "value": "hi"}]},
         ["turn 1 is from 'bot'", "human, gpt or system"]),
        ({"conversations": [{"from": "human", "value": "hi"}]}, ["no assistant message"]),
        ({"messages": "not json"}, ["'messages' is not valid JSON"]),
        ({"messages": []}, ["messages must be a non-empty list"]),
    ],
)  # fmt: skip
def test_rows_templates_cannot_render_are_refused_saying_what_to_change(row, words):
    with pytest.raises(RowError) as err:
        to_messages(row, "dialog")
    for w in words:
        assert w in str(err.value), (w, str(err.value))
