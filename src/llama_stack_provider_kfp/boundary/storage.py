"""S3-compatible object storage (AWS S3, MinIO, ODF, Ceph) through boto3.

Credentials come from the environment: on the server the way boto3 reads them
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or a profile); in a pipeline step from STEP_ENV's
provider-specific names (a Kubernetes Secret mounted as env vars), which KFP's launcher, running
in the same container and reading the standard AWS_* names, does not see. Never from a request,
a pipeline parameter or a job record. The endpoint is passed to `client()` by whoever owns the
setting (the kfp backend's config; STEP_ENV in a step's pod), never set process-wide.

Every function raises core.errors.Refused or Unavailable for a failed call (boundary.s3_errors);
only "no such key" is absence, and reads say so with None (exists: False; download_file:
FileNotFoundError).
"""

from __future__ import annotations

import json
import os
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..core.errors import Unavailable
from ..core.locations import Location
from .s3_errors import boundary, code_of, missing

# The job's S3 settings in a step's pod, by provider-specific names (mapped to boto3 here).
STEP_ENV = {
    "endpoint": "KFP_STEP_S3_ENDPOINT_URL",
    "access_key": "KFP_STEP_S3_ACCESS_KEY_ID",
    "secret_key": "KFP_STEP_S3_SECRET_ACCESS_KEY",
    "ca_bundle": "KFP_STEP_S3_CA_BUNDLE",
}


def client(
    endpoint_url: str | None = None,
    region: str | None = None,
    ca_bundle: str | None = None,
    timeout: float | None = None,
) -> Any:
    """An S3 client. `timeout` (seconds per read; connect at most 5 s, 2 attempts) for the
    server, whose calls must not outwait its own callers; the steps keep botocore's 60 s."""
    import boto3
    from botocore.config import Config

    env = os.environ.get
    keys = {}
    if env(STEP_ENV["access_key"]):
        keys = {"aws_access_key_id": env(STEP_ENV["access_key"]),
                "aws_secret_access_key": env(STEP_ENV["secret_key"])}  # fmt: skip
    verify = ca_bundle or env(STEP_ENV["ca_bundle"]) or None
    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or env(STEP_ENV["endpoint"]) or env("AWS_ENDPOINT_URL") or None,
        region_name=region or env("AWS_DEFAULT_REGION") or "us-east-1",
        verify=verify,
        config=Config(
            connect_timeout=min(5.0, timeout), read_timeout=timeout, retries={"max_attempts": 2}
        )
        if timeout
        else None,
        **keys,
    )


# How long a step keeps trying a write while S3 cannot be reached (an endpoint restarting, a
# dropped connection): seconds, read when the write fails. 0 tries once.
RETRY_ENV = "KFP_S3_RETRY_SECONDS"
DEFAULT_RETRY_SECONDS = 120.0
_FIRST_WAIT, _MAX_WAIT = 0.5, 15.0


def retry_seconds() -> float:
    value = os.environ.get(RETRY_ENV, "")
    try:
        return max(0.0, float(value)) if value else DEFAULT_RETRY_SECONDS
    except ValueError:
        return DEFAULT_RETRY_SECONDS


def retrying[T](call: Callable[[], T], s3: Any, what: str, bound: float | None = None) -> T:
    """`call` (a write of a step's output), tried again while S3 cannot be reached
    (Unavailable: no answer, a timeout, a 5xx after botocore's own retries), waiting 0.5 s
    doubling up to 15 s, for `bound` seconds (RETRY_ENV); then Unavailable naming the endpoint.
    A refusal (403, no bucket) is not retried: waiting does not change the answer."""
    bound = retry_seconds() if bound is None else bound
    started, wait, attempts = time.monotonic(), _FIRST_WAIT, 0
    while True:
        attempts += 1
        try:
            return call()
        except Unavailable as e:
            spent = time.monotonic() - started
            if spent + wait > bound:
                endpoint = getattr(getattr(s3, "meta", None), "endpoint_url", None) or "S3"
                raise Unavailable(
                    f"S3 at {endpoint} could not be reached for {what}: gave up after "
                    f"{attempts} attempts in {spent:.1f} s ({RETRY_ENV}={bound:g}); what was "
                    f"uploaded before is kept. Last error: {e}"
                ) from e
            print(f"s3: {what} failed, attempt {attempts}; trying again in {wait:.1f} s: {e}")
            time.sleep(wait)
            wait = min(wait * 2, _MAX_WAIT)


def upload_file(path: Path, loc: Location, s3: Any = None) -> None:
    with boundary(loc, "PutObject"):
        (s3 or client()).upload_file(str(path), loc.root, loc.key)  # multipart for large files


