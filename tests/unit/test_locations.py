"""One Location type for every place weights, data and outputs live."""

from __future__ import annotations

from pathlib import Path

import pytest

from llama_stack_provider_kfp.core.errors import InvalidRequest
from llama_stack_provider_kfp.core.locations import Location, parse


@pytest.mark.parametrize(
    ("text", "scheme", "root", "key"),
    [
        ("/abs/model", "file", "/abs/model", ""),
        ("./rel", "file", "./rel", ""),
        ("file:///abs/x", "file", "/abs/x", ""),
        ("s3://bucket", "s3", "bucket", ""),
        ("s3://bucket/models/tiny.tar.gz", "s3", "bucket", "models/tiny.tar.gz"),
        ("pvc://models-pvc/llama/3b", "pvc", "models-pvc", "llama/3b"),
        ("hf://meta-llama/Llama-3.2-1B", "hf", "meta-llama/Llama-3.2-1B", ""),
    ],
)
def test_parse(text, scheme, root, key):
    loc = parse(text)
    assert (loc.scheme, loc.root, loc.key) == (scheme, root, key)
    if not text.startswith("file://"):
        assert str(loc) == text


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("s3:///key-without-bucket", "s3://<bucket>/<key>"),
        ("pvc://Bad_Claim/x", "pvc://<claim name>"),
        ("pvc://claim/../etc", "pvc://<claim name>"),
        ("hf://org/name/extra", "hf://<organisation>/<repository>"),
        ("gs://bucket/key", "unsupported location scheme 'gs'"),
    ],
)
def test_malformed_locations_say_what_is_expected(text, words):
    with pytest.raises(InvalidRequest, match=words.replace("(", r"\(")):
        parse(text)


def test_join_and_paths():
    out = parse("s3://b/jobs/j1/output")
    assert str(out.join("checkpoints", "epoch_1/")) == "s3://b/jobs/j1/output/checkpoints/epoch_1"
    assert str(parse("s3://b").join("x")) == "s3://b/x"
    local = parse("/w/jobs/j1/output")
    assert local.join("progress.json").path == Path("/w/jobs/j1/output/progress.json")
    assert parse("pvc://models/llama/3b").path == Path("/mnt/models/models/llama/3b")
    with pytest.raises(ValueError, match="not on a local"):
        _ = parse("s3://b/k").path
    assert Location("file", "/x").is_local and not parse("s3://b").is_local
