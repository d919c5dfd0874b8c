"""S3 failures by cause, at the boundary every boundary.storage call goes through.

Only "no such key" is absence. A 403 is a refusal whose message names the operation, bucket
and key, and says the key may also be missing (S3 answers 403, not 404, for a missing key to a
caller without s3:ListBucket). No answer, a timeout or a 5xx is unavailability. Neither is ever
the caller's 400.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from ..core.errors import Refused, Unavailable, Upstream
from ..core.locations import Location

# Error codes by cause (AWS, MinIO and Ceph use the same names).
_MISSING = frozenset({"NoSuchKey", "404", "NotFound"})
_DENIED = frozenset({"AccessDenied", "403", "Forbidden", "AllAccessDisabled", "AccountProblem"})
_BAD_KEYS = frozenset({"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
                       "InvalidToken", "TokenRefreshRequired"})  # fmt: skip
_BUSY = frozenset({"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout", "503"})
_READS = ("GetObject", "HeadObject")


class NoSuchBucket(Refused):
    """The bucket does not exist. For a location the caller named (a model), their mistake;
    for the server's own bucket, a refusal like any other."""


def code_of(e: BaseException) -> str | None:
    response = getattr(e, "response", None)  # a botocore ClientError's
    return str(response.get("Error", {}).get("Code")) if isinstance(response, dict) else None


def missing(e: BaseException) -> bool:
    """Is this S3's "no such key" (404)?"""
    return code_of(e) in _MISSING


def _where(loc: Location | None, op: str) -> str:
    if loc is None:
        return ""
    if op.startswith("List") or op == "DeleteObjects":
        return f" on bucket {loc.root!r}, prefix {loc.key!r}"
    return f" on bucket {loc.root!r}, key {loc.key!r}"


def explain(e: Exception, loc: Location | None = None, op: str = "") -> Exception:
    """A boto3 failure as Refused (S3 answered no) or Unavailable (no answer), naming the
    operation, bucket and key; anything else (a bug, a local disk error) is returned as is."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if isinstance(e, Upstream):
        return e
    cause: BaseException | None = e
    while cause is not None and not isinstance(cause, ClientError | BotoCoreError):
        # boto3's transfers wrap the real error (RetriesExceededError keeps it aside)
        cause = cause.__cause__ or cause.__context__ or getattr(cause, "last_exception", None)
    if cause is None and not isinstance(e, Boto3Error):
        return e
    e = cause if isinstance(cause, Exception) else e
    if isinstance(e, NoCredentialsError):
        return Refused(
            f"no S3 credentials for {op or 'a call'}{_where(loc, op)}: set "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the server's environment (in a "
            "step: remote.s3_credentials_secret)"
        )
    if not isinstance(e, ClientError):
        return Unavailable(
            f"S3 could not be reached for {op or 'a call'}{_where(loc, op)} "
            f"({type(e).__name__}: {e})"
        )
    op = e.operation_name or op
    code = str(e.response.get("Error", {}).get("Code", "?"))
    status = int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
    where = _where(loc, op)
    if code == "NoSuchBucket":
        bucket = f"bucket {loc.root!r}" if loc else "the bucket"
        return NoSuchBucket(f"S3 answered {op}{where} with NoSuchBucket: {bucket} "
                            "does not exist")  # fmt: skip
    if code in _BAD_KEYS:
        return Refused(f"S3 did not accept the credentials for {op}{where} ({code})")
    if code in _DENIED or status == 403:
        why = "the credentials lack the right"
        if op in _READS:
            why += (", or the key does not exist (S3 answers 403, not 404, for a missing key "
                    "to a caller without s3:ListBucket on the bucket)")  # fmt: skip
        return Refused(f"S3 denied {op}{where} ({code}): {why}")
    if code in _BUSY or status >= 500:
        return Unavailable(f"S3 failed {op}{where} ({code}, HTTP {status}); retry later")
    return Refused(f"S3 refused {op}{where} ({code}, HTTP {status})")


@contextlib.contextmanager
def boundary(loc: Location | None, op: str = "") -> Iterator[None]:
    """Raise S3 failures inside as Refused / Unavailable (see explain)."""
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except (BotoCoreError, ClientError, Boto3Error) as e:
        raise explain(e, loc, op) from None
