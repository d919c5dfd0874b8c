"""Where weights, data and outputs live: one type, parsed here and nowhere else.

    /abs/path or ./rel      a directory or file on the machine that reads it   (file)
    s3://bucket/key         S3-compatible object storage                        (s3)
    pvc://claim/path        a PersistentVolumeClaim, mounted into the step      (pvc)
    hf://org/repo           a Hugging Face Hub repo, downloaded by the step     (hf)

Dataset URIs (`huggingface://`, `data:`, `file://`) follow llama-stack's registration format
and are read by `data_uri`; an `s3://` dataset staged by the kfp backend is a Location.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlparse

from .errors import InvalidRequest

Scheme = Literal["file", "s3", "pvc", "hf"]
PVC_MOUNT_ROOT = "/mnt/models"
_CLAIM = re.compile(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?")
# org/name, or a legacy canonical id without an organisation (gpt2, distilgpt2).
_HF_REPO = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass(frozen=True)
class Location:
    scheme: Scheme
    # file: the path; s3: the bucket; pvc: the claim; hf: the repo id.
    root: str
    # s3: the key (no leading '/'); pvc: the path inside the volume; otherwise "".
    key: str = ""

    def __str__(self) -> str:
        if self.scheme == "file":
            return self.root
        return f"{self.scheme}://{self.root}/{self.key}".rstrip("/")

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def path(self) -> Path:
        """The local path (file), or where the step sees a PVC once mounted."""
        if self.scheme == "file":
            return Path(self.root)
        if self.scheme == "pvc":
            return Path(self.mount_path) / self.key
        raise ValueError(f"{self} is not on a local or mounted file system")

    @property
    def mount_path(self) -> str:
        return f"{PVC_MOUNT_ROOT}/{self.root}"

    def join(self, *parts: str) -> Location:
        tail = "/".join(p.strip("/") for p in parts if p.strip("/"))
        if self.scheme == "file":
            return Location("file", str(Path(self.root, *tail.split("/"))) if tail else self.root)
        key = "/".join(x for x in (self.key.rstrip("/"), tail) if x)
        return Location(self.scheme, self.root, key)


def parse(uri: str | Path) -> Location:
    """Parse a location; a malformed one is an InvalidRequest that says what is expected."""
    text = str(uri)
    if "://" not in text:
        return Location("file", text)
    parsed = urlparse(text)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise InvalidRequest(f"{text!r} is not an s3://<bucket>/<key> location")
        return Location("s3", parsed.netloc, parsed.path.lstrip("/"))
    if parsed.scheme == "pvc":
        claim, _, rest = text.removeprefix("pvc://").partition("/")
        if not _CLAIM.fullmatch(claim) or ".." in rest.split("/"):
            raise InvalidRequest(f"{text!r} is not pvc://<claim name>/<path inside the volume>")
        return Location("pvc", claim, rest.strip("/"))
    if parsed.scheme == "hf":
        repo = text.removeprefix("hf://").strip("/")
        if not is_hf_repo_id(repo):
            raise InvalidRequest(
                f"{text!r} is not hf://<organisation>/<repository> (or hf://<canonical id>)"
            )
        return Location("hf", repo)
    if parsed.scheme == "file":
        return Location("file", parsed.path)
    raise InvalidRequest(
        f"{text!r}: unsupported location scheme {parsed.scheme!r}; use a path, s3://, pvc:// "
        "or hf://"
    )


def is_hf_repo_id(name: str) -> bool:
    return bool(_HF_REPO.match(name))


def check_http_url(uri: str, where: str) -> None:
    """An http(s) URL with a host and a valid port; a 400 naming the setting otherwise."""
    parsed = urlparse(uri)
    try:
        port_ok = parsed.port is None or parsed.port > 0
    except ValueError:
        port_ok = False
    if not parsed.hostname or not port_ok:
        raise InvalidRequest(
            f"{where} {uri!r} is not a URL: use http(s)://<host>[:<port>][/<path>]"
        )
