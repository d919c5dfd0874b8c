"""Uploaded files (`/v1/files`), stored durably under the work dir, never held in memory:
`<work_dir>/openai/files/<file-id>/` holds `content.jsonl` and `file.json` (versioned). A file
belongs to the owner of the key that uploaded it; anyone else is told there is no such file."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from pydantic import BaseModel

from ..boundary.files import read_json, write_json
from ..core.versioned import Unreadable, read_versioned
from ..jobs.record import Owner
from .errors import APIError, not_found

FILE_FORMAT = 1
CHUNK = 1 << 20
PURPOSES = ("fine-tune", "fine-tune-results")
# Fine-tuning files are JSONL (and the data readers go by the suffix).
CONTENT = "content.jsonl"


class StoredFile(BaseModel):
    format_version: int = FILE_FORMAT
    id: str
    bytes: int
    created_at: int
    filename: str
    purpose: str
    owner: Owner

    def api(self) -> dict:
        return {"id": self.id, "object": "file", "bytes": self.bytes,
                "created_at": self.created_at, "filename": self.filename,
                "purpose": self.purpose, "status": "processed", "expires_at": None,
                "status_details": None}  # fmt: skip


class FileStore:
    def __init__(self, work_dir: Path, max_bytes: int) -> None:
        self.root = work_dir.expanduser() / "openai" / "files"
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes

    def _dir(self, file_id: str) -> Path:
        if not file_id.startswith("file-") or not file_id[5:].isalnum():
            raise not_found("file", file_id)
        return self.root / file_id

    def add(self, source: BinaryIO, filename: str, purpose: str, owner: Owner) -> StoredFile:
        """Copy an upload to disk in chunks; 413 past max_bytes (nothing is kept)."""
        if purpose not in PURPOSES:
            raise APIError(400, f"purpose {purpose!r} is not stored by this server: upload "
                           "training and validation files with purpose 'fine-tune'",
                           param="purpose")  # fmt: skip
        file_id = f"file-{uuid.uuid4().hex[:24]}"
        scratch = Path(tempfile.mkdtemp(dir=self.root, prefix=".upload-"))
        try:
            size = 0
            with open(scratch / CONTENT, "wb") as out:
                while chunk := source.read(CHUNK):
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise APIError(413, f"the file is larger than this server's limit of "
                                       f"{self.max_bytes} bytes (openai.max_file_bytes)",
                                       param="file", code="file_too_large")  # fmt: skip
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            stored = StoredFile(id=file_id, bytes=size, created_at=int(time.time()),
                                filename=Path(filename or "upload.jsonl").name, purpose=purpose,
                                owner=owner)  # fmt: skip
            write_json(scratch / "file.json", stored.model_dump(mode="json"))
            os.replace(scratch, self.root / file_id)  # whole, or not there
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return stored

    def add_result(
        self, job_id: str, name: str, make: Callable[[], bytes], owner: Owner
    ) -> StoredFile:
        """A file the server writes for a job (its metrics CSV), once: same id every time."""
        file_id = "file-" + uuid.uuid5(uuid.NAMESPACE_URL, f"{job_id}/{name}").hex[:24]
        folder = self.root / file_id
        found = self._load(folder)
        if found is not None:
            return found
        body = make()  # only the first time: the file is kept
        scratch = Path(tempfile.mkdtemp(dir=self.root, prefix=".result-"))
        try:
            (scratch / CONTENT).write_bytes(body)
            stored = StoredFile(id=file_id, bytes=len(body), created_at=int(time.time()),
                                filename=name, purpose="fine-tune-results",
                                owner=owner)  # fmt: skip
            write_json(scratch / "file.json", stored.model_dump(mode="json"))
            with contextlib.suppress(OSError):  # written meanwhile by another request
                os.replace(scratch, folder)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return self._load(folder) or stored

    def _load(self, folder: Path) -> StoredFile | None:
        data = read_json(folder / "file.json")
        if data is None:
            return None
        try:
            return read_versioned(StoredFile, data, FILE_FORMAT)[0]
        except Unreadable:
            return None

    def get(self, file_id: str, owner: Owner) -> StoredFile:
        found = self._load(self._dir(file_id))
        if found is None or found.owner.principal != owner.principal:
            raise not_found("file", file_id)
        return found

    def path(self, file_id: str, owner: Owner) -> Path:
        self.get(file_id, owner)
        return self._dir(file_id) / CONTENT

    def list(self, owner: Owner) -> list[StoredFile]:
        found = [self._load(p) for p in self.root.iterdir() if not p.name.startswith(".")]
        mine = [f for f in found if f is not None and f.owner.principal == owner.principal]
        return sorted(mine, key=lambda f: (f.created_at, f.id))

    def delete(self, file_id: str, owner: Owner) -> None:
        self.get(file_id, owner)
        folder = self._dir(file_id)
        # Renamed away first: a reader sees the whole file or none.
        gone = folder.with_name(f".deleted-{file_id}")
        os.replace(folder, gone)
        shutil.rmtree(gone, ignore_errors=True)
