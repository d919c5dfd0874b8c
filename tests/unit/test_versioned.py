"""Reading records another release wrote (core.versioned): migrations, unknown fields kept
apart, and a reason for what cannot be read."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict

from llama_stack_provider_kfp.core.versioned import Unreadable, merge_unknown, read_versioned


class Inner(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rate: float


class Rec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format_version: int = 3
    name: str
    inner: Inner | None = None
    steps: int = 0


def test_unversioned_file_is_version_1_and_migrated_in_order():
    seen = []

    def v1(d):
        seen.append(1)
        d["name"] = d.pop("title")
        return d

    def v2(d):
        seen.append(2)
        return {**d, "steps": 7}  # the value that reproduces what version 2 did

    rec, ignored = read_versioned(Rec, {"title": "a"}, 3, {1: v1, 2: v2})
    assert (rec.name, rec.steps, rec.format_version, ignored) == ("a", 7, 3, [])
    assert seen == [1, 2]
    # A version-2 file runs only the last step.
    seen.clear()
    rec, _ = read_versioned(Rec, {"format_version": 2, "name": "b"}, 3, {1: v1, 2: v2})
    assert (rec.name, rec.steps, seen) == ("b", 7, [2])


def test_unknown_fields_at_any_depth_are_dropped_and_named():
    data = {"format_version": 4, "name": "a", "future": 1, "inner": {"rate": 0.5, "mode": "x"}}
    rec, ignored = read_versioned(Rec, data, 3)
    assert rec.inner == Inner(rate=0.5)
    assert sorted(ignored) == ["future", "inner.mode"]
    assert rec.format_version == 4  # a newer file keeps its version
    assert data["future"] == 1  # the caller's data is not changed


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ([1, 2], "JSON object"),
        ({"format_version": "x", "name": "a"}, "format_version"),
        ({"format_version": 0, "name": "a"}, "format_version"),
        ({"inner": {"rate": 1}}, "name: Field required"),
        ({"name": "a", "inner": {"rate": "fast"}}, "inner.rate"),
    ],
)
def test_what_cannot_be_read_says_why(data, words):
    with pytest.raises(Unreadable, match=words):
        read_versioned(Rec, data, 3)


def test_merge_unknown_keeps_what_the_writer_does_not_know():
    stored = {"name": "old", "future": {"a": 1}, "inner": {"rate": 1.0, "mode": "x"}}
    written = {"name": "new", "inner": {"rate": 2.0}, "steps": 3}
    assert merge_unknown(stored, written) == {
        "name": "new", "inner": {"rate": 2.0, "mode": "x"}, "steps": 3, "future": {"a": 1}
    }  # fmt: skip
    assert merge_unknown(None, written) == written
