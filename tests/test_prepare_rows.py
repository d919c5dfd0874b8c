"""prepare-data over the locations and row shapes: every row checked, max_rows, the split."""

from __future__ import annotations

import json

import pytest
from fake_backend import spec as any_spec

from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.training.prepare import prepare


def _chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"q{i}"},
                         {"role": "assistant", "content": f"a{i}"}]}  # fmt: skip


def _run(tmp_path, rows, **data):
    src = write_jsonl(rows, tmp_path / "in" / "rows.jsonl")
    base = any_spec("prep", tmp_path / "out")
    spec = base.model_copy(update={"data": base.data.model_copy(update={"uri": str(src), **data})})
    train, val = tmp_path / "train.jsonl", tmp_path / "val.jsonl"
    counts = prepare(spec, str(train), str(val))
    read = [json.loads(line) for line in train.read_text().splitlines()]
    return counts, read, [json.loads(line) for line in val.read_text().splitlines()]


def test_max_rows_takes_the_first_rows_before_the_split(tmp_path, capsys):
    rows = [_chat(i) for i in range(50)]
    rows[30] = {"messages": [{"role": "tool", "content": "x"}]}  # beyond max_rows: never read
    counts, train, val = _run(tmp_path, rows, max_rows=20, validation_fraction=0.5)
    assert counts == {"train_rows": len(train), "validation_rows": len(val)}
    assert len(train) + len(val) == 20 and val  # the split is taken from the 20
    assert sorted(r["messages"][0]["content"] for r in train + val) == sorted(
        f"q{i}" for i in range(20)
    )
    assert "max_rows=20" in capsys.readouterr().out


def test_every_row_checked_and_conversations_converted(tmp_path):
    rows = [{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}]
    _, train, _ = _run(tmp_path, rows * 3)
    assert train[0] == {"messages": [{"role": "user", "content": "hi"},
                                     {"role": "assistant", "content": "yo"}]}  # fmt: skip
    call = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1"}]}
    bad = [_chat(0), {"messages": [{"role": "user", "content": "q"}, call]}]
    with pytest.raises(ValueError, match="training row 2: message 2 has 'tool_calls'"):
        _run(tmp_path, bad)
