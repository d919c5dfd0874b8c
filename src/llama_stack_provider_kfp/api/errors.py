"""Errors by cause -> HTTP status, decided here and only here.

    core.errors.InvalidRequest   400  the caller can fix it
    core.errors.Unsupported      501
    core.errors.Forbidden        403
    core.errors.JobNotFound      404  (llama-stack's ResourceNotFoundError; also another user's)
    core.errors.LimitReached     429
    core.errors.Refused          502  the cluster or storage answered but refused (403, ...)
    core.errors.Unavailable      503  the cluster or storage cannot be reached, or a 5xx
    anything else                500  logged with its traceback; never the caller's fault

llama-stack would answer a pydantic ValidationError (a bug while building a JobSpec) with 400,
TimeoutError with 504 and any ValueError with 400, so every exception is mapped here before it
leaves the provider. llama-stack 0.6.1 answers a plain exception through a catch-all handler
that re-raises after answering, which drops the connection; handlers registered for
ConflictError subclasses do not, so the answers derive from ConflictError with their own code.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable

import httpx
from llama_stack_api import ResourceNotFoundError
from llama_stack_api.common.errors import ConflictError

from ..core.errors import (
    Forbidden,
    InvalidRequest,
    JobNotFound,
    LimitReached,
    Refused,
    Unavailable,
    Unsupported,
)

log = logging.getLogger(__name__)


class BadRequest(ConflictError, ValueError):
    status_code = httpx.codes.BAD_REQUEST


class NotSupported(ConflictError, NotImplementedError):
    status_code = httpx.codes.NOT_IMPLEMENTED


class NotPermitted(ConflictError, PermissionError):
    status_code = httpx.codes.FORBIDDEN


class TooManyJobs(ConflictError):
    status_code = httpx.codes.TOO_MANY_REQUESTS


class BadGateway(ConflictError):
    status_code = httpx.codes.BAD_GATEWAY


class ServiceUnavailable(ConflictError):
    status_code = httpx.codes.SERVICE_UNAVAILABLE


class ProviderBug(ConflictError):
    status_code = httpx.codes.INTERNAL_SERVER_ERROR


_HTTP_ERRORS = (BadRequest, NotSupported, NotPermitted, TooManyJobs, BadGateway,
                ServiceUnavailable, ProviderBug)  # fmt: skip


def to_http(e: BaseException) -> Exception:
    """The llama-stack error that answers `e`."""
    if isinstance(e, (*_HTTP_ERRORS, ResourceNotFoundError)):
        return e
    if isinstance(e, InvalidRequest):
        return BadRequest(str(e))
    if isinstance(e, Unsupported):
        return NotSupported(str(e))
    if isinstance(e, Forbidden):
        return NotPermitted(str(e))
    if isinstance(e, LimitReached):
        return TooManyJobs(str(e))
    if isinstance(e, JobNotFound):
        return ResourceNotFoundError(
            e.job_uuid, "Post-training job", "alpha.post_training.job.list"
        )
    if isinstance(e, Refused):
        return BadGateway(str(e))
    if isinstance(e, Unavailable):
        return ServiceUnavailable(str(e))
    log.error("internal error in the KFP post-training provider", exc_info=e)
    return ProviderBug(
        f"internal error in the KFP post-training provider ({type(e).__name__}); the server "
        "log has the traceback"
    )


def as_http_errors[**P, R](fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except Exception as e:
            raise to_http(e) from None

    return wrapper
