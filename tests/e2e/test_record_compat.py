"""Jobs written by earlier releases (tests/fixtures/records/<release>/, made by
scripts/make-record-fixtures.py with that release) are listed by this one through the real
server, with their endings, checkpoints and metrics, from a work dir that has moved since.
A record from a newer release, a record that cannot be read and a submit that died half-way
are handled at start-up without losing anything."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from llama_stack_client import APIStatusError

from harness.server import Server
from llama_stack_provider_kfp.client import cancel_job, job_artifacts, job_status

pytestmark = pytest.mark.e2e

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "records"
RELEASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir())


@pytest.fixture(scope="module")
def old_jobs(tmp_path_factory):
    root = tmp_path_factory.mktemp("compat")
    jobs = root / "jobs" / "jobs"
    for release in RELEASES:
        for job in (FIXTURES / release).iterdir():
            if job.is_dir():
                shutil.copytree(job, jobs / job.name)  # ids carry their release
    # The same completed job as a newer release would write it: fields unknown here.
    last = FIXTURES / RELEASES[-1] / f"{RELEASES[-1]}-completed-job"
    future = jobs / "future-job"
    shutil.copytree(last, future)
    data = json.loads((future / "job.json").read_text())
    data.update(job_uuid="future-job", format_version=99, owner={"principal": "alice"})
    data["spec"]["train"]["label_smoothing"] = 0.5
    (future / "job.json").write_text(json.dumps(data))
    broken = jobs / "broken-job"
    shutil.copytree(last, broken)
    (broken / "job.json").write_text('{"job_uuid": "broken-job", "spec": {')
    half = jobs / "half-submitted"
    half.mkdir()
    os.utime(half, (0, 0))
    (root / "jobs").mkdir(exist_ok=True)
    srv = Server(root).start()
    yield srv
    srv.cleanup()


@pytest.mark.parametrize("release", RELEASES)
def test_jobs_of_earlier_releases_keep_their_endings(old_jobs, release):
    client = old_jobs.client()
    expected = json.loads((FIXTURES / release / "expected.json").read_text())
    listed = {j.job_uuid for j in client.alpha.post_training.job.list()}
    for job_uuid, want in expected.items():
        assert job_uuid in listed
        status = job_status(client, job_uuid)
        assert status["status"] == want["status"]
        names = [c["identifier"].split("/", 1)[1] for c in status["checkpoints"]]
        assert names == [c.split("/", 1)[1] for c in want["checkpoints"]]
        for got, metrics in zip(status["checkpoints"], want["metrics"], strict=True):
            assert got["training_metrics"] == pytest.approx(metrics)
            # Read where the job's folder is now, not where the record says it was.
            assert Path(got["path"]).is_relative_to(old_jobs.jobs_dir / job_uuid)
        error = (status["resources_allocated"].get("error") or {}).get("message")
        assert error == want["error"]
        if want["status"] == "completed":  # its result.json and progress.json still read
            assert status["resources_allocated"]["result"]["global_step"] > 0
            assert status["resources_allocated"]["progress"]["step"] > 0
        artifacts = job_artifacts(client, job_uuid)["checkpoints"]
        assert [c["path"] for c in artifacts] == [c["path"] for c in status["checkpoints"]]


def test_record_of_a_newer_release_is_shown(old_jobs):
    status = job_status(old_jobs.client(), "future-job")
    assert status["status"] == "completed"
    assert [c["epoch"] for c in status["checkpoints"]] == [1, 2]
    # Kept on disk for the release that wrote it.
    data = json.loads((old_jobs.jobs_dir / "future-job" / "job.json").read_text())
    assert data["owner"] == {"principal": "alice"}


def test_unreadable_record_is_a_failed_job_not_a_404(old_jobs):
    client = old_jobs.client()
    assert "broken-job" in {j.job_uuid for j in client.alpha.post_training.job.list()}
    status = job_status(client, "broken-job")
    assert status["status"] == "failed"
    assert status["resources_allocated"]["error"]["message"].startswith("record unreadable:")
    assert [c["epoch"] for c in status["checkpoints"]] == [1, 2]  # its files are kept
    with pytest.raises(APIStatusError) as err:
        cancel_job(client, "broken-job")
    assert err.value.status_code == 400 and "unreadable" in str(err.value)
    assert (old_jobs.jobs_dir / "broken-job" / "job.json").read_text().endswith("{")


def test_half_submitted_folder_is_removed_at_start_up(old_jobs):
    assert not (old_jobs.jobs_dir / "half-submitted").exists()
    with pytest.raises(APIStatusError) as err:
        job_status(old_jobs.client(), "half-submitted")
    assert err.value.status_code == 404
