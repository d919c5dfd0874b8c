"""S3-compatible object storage (AWS S3, MinIO, ODF, Ceph) through boto3.

Credentials come from the environment: on the server the way boto3 reads them
(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, or a profile); in a pipeline step from STEP_ENV's
provider-specific names (a Kubernetes Secret mounted as env vars), which KFP's launcher, running
in the same container and reading the standard AWS_* names, does not see. Never from a request,
a pipeline parameter or a job record. The endpoint is passed to `client()` by whoever owns the
setting (the kfp backend's config; STEP_ENV in a step's pod), never set process-wide.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from pathlib import Path
from typing import Any

from .errors import Refused, Unavailable
from .locations import Location

log = logging.getLogger(__name__)


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


def explain(e: BaseException, doing: str) -> Unavailable:
    """A boto3 failure as Refused (S3 answered no) or Unavailable (no answer), with the why."""
    from botocore.exceptions import ClientError, NoCredentialsError

    cause: BaseException | None = e
    while cause is not None and not isinstance(cause, ClientError | NoCredentialsError):
        cause = cause.__cause__ or cause.__context__  # boto3's transfers wrap the real error
    if cause is not None:
        e = cause
    if isinstance(e, NoCredentialsError):
        return Refused(
            f"no S3 credentials while {doing}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
            "in the server's environment"
        )
    if isinstance(e, ClientError):
        code = e.response.get("Error", {}).get("Code", "?")
        return Refused(f"S3 refused {doing} ({code}); check the bucket name and the credentials")
    return Unavailable(f"S3 could not be reached while {doing} ({type(e).__name__}: {e})")


def upload_file(path: Path, loc: Location, s3: Any = None) -> None:
    (s3 or client()).upload_file(str(path), loc.root, loc.key)  # multipart for large files


def download_file(loc: Location, path: Path, s3: Any = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (s3 or client()).download_file(loc.root, loc.key, str(path))
    return path


def list_keys(prefix: Location, s3: Any = None) -> list[str]:
    """Keys under `prefix`, relative to it."""
    s3 = s3 or client()
    base = prefix.key.rstrip("/") + "/" if prefix.key else ""
    keys: list[str] = []
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
    for i in range(0, len(keys), 1000):  # DeleteObjects takes at most 1000 keys
        batch = [{"Key": k} for k in keys[i : i + 1000]]
        s3.delete_objects(Bucket=prefix.root, Delete={"Objects": batch, "Quiet": True})


def exists(loc: Location, s3: Any = None) -> bool:
    from botocore.exceptions import ClientError

    try:
        (s3 or client()).head_object(Bucket=loc.root, Key=loc.key)
    except ClientError:
        return False
    return True


def read_json(loc: Location, s3: Any = None) -> Any | None:
    """The object's JSON, or None when it is missing or unreadable (access denied included:
    a status call should answer, and the warning is logged)."""
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = s3 or client()
    try:
        body = s3.get_object(Bucket=loc.root, Key=loc.key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    except (ClientError, BotoCoreError) as e:
        log.warning("cannot read %s: %s", loc, e)
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def read_tail(loc: Location, max_bytes: int, s3: Any = None) -> str | None:
    """The object's last `max_bytes` as text, or None when it is missing or unreadable."""
    from botocore.exceptions import BotoCoreError, ClientError

    s3 = s3 or client()
    try:
        got = s3.get_object(Bucket=loc.root, Key=loc.key, Range=f"bytes=-{max_bytes}")
        text = got["Body"].read().decode("utf-8", errors="replace")
    except s3.exceptions.NoSuchKey:
        return None
    except (ClientError, BotoCoreError) as e:
        log.warning("cannot read %s: %s", loc, e)
        return None
    if not got.get("ContentRange", "bytes 0-").startswith("bytes 0-"):
        text = text.partition("\n")[2]  # started mid-line: drop the fragment
    return text


def write_bytes(loc: Location, body: bytes, s3: Any = None) -> None:
    (s3 or client()).put_object(Bucket=loc.root, Key=loc.key, Body=body)


def write_json(loc: Location, data: Any, s3: Any = None) -> None:
    body = json.dumps(data, default=str).encode()
    (s3 or client()).put_object(Bucket=loc.root, Key=loc.key, Body=body)


def safe_extract(archive: Path, dest: Path) -> Path:
    """Extract a (gzip) tarball; refuse absolute paths, '..', links out of dest, devices."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:*") as tar:
        tar.extractall(dest, filter="data")
    return dest
