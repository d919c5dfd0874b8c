"""S3-compatible object storage (AWS S3, MinIO, ODF, Ceph) through boto3.

Credentials come from the environment the way boto3 reads them (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY, or a profile; in a pod, a Kubernetes Secret mounted as env vars):
never from a request, a pipeline parameter or a job record. The endpoint comes from the
provider config or AWS_ENDPOINT_URL.
"""

from __future__ import annotations

import json
import logging
import os
import tarfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse


def is_s3(uri: str | None) -> bool:
    return bool(uri) and uri.startswith("s3://")


def split(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc:
        raise ValueError(f"{uri!r} is not an s3://bucket/key URI")
    return parsed.netloc, parsed.path.lstrip("/")


def join(prefix: str, *parts: str) -> str:
    return "/".join([prefix.rstrip("/"), *(p.strip("/") for p in parts)])


def client(endpoint_url: str | None = None, region: str | None = None):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url or os.environ.get("AWS_ENDPOINT_URL") or None,
        region_name=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    )


def upload_file(path: Path, uri: str, s3=None) -> None:
    bucket, key = split(uri)
    (s3 or client()).upload_file(str(path), bucket, key)  # multipart for large files


def download_file(uri: str, path: Path, s3=None) -> Path:
    bucket, key = split(uri)
    path.parent.mkdir(parents=True, exist_ok=True)
    (s3 or client()).download_file(bucket, key, str(path))
    return path


def list_keys(prefix_uri: str, s3=None) -> list[str]:
    bucket, prefix = split(prefix_uri)
    s3 = s3 or client()
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def download_prefix(prefix_uri: str, dest: Path, s3=None) -> Path:
    bucket, prefix = split(prefix_uri)
    prefix = prefix.rstrip("/") + "/"
    s3 = s3 or client()
    for key in list_keys(f"s3://{bucket}/{prefix}", s3):
        if key.endswith("/"):
            continue  # a "folder" marker object
        rel = Path(key[len(prefix) :])
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"refusing object key {key!r}: it leaves the target folder")
        download_file(f"s3://{bucket}/{key}", dest / rel, s3)
    return dest


def read_json(uri: str, s3=None) -> Any | None:
    """The object's JSON, or None when it is missing or unreadable (access denied included:
    a status call should answer, and the warning is logged)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split(uri)
    s3 = s3 or client()
    try:
        body = s3.get_object(Bucket=bucket, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None
    except (ClientError, BotoCoreError) as e:
        logging.getLogger(__name__).warning("cannot read %s: %s", uri, e)
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def write_json(uri: str, data: Any, s3=None) -> None:
    bucket, key = split(uri)
    (s3 or client()).put_object(Bucket=bucket, Key=key, Body=json.dumps(data, default=str).encode())


def safe_extract(archive: Path, dest: Path) -> Path:
    """Extract a (gzip) tarball; refuse absolute paths, '..', links out of dest, devices."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:*") as tar:
        tar.extractall(dest, filter="data")
    return dest
