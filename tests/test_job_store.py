import json
import os

import pytest

from llama_stack_provider_kfp.core.files import read_json, write_json
from llama_stack_provider_kfp.jobs.record import check_job_id
from llama_stack_provider_kfp.jobs.store import JobStore


def test_atomic_write_leaves_no_temp_files(tmp_path):
    p = tmp_path / "a" / "x.json"
    write_json(p, {"n": 1})
    write_json(p, {"n": 2})
    assert read_json(p) == {"n": 2}
    assert os.listdir(p.parent) == ["x.json"]


def test_truncated_record_is_skipped_not_fatal(tmp_path):
    store = JobStore(tmp_path)
    d = store.reserve("job-1")
    (d / "job.json").write_text('{"job_uuid": "job-1", "spec": {')  # crash mid-write
    assert store.load("job-1") is None
    assert store.list_ids() == ["job-1"]
    assert read_json(d / "job.json") is None


def test_reserve_is_exclusive(tmp_path):
    store = JobStore(tmp_path)
    store.reserve("j")
    with pytest.raises(ValueError, match="already used"):
        store.reserve("j")


@pytest.mark.parametrize("bad", ["", "..", "../x", "a/b", "-lead", "x" * 129, "a b"])
def test_unsafe_ids(bad):
    with pytest.raises(ValueError, match="job_uuid"):
        check_job_id(bad)


def test_json_dump_is_plain(tmp_path):
    write_json(tmp_path / "y.json", {"a": [1, 2]})
    assert json.loads((tmp_path / "y.json").read_text()) == {"a": [1, 2]}