def download_file(loc: Location, path: Path, s3: Any = None) -> Path:
    """The object at `loc` as a local file; FileNotFoundError when there is none."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with boundary(loc, "GetObject"):
        try:
            (s3 or client()).download_file(loc.root, loc.key, str(path))
        except Exception as e:
            if missing(e):
                raise FileNotFoundError(f"no object {loc}") from None
            raise
    return path


def list_keys(prefix: Location, s3: Any = None) -> list[str]:
    """Keys under `prefix`, relative to it."""
    s3 = s3 or client()
    base = prefix.key.rstrip("/") + "/" if prefix.key else ""
    keys: list[str] = []
    with boundary(prefix, "ListObjectsV2"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=prefix.root, Prefix=base):
            keys += [o["Key"][len(base) :] for o in page.get("Contents", [])]
    return keys


def download_prefix(prefix: Location, dest: Path, s3: Any = None) -> Path:
    s3 = s3 or client()
    for rel_key in list_keys(prefix, s3):
        if not rel_key or rel_key.endswith("/"):
            continue  # a "folder" marker object
        rel = Path(rel_key)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"refusing object key {rel_key!r}: it leaves the target folder")
        download_file(prefix.join(rel_key), dest / rel, s3)
    return dest


def delete_prefix(prefix: Location, s3: Any = None) -> None:
    """Delete every object under `prefix/` (a checkpoint folder)."""
    s3 = s3 or client()
    keys = [prefix.join(k).key for k in list_keys(prefix, s3)]
    with boundary(prefix, "DeleteObjects"):
        for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
            batch = [{"Key": k} for k in keys[i : i + 1000]]
            s3.delete_objects(Bucket=prefix.root, Delete={"Objects": batch, "Quiet": True})


def exists(loc: Location, s3: Any = None) -> bool:
    """False only when S3 says there is no such key; a denied or failed look raises."""
    with boundary(loc, "HeadObject"):
        try:
            (s3 or client()).head_object(Bucket=loc.root, Key=loc.key)
        except Exception as e:
            if missing(e):
                return False
            raise
    return True


def read_bytes(loc: Location, s3: Any = None, tail: int | None = None) -> bytes | None:
    """The object's bytes (its last `tail` bytes), or None when there is no such key."""
    s3 = s3 or client()
    extra = {"Range": f"bytes=-{tail}"} if tail else {}
    with boundary(loc, "GetObject"):
        try:
            got = s3.get_object(Bucket=loc.root, Key=loc.key, **extra)
        except Exception as e:
            if missing(e):
                return None
            if tail and code_of(e) == "InvalidRange":
                return b""  # an empty object has no last bytes
            raise
        body: bytes = got["Body"].read()
    if tail and not got.get("ContentRange", "bytes 0-").startswith("bytes 0-"):
        body = body.partition(b"\n")[2]  # started mid-line: drop the fragment
    return body


def read_head(loc: Location, n: int, s3: Any = None) -> tuple[bytes, bool] | None:
    """The object's first `n` bytes (one ranged GET) and whether they are all of it, or None
    when there is no such key."""
    s3 = s3 or client()
    with boundary(loc, "GetObject"):
        try:
            got = s3.get_object(Bucket=loc.root, Key=loc.key, Range=f"bytes=0-{n - 1}")
        except Exception as e:
            if missing(e):
                return None
            if code_of(e) == "InvalidRange":
                return b"", True  # an empty object has no first bytes
            raise
        body: bytes = got["Body"].read()
    total = got.get("ContentRange", "").rpartition("/")[2]
    return body, (int(total) <= n) if total.isdigit() else len(body) < n


class _Stream:
    """An object's body whose reads raise Refused / Unavailable, like every call here."""

    def __init__(self, body: Any, loc: Location) -> None:
        self._body, self._loc = body, loc

    def read(self, size: int = -1) -> bytes:
        with boundary(self._loc, "GetObject"):
            data: bytes = self._body.read(size if size >= 0 else None)
            return data

    def close(self) -> None:
        self._body.close()


def stream(loc: Location, s3: Any = None) -> Any:
    """The object's body to read as a stream (read, close), or None when there is no such
    key."""
    with boundary(loc, "GetObject"):
        try:
            return _Stream((s3 or client()).get_object(Bucket=loc.root, Key=loc.key)["Body"], loc)
        except Exception as e:
            if missing(e):
                return None
            raise


def read_json(loc: Location, s3: Any = None) -> Any | None:
    """The object's JSON, or None when it is missing or not JSON (a half-written file);
    a denied or failed read raises Refused / Unavailable."""
    body = read_bytes(loc, s3)
    if body is None:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def read_tail(loc: Location, max_bytes: int, s3: Any = None) -> str | None:
    """The object's last `max_bytes` as text from a line start, or None when it is missing."""
    body = read_bytes(loc, s3, tail=max_bytes)
    return None if body is None else body.decode("utf-8", errors="replace")


def write_bytes(loc: Location, body: bytes, s3: Any = None) -> None:
    with boundary(loc, "PutObject"):
        (s3 or client()).put_object(Bucket=loc.root, Key=loc.key, Body=body)


def write_json(loc: Location, data: Any, s3: Any = None) -> None:
    write_bytes(loc, json.dumps(data, default=str).encode(), s3)


def safe_extract(archive: Path, dest: Path) -> Path:
    """Extract a (gzip) tarball; refuse absolute paths, '..', links out of dest, devices."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:*") as tar:
        tar.extractall(dest, filter="data")
    return dest
