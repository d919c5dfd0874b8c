"""The front end's error mapping: the cause decides the HTTP status, not the Python type
llama-stack would guess from (every ValueError a 400, a ValidationError a 400, ...)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from llama_stack_api import ResourceNotFoundError
from pydantic import BaseModel, ValidationError

from llama_stack_provider_kfp.api.errors import as_http_errors, to_http
from llama_stack_provider_kfp.boundary.model_source import ModelError
from llama_stack_provider_kfp.core.errors import (
    InvalidRequest,
    JobNotFound,
    Refused,
    Unavailable,
    Unsupported,
)
from llama_stack_provider_kfp.core.rows import RowError


class _Spec(BaseModel):
    n: int


def _validation_error() -> ValidationError:
    try:
        _Spec.model_validate({"n": "many"})
    except ValidationError as e:
        return e
    raise AssertionError("no ValidationError")


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (InvalidRequest("fix this"), 400),
        (ModelError("no weights"), 400),
        (RowError("bad row"), 400),
        (Unsupported("not yet"), 501),
        (Refused("KFP refused the token"), 502),
        (Unavailable("KFP unreachable"), 503),
        # Bugs, whatever their type: never the caller's fault.
        (ValueError("a library's ValueError"), 500),
        (_validation_error(), 500),
        (KeyError("x"), 500),
        (TimeoutError("a call nobody wrapped"), 500),
    ],
)
def test_status_by_cause(error, status):
    assert int(to_http(error).status_code) == status


def test_unknown_job_is_llama_stacks_404():
    mapped = to_http(JobNotFound("j-1"))
    assert isinstance(mapped, ResourceNotFoundError)
    assert int(mapped.status_code) == 404 and "j-1" in str(mapped)


def test_message_kept_for_the_caller_and_hidden_for_bugs(caplog):
    assert str(to_http(InvalidRequest("set batch_size >= 1"))) == "set batch_size >= 1"
    with caplog.at_level(logging.ERROR):
        mapped = to_http(ValueError("internal detail"))
    assert "internal detail" not in str(mapped) and "ValueError" in str(mapped)
    assert "internal detail" in caplog.text  # logged with its traceback


def test_decorator_maps_what_the_method_raises():
    @as_http_errors
    async def method() -> None:
        raise Unavailable("S3 endpoint unreachable")

    with pytest.raises(Exception) as err:
        asyncio.run(method())
    assert int(err.value.status_code) == 503
