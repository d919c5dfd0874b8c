"""S3 failing by cause, through real boto3 against moto's S3 server on loopback: a user
without rights (moto enforcing IAM) and a stopped endpoint (a closed port), for what the
provider reads and writes there: models, datasets, a job's outputs, the cancel marker.

Only "not found" is absence (None, False, a ModelError); a denial is Refused (502), naming
the bucket, key and operation; no answer is Unavailable (503). Neither is the caller's 400.
"""

from __future__ import annotations

import io
import json
import socket
import tarfile
from datetime import UTC, datetime

import pytest
from fake_backend import spec
from s3_server import iam_enforced, iam_user, s3_server

from llama_stack_provider_kfp.api import responses
from llama_stack_provider_kfp.boundary import storage
from llama_stack_provider_kfp.boundary.job_outputs import JobOutputs
from llama_stack_provider_kfp.boundary.model_source import ModelError, inspect_s3_model
from llama_stack_provider_kfp.core.errors import Refused, Unavailable
from llama_stack_provider_kfp.core.locations import parse
from llama_stack_provider_kfp.core.outputs import CANCEL
from llama_stack_provider_kfp.jobs.backend import Observed
from llama_stack_provider_kfp.jobs.record import JobRecord
from llama_stack_provider_kfp.training.io import Output
from llama_stack_provider_kfp.training.stop import GracefulStop

OUT = "s3://kfp/jobs/j1/output"
CONFIG = {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}


def _tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        body = json.dumps(CONFIG).encode()
        info = tarfile.TarInfo("config.json")
        info.size = len(body)
        tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


@pytest.fixture(scope="module")
def clients():
    """S3 clients by who asks: `staff` may do anything, `nobody` nothing, `stopped` talks to
    a closed port. IAM is enforced for the whole module."""
    with s3_server() as env:
        endpoint = env["AWS_ENDPOINT_URL"]
        s3 = storage.client()
        for bucket in ("models", "kfp"):
            s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket="models", Key="tiny.tar.gz", Body=_tarball())
        s3.put_object(Bucket="models", Key="m/config.json", Body=json.dumps(CONFIG).encode())
        s3.put_object(Bucket="kfp", Key="jobs/j1/output/progress.json", Body=b'{"loss": 1}')
        staff = iam_user(endpoint, "staff", [{"Effect": "Allow", "Action": "s3:*",
                                              "Resource": "*"}])  # fmt: skip
        nobody = iam_user(endpoint, "nobody")
        with socket.socket() as sock:  # a port nobody listens on
            sock.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{sock.getsockname()[1]}"
        with iam_enforced(endpoint):
            yield {
                "staff": _client(endpoint, staff),
                "nobody": _client(endpoint, nobody),
                "stopped": _client(closed, staff),
                "env": {"endpoint": endpoint, "nobody": nobody, "closed": closed},
            }


def _client(endpoint: str, keys: dict[str, str]):
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
                        config=Config(retries={"max_attempts": 1}))  # fmt: skip


CAUSES = [("nobody", Refused), ("stopped", Unavailable)]


def _names(err: Exception, *words: str) -> None:
    text = str(err)
    assert all(w in text for w in words), text


@pytest.mark.parametrize(("who", "cause"), CAUSES)
def test_a_model_denied_or_unreachable_is_never_the_callers_mistake(clients, who, cause):
    with pytest.raises(cause) as tarball:
        inspect_s3_model("tiny", parse("s3://models/tiny.tar.gz"), clients[who])
    _names(tarball.value, "GetObject", "bucket 'models'", "key 'tiny.tar.gz'")
    with pytest.raises(cause) as prefix:
        inspect_s3_model("m", parse("s3://models/m"), clients[who])
    _names(prefix.value, "ListObjectsV2", "bucket 'models'", "prefix 'm'")
    if cause is Refused:  # S3 answers 403 for a missing key to a caller without ListBucket
        _names(tarball.value, "AccessDenied", "or the key does not exist")
        assert not isinstance(tarball.value, Unavailable | ValueError | OSError)


def test_a_model_that_is_not_there_is_the_callers_mistake(clients):
    staff = clients["staff"]
    assert inspect_s3_model("tiny", parse("s3://models/tiny.tar.gz"), staff).family == "gpt2"
    for where, words in [
        ("s3://models/gone.tar.gz", "no object s3://models/gone.tar.gz"),
        ("s3://models/gone", "nothing found under s3://models/gone/"),
        ("s3://no-bucket/m.tar.gz", "bucket 'no-bucket' does not exist"),
        ("s3://no-bucket/m", "bucket 'no-bucket' does not exist"),
    ]:
        with pytest.raises(ModelError, match=words):
            inspect_s3_model("x", parse(where), staff)


