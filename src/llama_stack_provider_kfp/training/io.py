"""A step's inputs and outputs wherever they live (see core.locations).

Locally (kfp.local) everything is a path and nothing is copied. In a pod, inputs are
downloaded to scratch space and outputs are written locally, then uploaded: checkpoints after
each epoch (metrics.json last, so a listed checkpoint is complete), progress at most every few
seconds. A failing step leaves `error.json` (core.outputs) for the server.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
import traceback
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..boundary import data_uri, storage
from ..boundary.job_outputs import write_error, write_output
from ..core.http_policy import HttpPolicy
from ..core.locations import Location, parse
from ..core.outputs import METRICS, StepError, stage_file
from ..core.stage_results import StageRecord

# Weights, configs and every tokenizer form: tokenizer.json / vocab + merges / sentencepiece /
# tiktoken, and chat templates saved beside them (chat_template.jinja).
HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "original/tokenizer.model"]


def fetch_data(uri: str, workdir: Path, http: HttpPolicy | None = None) -> str:
    """A dataset URI readable by data_uri.iter_rows without the network: s3 and http(s)
    objects downloaded into `workdir` first, a pvc:// file at the claim's mount path; the
    rest (path, file://, data:, hf://, huggingface://) as it is."""
    return data_uri.fetch(uri, workdir, http)


def fetch_model(uri: str, workdir: Path) -> Path:
    """A local model directory: as is, the mounted PVC path, downloaded from the Hugging Face
    Hub (HF_TOKEN from the environment), or downloaded from an s3 tarball or prefix."""
    loc = parse(uri)
    if loc.scheme in ("file", "pvc"):
        return loc.path
    if loc.scheme == "hf":
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(loc.root, allow_patterns=HUB_FILES))
    if loc.key.endswith((".tar.gz", ".tgz", ".tar")):
        archive = storage.download_file(loc, workdir / "model.tar.gz")
        model = storage.safe_extract(archive, workdir / "model")
        archive.unlink()
        return model
    return storage.download_prefix(loc, workdir / "model")


class Output:
    """The job's output location, written through a local directory."""

    def __init__(self, uri: str) -> None:
        self.location = parse(uri)
        self.uploads = not self.location.is_local
        self.local = (
            Path(tempfile.mkdtemp(prefix="job-output-")) if self.uploads else self.location.path
        )
        self.local.mkdir(parents=True, exist_ok=True)
        self._last_push: dict[str, float] = {}
        self._s3: Any = storage.client() if self.uploads else None

    @property
    def s3(self) -> Any:
        """The S3 client of a remote output location (None when local)."""
        return self._s3

    def push(self, rel: str, min_interval: float = 0.0) -> None:
        if not self.uploads:
            return
        now = time.monotonic()
        if now - self._last_push.get(rel, -1e9) < min_interval:
            return
        self._last_push[rel] = now
        src = self.local / rel
        dest = self.location.join(rel)
        if src.is_dir():
            marker = src / METRICS
            for p in sorted(src.rglob("*")):
                if p.is_file() and p != marker:
                    self._upload(p, dest.join(p.relative_to(src).as_posix()))
            if marker.is_file():
                self._upload(marker, dest.join(METRICS))
            # Uploaded: free the scratch space (an epoch of an 8B model is ~16 GB).
            shutil.rmtree(src, ignore_errors=True)
        elif src.is_file():
            self._upload(src, dest)

    def _upload(self, path: Path, dest: Location) -> None:
        """One file, tried again for a while when S3 cannot be reached (storage.retrying);
        objects uploaded before stay as they are."""
        storage.retrying(
            lambda: storage.upload_file(path, dest, self._s3), self._s3, f"uploading {dest}"
        )

    def remove(self, rel: str) -> None:
        """Delete a folder of the output, here and at the output location."""
        shutil.rmtree(self.local / rel, ignore_errors=True)
        if self.uploads:
            storage.delete_prefix(self.location.join(rel), self._s3)

    def exists(self, rel: str) -> bool:
        """Is this file at the output location (written there by someone else: the server)?"""
        if not self.uploads:
            return (self.local / rel).exists()
        return storage.exists(self.location.join(rel), self._s3)

    def fetch(self, uri: str, workdir: Path) -> Path:
        """A checkpoint folder (local path or s3:// prefix) as a local directory."""
        loc = parse(uri)
        if loc.is_local:
            return loc.path
        return storage.download_prefix(loc, workdir / Path(loc.key).name, self._s3)


@contextlib.contextmanager
def report_errors(output_uri: str, step: str) -> Iterator[None]:
    """Record why the step failed where the server reads it, then fail the step."""
    try:
        yield
    except BaseException as e:
        if not isinstance(e, KeyboardInterrupt | SystemExit):
            error = StepError(
                step=step,
                message=f"{type(e).__name__}: {e}",
                traceback=traceback.format_exc()[-4000:],
            )
            where = parse(output_uri)
            s3 = None if where.is_local else storage.client()
            try:  # S3 may be what failed: its outage must not hide the step's own error
                storage.retrying(lambda: write_error(where, error, s3), s3, "writing error.json")
            except Exception as lost:
                print(f"{error.message}\n(error.json could not be written: {lost})")
        raise


@contextlib.contextmanager
def recorded_stage(output_uri: str, stage: str) -> Iterator[None]:
    """The stage's record (stages/<stage>.json) while it runs and once it ended, and its
    error where the server reads it when it fails."""
    loc = parse(output_uri)
    s3 = storage.client() if not loc.is_local else None
    record = StageRecord(name=stage, status="running", started_at=datetime.now(UTC))
    write_output(loc, stage_file(stage), record, s3)
    try:
        with report_errors(output_uri, stage):
            yield
    except BaseException as e:
        failed = record.model_copy(update={
            "status": "failed", "finished_at": datetime.now(UTC),
            "error": f"{type(e).__name__}: {e}"[:1000],
        })  # fmt: skip
        write_output(loc, stage_file(stage), failed, s3)
        raise
    done = record.model_copy(update={"status": "completed", "finished_at": datetime.now(UTC)})
    write_output(loc, stage_file(stage), done, s3)
