"""Stand-in for cluster object storage: moto's S3-compatible server on loopback.

Real boto3 talks HTTP to it exactly as to MinIO/ODF/Ceph; only the server is a stand-in.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def s3_server(export: bool = True) -> Iterator[dict[str, str]]:
    """A moto S3 on a free loopback port and the AWS_* variables that reach it; `export`
    also sets them in this process (until the block ends)."""
    from moto.server import ThreadedMotoServer

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "test-access-key",
        "AWS_SECRET_ACCESS_KEY": "test-secret-key-do-not-log",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    saved = {k: os.environ.get(k) for k in env}
    if export:
        os.environ.update(env)
    try:
        yield env
    finally:
        server.stop()
        for k, v in saved.items() if export else ():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def iam_user(endpoint: str, name: str, statements: list[dict] | None = None) -> dict[str, str]:
    """An IAM user of the moto server with these policy statements (none: no rights at all),
    as the AWS_* variables of its access key. Create it before `iam_enforced`."""
    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
    iam.create_user(UserName=name)
    if statements:
        user_policy(endpoint, name, statements)
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return {
        "AWS_ACCESS_KEY_ID": key["AccessKeyId"],
        "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"],
    }


def user_policy(endpoint: str, user: str, statements: list[dict], name: str = "p") -> None:
    """Set the user's inline policy `name` (moto reads it on every request)."""
    import json

    import boto3

    iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1")
    document = json.dumps({"Version": "2012-10-17", "Statement": statements})
    iam.put_user_policy(UserName=user, PolicyName=name, PolicyDocument=document)


@contextmanager
def iam_enforced(endpoint: str) -> Iterator[None]:
    """moto checks every request against IAM (it does not by default) until the block ends.
    The setting is the moto process's: here, this test process."""
    import urllib.request

    def reset(count: str) -> None:
        req = urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=count.encode(),
                                     headers={"Content-Type": "text/plain"})  # fmt: skip
        urllib.request.urlopen(req).close()

    reset("0")
    try:
        yield
    finally:
        reset("inf")


class RestartableS3:
    """moto on a fixed loopback port, stopped and started again on the same port by a test (an
    S3 endpoint that goes away and comes back). Its objects survive a restart: moto keeps them
    in this process, not in the server thread."""

    def __init__(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._server = None

    def start(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop()
            self._server = None
