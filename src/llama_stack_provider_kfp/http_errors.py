"""Errors that reach llama-stack clients as clean 400/501 responses.

llama-stack 0.6.1 maps a plain ValueError to 400 and NotImplementedError to 501, but only
through its catch-all handler, which re-raises after answering: the connection is dropped
and clients such as httpx often see "connection reset" instead of the response. Handlers
registered for LlamaStackError subclasses (ConflictError among them) do not re-raise, so our
errors derive from ConflictError and carry their own status code.
"""

from __future__ import annotations

import functools

import httpx
from llama_stack_api.common.errors import ConflictError


class InvalidRequestError(ConflictError, ValueError):
    status_code = httpx.codes.BAD_REQUEST


class NotSupportedError(ConflictError, NotImplementedError):
    status_code = httpx.codes.NOT_IMPLEMENTED


def as_http_errors(fn):
    """Re-raise ValueError as a 400 and NotImplementedError as a 501, message unchanged."""

    @functools.wraps(fn)
    async def wrapper(*args, **kwargs):
        try:
            return await fn(*args, **kwargs)
        except (InvalidRequestError, NotSupportedError):
            raise
        except NotImplementedError as e:
            raise NotSupportedError(str(e)) from None
        except ValueError as e:
            raise InvalidRequestError(str(e)) from None

    return wrapper
