import base64
import csv
import json

import pytest

from llama_stack_provider_kfp.boundary.data_uri import DataSourceError, iter_rows, sample_rows

ROWS = [{"a": str(i), "b": f"x{i}"} for i in range(25)]


def _jsonl(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return p


def test_jsonl_path_file_uri_and_huggingface_uri(tmp_path):
    p = _jsonl(tmp_path)
    assert list(iter_rows(str(p))) == ROWS
    assert list(iter_rows(f"file://{p}")) == ROWS
    assert list(iter_rows(f"huggingface:///json?data_files={p}&split=train")) == ROWS


def test_csv_and_data_uri(tmp_path):
    p = tmp_path / "d.csv"
    with p.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["a", "b"])
        w.writeheader()
        w.writerows(ROWS)
    assert list(iter_rows(str(p))) == ROWS
    uri = "data:text/csv;base64," + base64.b64encode(p.read_bytes()).decode()
    assert list(iter_rows(uri)) == ROWS


def test_sample_reads_only_what_it_needs(tmp_path):
    p = _jsonl(tmp_path)
    with p.open("a") as fh:
        fh.write("{not json\n")  # beyond the sample: never read
    assert sample_rows(str(p), 5) == ROWS[:5]
    with pytest.raises(DataSourceError, match="line 26"):
        list(iter_rows(str(p)))


def test_missing_and_unsupported(tmp_path):
    with pytest.raises(DataSourceError, match="does not exist"):
        sample_rows(str(tmp_path / "nope.jsonl"), 1)
    with pytest.raises(DataSourceError, match="not supported"):
        sample_rows("ftp://host/x.csv", 1)
