"""Failures at the I/O boundary by cause, from the errors the libraries raise: only "not
found" is absence (the caller's 400 where they named the thing); a refusal is Refused (502),
no answer or a 5xx Unavailable (503). Against a real S3 server: tests/test_storage_failures.py."""

from __future__ import annotations

import sys
import types

import httpx2
import pytest
from boto3.exceptions import RetriesExceededError, S3UploadFailedError
from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError
from huggingface_hub import errors as hf

from llama_stack_provider_kfp.api.errors import to_http
from llama_stack_provider_kfp.backends.kfp.connection import explain as kfp_explain
from llama_stack_provider_kfp.boundary import data_uri, model_source, s3_errors, storage
from llama_stack_provider_kfp.core import hub_errors
from llama_stack_provider_kfp.core.errors import Refused, Unavailable, Upstream
from llama_stack_provider_kfp.core.locations import parse

LOC = parse("s3://bucket/some/key.json")


def _client_error(code: str, status: int, op: str = "GetObject") -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        op,
    )


def test_refused_and_unavailable_are_siblings_and_no_callers_mistake():
    assert not issubclass(Refused, Unavailable) and not issubclass(Unavailable, Refused)
    for cls in (Refused, Unavailable, s3_errors.NoSuchBucket):
        assert issubclass(cls, Upstream)
        # `except OSError` / `except ValueError` turn unreadable files into a 400.
        assert not issubclass(cls, OSError | ValueError)
    assert int(to_http(Refused("x")).status_code) == 502
    assert int(to_http(Unavailable("x")).status_code) == 503
    assert int(to_http(s3_errors.NoSuchBucket("x")).status_code) == 502


@pytest.mark.parametrize(
    ("error", "cause", "words"),
    [
        (_client_error("AccessDenied", 403), Refused,
         ["S3 denied GetObject", "bucket 'bucket'", "key 'some/key.json'", "or the key does not"]),
        (_client_error("403", 403, "HeadObject"), Refused, ["HeadObject", "does not exist"]),
        (_client_error("AccessDenied", 403, "PutObject"), Refused, ["S3 denied PutObject"]),
        (_client_error("InvalidAccessKeyId", 403), Refused, ["did not accept the credentials"]),
        (_client_error("NoSuchBucket", 404), s3_errors.NoSuchBucket, ["'bucket' does not exist"]),
        (_client_error("InternalError", 500), Unavailable, ["S3 failed GetObject", "HTTP 500"]),
        (_client_error("SlowDown", 503), Unavailable, ["SlowDown"]),
        (_client_error("502", 502, "HeadObject"), Unavailable, ["HTTP 502"]),
        (_client_error("PermanentRedirect", 301), Refused, ["S3 refused GetObject"]),
        (EndpointConnectionError(endpoint_url="http://s3"), Unavailable, ["could not be reached"]),
        (NoCredentialsError(), Refused, ["no S3 credentials", "AWS_ACCESS_KEY_ID"]),
    ],
)  # fmt: skip
def test_s3_failures_by_cause(error, cause, words):
    got = s3_errors.explain(error, LOC, "GetObject")
    assert type(got) is cause, got
    assert all(w in str(got) for w in words), str(got)


def test_boto3_transfer_wrappers_are_unwrapped():
    try:
        try:
            raise _client_error("AccessDenied", 403, "PutObject")
        except ClientError as e:
            raise S3UploadFailedError(f"Failed to upload: {e}")  # noqa: B904 (as boto3 does)
    except S3UploadFailedError as wrapped:
        assert isinstance(s3_errors.explain(wrapped, LOC), Refused)
    retries = RetriesExceededError(EndpointConnectionError(endpoint_url="http://s3"))
    assert isinstance(s3_errors.explain(retries, LOC), Unavailable)


def test_anything_else_is_left_as_it_is():
    bug = KeyError("x")
    assert s3_errors.explain(bug, LOC) is bug  # a bug stays a 500
    done = Refused("explained")
    assert s3_errors.explain(done, LOC) is done


def test_only_no_such_key_is_missing():
    assert s3_errors.missing(_client_error("NoSuchKey", 404))
    assert s3_errors.missing(_client_error("404", 404, "HeadObject"))
    assert not s3_errors.missing(_client_error("AccessDenied", 403))
    assert not s3_errors.missing(_client_error("NoSuchBucket", 404))