@pytest.mark.parametrize(("who", "cause"), CAUSES)
def test_dataset_staging_and_fetching(clients, tmp_path, who, cause):
    rows = tmp_path / "train.jsonl"
    rows.write_text('{"a": 1}\n')
    target = parse("s3://kfp/jobs/j1/input/train.jsonl")
    with pytest.raises(cause) as up:
        storage.upload_file(rows, target, clients[who])
    _names(up.value, "PutObject", "bucket 'kfp'", "key 'jobs/j1/input/train.jsonl'")
    storage.upload_file(rows, target, clients["staff"])
    with pytest.raises(cause) as down:
        storage.download_file(target, tmp_path / "got.jsonl", clients[who])
    _names(down.value, "Object", "bucket 'kfp'", "key 'jobs/j1/input/train.jsonl'")
    with pytest.raises(FileNotFoundError, match="no object s3://kfp/jobs/j1/input/gone"):
        storage.download_file(
            parse("s3://kfp/jobs/j1/input/gone"), tmp_path / "x", clients["staff"]
        )


@pytest.mark.parametrize(("who", "cause"), CAUSES)
def test_outputs_raise_by_cause_and_a_status_still_answers(clients, tmp_path, who, cause):
    outputs = JobOutputs(parse(OUT), clients[who])
    with pytest.raises(cause) as err:
        outputs.progress()
    _names(err.value, "GetObject", "bucket 'kfp'", "key 'jobs/j1/output/progress.json'")
    with pytest.raises(cause):
        outputs.checkpoints()
    record = JobRecord(job_uuid="j1", spec=spec("j1", tmp_path), scheduled_at=datetime.now(UTC))
    st = responses.status(record, Observed("in_progress"), outputs, tmp_path)
    warnings = st.resources_allocated["warnings"]
    assert "progress.json" in warnings[0] and st.checkpoints == []
    # Unreachable: the first failure stands for all (no timeout waited per file). Denied:
    # each read says so (progress, result, the log, the two stages' records, checkpoints).
    assert len(warnings) == (1 if cause is Unavailable else 6), warnings


def test_outputs_not_there_are_none_and_no_warning(clients, tmp_path):
    outputs = JobOutputs(parse("s3://kfp/jobs/none/output"), clients["staff"])
    assert outputs.progress() is None and outputs.checkpoints() == [] and outputs.log_tail() == []
    assert JobOutputs(parse(OUT), clients["staff"]).progress() == {"loss": 1}
    record = JobRecord(job_uuid="j1", spec=spec("j1", tmp_path), scheduled_at=datetime.now(UTC))
    st = responses.status(record, Observed("in_progress"), outputs, tmp_path)
    assert "warnings" not in st.resources_allocated


@pytest.mark.parametrize(("who", "cause"), CAUSES)
def test_the_cancel_marker_denied_or_unreachable_is_not_read_as_absent(clients, who, cause):
    marker = parse(OUT).join(CANCEL)
    assert storage.exists(marker, clients["staff"]) is False
    with pytest.raises(cause) as err:
        storage.exists(marker, clients[who])
    _names(err.value, "HeadObject", "bucket 'kfp'", "key 'jobs/j1/output/cancel.json'")
    storage.write_json(marker, {"cancelled": True}, clients["staff"])
    try:
        assert storage.exists(marker, clients["staff"]) is True
        with pytest.raises(cause):
            storage.exists(marker, clients[who])
    finally:
        clients["staff"].delete_object(Bucket="kfp", Key=marker.key)


@pytest.mark.parametrize("who", ["nobody", "stopped"])
def test_a_step_that_cannot_read_the_marker_saves_and_says_why(clients, monkeypatch, capsys, who):
    """The train step's SIGTERM handler, with the step's own S3 settings (STEP_ENV)."""
    env = clients["env"]
    keys = env["nobody"] if who == "nobody" else {"AWS_ACCESS_KEY_ID": "k",
                                                   "AWS_SECRET_ACCESS_KEY": "s"}  # fmt: skip
    monkeypatch.setenv("KFP_STEP_S3_ENDPOINT_URL", env["endpoint" if who == "nobody" else "closed"])
    monkeypatch.setenv("KFP_STEP_S3_ACCESS_KEY_ID", keys["AWS_ACCESS_KEY_ID"])
    monkeypatch.setenv("KFP_STEP_S3_SECRET_ACCESS_KEY", keys["AWS_SECRET_ACCESS_KEY"])
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    stop = GracefulStop(Output(OUT))
    stop._handle(15, None)  # as the signal would
    assert stop.requested  # a checkpoint at the next step, as for a preemption
    printed = capsys.readouterr().out
    assert "cannot read the cancel marker" in printed and "cancel.json" in printed
