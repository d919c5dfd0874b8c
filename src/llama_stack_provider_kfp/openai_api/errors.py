"""Every error in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`, with the
status code OpenAI gives it, so the `openai` SDK raises its own BadRequestError,
NotFoundError, AuthenticationError, ... The cause decides the code, as in api/errors.py."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from ..core.errors import (
    Forbidden,
    InvalidRequest,
    JobNotFound,
    LimitReached,
    Refused,
    Unavailable,
    Unsupported,
    Upstream,
)

log = logging.getLogger(__name__)


class APIError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:  # fmt: skip
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type_, param, code
        )  # fmt: skip

    def response(self) -> JSONResponse:
        body = {"message": self.message, "type": self.type, "param": self.param,
                "code": self.code}  # fmt: skip
        headers = {"WWW-Authenticate": "Bearer"} if self.status == 401 else None
        return JSONResponse({"error": body}, status_code=self.status, headers=headers)


def bad(message: str, param: str | None = None, code: str | None = None) -> APIError:
    return APIError(400, message, param=param, code=code)


def not_found(what: str, ident: str, param: str | None = None) -> APIError:
    return APIError(404, f"No such {what}: {ident}", param=param, code=None)


def from_core(e: BaseException) -> APIError:
    """The answer to an error of the core (core.errors), or a 500 for a bug."""
    if isinstance(e, APIError):
        return e
    if isinstance(e, InvalidRequest):
        return bad(str(e))
    if isinstance(e, Unsupported):  # OpenAI has no 501: what is not offered is a bad request
        return bad(str(e), code="unsupported")
    if isinstance(e, Forbidden):
        return APIError(403, str(e), code="forbidden")
    if isinstance(e, LimitReached):
        return APIError(429, str(e), type_="rate_limit_exceeded", code="rate_limit_exceeded")
    if isinstance(e, JobNotFound):
        return not_found("fine-tuning job", e.job_uuid)
    if isinstance(e, Refused):
        return APIError(502, str(e), type_="server_error", code="upstream_refused")
    if isinstance(e, Unavailable):
        return APIError(503, str(e), type_="server_error", code="upstream_unavailable")
    log.error("internal error in the OpenAI fine-tuning face", exc_info=e)
    return APIError(500, f"internal error ({type(e).__name__}); the server log has the "
                    "traceback", type_="server_error")  # fmt: skip


def install(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api(_: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        # FastAPI's own 422 {"detail": ...} -> OpenAI's 400, naming the first bad field.
        first = e.errors()[0] if e.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid')}" if param else str(first.get("msg"))
        return bad(message, param=param).response()

    @app.exception_handler(HTTPException)
    async def _http(_: Request, e: HTTPException) -> JSONResponse:
        return APIError(e.status_code, str(e.detail)).response()

    async def _core(_: Request, e: Exception) -> JSONResponse:
        return from_core(e).response()

    # The core's errors by class (handled where the request is answered); anything else is a
    # bug: a 500 in OpenAI's shape, logged with its traceback.
    for kind in (InvalidRequest, Unsupported, Forbidden, LimitReached, JobNotFound, Upstream):
        app.add_exception_handler(kind, _core)
    app.add_exception_handler(Exception, _core)
