"""Where a step's inputs come from and its outputs go: a local path or an s3:// URI.

Locally (kfp.local) everything is a path and nothing is copied. In a pod, inputs are
downloaded to scratch space and outputs are written locally, then uploaded: checkpoints after
each epoch (metrics.json last, so a listed checkpoint is complete), progress at most every few
seconds.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from .. import storage


def fetch_data(uri: str, workdir: Path) -> str:
    """A dataset URI readable by data_uri.iter_rows: s3 objects are downloaded first."""
    if not storage.is_s3(uri):
        return uri
    _, key = storage.split(uri)
    return str(storage.download_file(uri, workdir / Path(key).name))


PVC_MOUNT_ROOT = "/mnt/models"
HUB_FILES = ["*.json", "*.safetensors", "original/tokenizer.model", "tokenizer.model"]


def pvc_mount(uri: str) -> tuple[str, str]:
    """(claim, mount path) for a pvc://<claim>/<path> URI."""
    claim = uri.removeprefix("pvc://").split("/", 1)[0]
    return claim, f"{PVC_MOUNT_ROOT}/{claim}"


def fetch_model(uri: str, workdir: Path) -> Path:
    """A local model directory: as is, the mounted PVC path, downloaded from the Hugging Face
    Hub (HF_TOKEN from the environment), or downloaded from an s3 tarball or prefix."""
    if uri.startswith("pvc://"):
        claim, mount = pvc_mount(uri)
        return Path(mount) / uri.removeprefix(f"pvc://{claim}").strip("/")
    if uri.startswith("hf://"):
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(uri.removeprefix("hf://"), allow_patterns=HUB_FILES))
    if not storage.is_s3(uri):
        return Path(uri)
    if uri.endswith((".tar.gz", ".tgz", ".tar")):
        archive = storage.download_file(uri, workdir / "model.tar.gz")
        model = storage.safe_extract(archive, workdir / "model")
        archive.unlink()
        return model
    return storage.download_prefix(uri, workdir / "model")


class Output:
    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.remote = storage.is_s3(uri)
        self.local = Path(tempfile.mkdtemp(prefix="job-output-")) if self.remote else Path(uri)
        self.local.mkdir(parents=True, exist_ok=True)
        self._last_push: dict[str, float] = {}
        self._s3 = storage.client() if self.remote else None

    def push(self, rel: str, min_interval: float = 0.0) -> None:
        if not self.remote:
            return
        now = time.monotonic()
        if now - self._last_push.get(rel, -1e9) < min_interval:
            return
        self._last_push[rel] = now
        src = self.local / rel
        dest = storage.join(self.uri, rel)
        if src.is_dir():
            marker = src / "metrics.json"
            for p in sorted(src.rglob("*")):
                if p.is_file() and p != marker:
                    storage.upload_file(
                        p, storage.join(dest, p.relative_to(src).as_posix()), self._s3
                    )
            if marker.is_file():
                storage.upload_file(marker, storage.join(dest, "metrics.json"), self._s3)
        elif src.is_file():
            storage.upload_file(src, dest, self._s3)