class _S3:
    """A client stub whose get_object/head_object raise the error given."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def get_object(self, **kw):
        raise self.error

    head_object = get_object


@pytest.mark.parametrize(
    ("error", "expect"),
    [(_client_error("NoSuchKey", 404), None), (_client_error("AccessDenied", 403), Refused),
     (_client_error("InternalError", 500), Unavailable)],
)  # fmt: skip
def test_reads_say_missing_with_none_and_raise_the_rest(error, expect):
    for read in (storage.read_json, storage.read_bytes, storage.stream):
        if expect is None:
            assert read(LOC, _S3(error)) is None
        else:
            with pytest.raises(expect):
                read(LOC, _S3(error))
    if expect is None:
        assert storage.exists(LOC, _S3(_client_error("404", 404, "HeadObject"))) is False


def test_the_tail_of_an_empty_log_is_empty():
    assert storage.read_tail(LOC, 100, _S3(_client_error("InvalidRange", 416))) == ""


# ---- the Hugging Face Hub ------------------------------------------------------------------


def _hub_http(cls: type, status: int) -> Exception:
    response = httpx2.Response(status, request=httpx2.Request("HEAD", "https://huggingface.co/x"))
    return cls(f"HTTP {status}", response=response)


def _wrapped(outer: Exception, inner: BaseException) -> Exception:
    outer.__cause__ = inner
    return outer


@pytest.mark.parametrize(
    ("error", "cause"),
    [
        (_hub_http(hf.GatedRepoError, 403), Refused),
        (_hub_http(hf.HfHubHTTPError, 401), Refused),
        (_hub_http(hf.RepositoryNotFoundError, 404), None),
        (_hub_http(hf.RevisionNotFoundError, 404), None),
        (_wrapped(hf.LocalEntryNotFoundError("no file"), _hub_http(hf.HfHubHTTPError, 503)),
         Unavailable),
        (_hub_http(hf.HfHubHTTPError, 429), Unavailable),
        (_wrapped(hf.LocalEntryNotFoundError("no file"), httpx2.ConnectError("refused")),
         Unavailable),
        (_wrapped(hf.LocalEntryNotFoundError("no file"), hf.OfflineModeIsEnabled("offline")),
         None),
        # datasets says it with a builtin ConnectionError and the cause's name in the text
        (ConnectionError("Couldn't reach 'a/b' on the Hub (LocalEntryNotFoundError)"), Unavailable),
        (ConnectionError("Couldn't reach 'a/b' on the Hub (OfflineModeIsEnabled)"), None),
        (ValueError("not a repo id"), None),
    ],
)  # fmt: skip
def test_hub_failures_by_cause(error, cause):
    got = hub_errors.upstream(error, "reading config.json of 'a/b'")
    assert (type(got) if got is not None else None) is cause, got
    if got is not None:
        assert "reading config.json of 'a/b'" in str(got)


@pytest.mark.parametrize(
    ("error", "expect"),
    [(_hub_http(hf.HfHubHTTPError, 502), Unavailable), (_hub_http(hf.GatedRepoError, 403), Refused),
     (_hub_http(hf.RepositoryNotFoundError, 404), model_source.ModelError)],
)  # fmt: skip
def test_a_hub_model_that_the_hub_cannot_give_is_not_a_400(monkeypatch, error, expect):
    import huggingface_hub

    def fail(*a, **kw):
        raise error

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fail)
    with pytest.raises(expect):
        model_source.hub_model("m", "acme/tiny")


@pytest.mark.parametrize(
    ("error", "expect"),
    [(ConnectionError("Couldn't reach 'a/b' on the Hub (LocalEntryNotFoundError)"), Unavailable),
     (_hub_http(hf.HfHubHTTPError, 503), Unavailable),
     (FileNotFoundError("Dataset a/b doesn't exist"), data_uri.DataSourceError)],
)  # fmt: skip
def test_a_hub_dataset_that_the_hub_cannot_give_is_not_a_400(monkeypatch, error, expect):
    def load_dataset(*a, **kw):
        yield {"row": 1}  # a failure while streaming, after the first row
        raise error

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    rows = data_uri.iter_rows("huggingface://a/b")
    assert next(rows) == {"row": 1}
    with pytest.raises(expect):
        next(rows)


def test_kfp_5xx_is_unavailable_and_explained_errors_pass_through():
    class ApiError(Exception):
        def __init__(self, status: int) -> None:
            super().__init__(f"HTTP {status}")
            self.status = status

    assert isinstance(kfp_explain(ApiError(503), "https://kfp"), Unavailable)
    assert isinstance(kfp_explain(ApiError(403), "https://kfp"), Refused)
    assert isinstance(kfp_explain(ApiError(400), "https://kfp"), Refused)
    done = Unavailable("discovery failed")
    assert kfp_explain(done, "https://kfp") is done
