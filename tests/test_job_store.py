import json
import os

import pytest

from llama_stack_provider_kfp.boundary.files import read_json, write_json
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


def _saved(tmp_path, job: str = "job-1"):
    from fake_backend import record

    store = JobStore(tmp_path)
    store.reserve(job)
    store.save(record(job, 0))
    return store, store.job_dir(job) / "job.json"


def test_unreadable_record_is_an_entry_with_its_reason(tmp_path):
    from llama_stack_provider_kfp.jobs.store import UnreadableRecord

    store, path = _saved(tmp_path)
    data = read_json(path)
    del data["spec"]["model"]["path"]  # a field this release cannot do without
    write_json(path, data)
    found = store.entry("job-1")
    assert isinstance(found, UnreadableRecord)
    assert found.reason.startswith("record unreadable: spec.model.path")
    assert store.load("job-1") is None
    assert store.list_ids() == ["job-1"]
    assert store.entry("nope") is None


def test_record_from_a_newer_release_is_read_and_saved_without_losing_fields(tmp_path):
    store, path = _saved(tmp_path)
    data = read_json(path)
    data["format_version"] = 99
    data["labels"] = {"team": "a"}
    data["spec"]["train"]["label_smoothing"] = 0.5
    write_json(path, data)
    record = store.load("job-1")
    assert record is not None
    assert sorted(record.ignored_fields) == ["labels", "spec.train.label_smoothing"]
    store.save(record.model_copy(update={"lost": {"message": "x"}}))
    again = read_json(path)
    assert again["labels"] == {"team": "a"}
    assert again["spec"]["train"]["label_smoothing"] == 0.5
    assert again["lost"] == {"message": "x"} and again["format_version"] == 99


def test_owners_are_kept_and_records_without_one_are_unowned(tmp_path):
    from llama_stack_provider_kfp.jobs.record import Owner
    from llama_stack_provider_kfp.jobs.store import UnreadableRecord

    store, path = _saved(tmp_path)
    assert store.load("job-1").owner is None  # as every record before owners (unowned)
    alice = Owner(principal="alice", attributes={"roles": ["a"]})
    store.save(store.load("job-1").model_copy(update={"owner": alice}))
    assert store.load("job-1").owner == alice
    # A record this release cannot read still says whose it is; a mangled owner is nobody's.
    data = read_json(path)
    data["spec"] = "garbled"
    write_json(path, data)
    found = store.entry("job-1")
    assert isinstance(found, UnreadableRecord) and found.owner == alice
    data["owner"] = {"principal": 7}
    write_json(path, data)
    assert store.entry("job-1").owner == Owner(principal="")


def test_record_of_the_release_before_versions_is_migrated(tmp_path):
    from llama_stack_provider_kfp.jobs.record import RECORD_FORMAT

    store, path = _saved(tmp_path)
    data = read_json(path)
    del data["format_version"]
    write_json(path, data)
    record = store.load("job-1")
    assert record is not None and record.ignored_fields == []
    assert record.format_version == RECORD_FORMAT


def test_abandoned_reservations_are_removed_live_ones_kept(tmp_path):
    store = JobStore(tmp_path)
    old = store.reserve("died-half-way")
    (old / "reserved.json").write_text('{"host": "elsewhere", "pid": 1, "create_time": 0}')
    os.utime(old, (0, 0))
    mine = store.reserve("in-flight")  # this process reserved it: alive
    os.utime(mine, (0, 0))
    young = store.reserve("young")
    (young / "reserved.json").unlink()
    _, _ = _saved(tmp_path, "done")
    os.utime(store.job_dir("done"), (0, 0))
    # This machine's submit whose process is gone (a server killed mid-submit): at once.
    killed = store.reserve("killed-here")
    marker = json.loads((killed / "reserved.json").read_text())
    (killed / "reserved.json").write_text(json.dumps({**marker, "create_time": 1.0}))
    assert sorted(store.remove_abandoned()) == ["died-half-way", "killed-here"]
    assert sorted(p.name for p in store.root.iterdir()) == ["done", "in-flight", "young"]
    store.reserve("died-half-way")  # its id is free again
