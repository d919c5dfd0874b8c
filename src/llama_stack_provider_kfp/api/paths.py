"""Which local paths a request may name while the server's auth is on: models, checkpoint_dir,
dataset files and evaluation task files only under configured roots (`allowed_path_roots`;
default: `model_dirs` and the Hugging Face cache), and inside the work dir only the folders of
jobs the access policy lets the caller read. Anything else is a 403 that names the setting,
before anything is read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..core import data_uri
from ..core.errors import Forbidden
from ..core.locations import parse

HOW = (
    "local paths a user may name while auth is on are under allowed_path_roots (default: "
    "model_dirs and the Hugging Face cache) or in the folder of a job they may read"
)


class PathRoots:
    def __init__(self, roots: list[Path], work_dir: Path, may_read_job: Callable[[str], bool]):
        self.roots = [r.expanduser().resolve() for r in roots]
        self.jobs = (work_dir / "jobs").expanduser().resolve()
        self.may_read_job = may_read_job

    def check(self, location: str | None, what: str) -> None:
        """Forbidden unless `location` is not local, or local under a root this user may
        read. Symlinks are resolved first: a link out of a root leads out of it."""
        if not location:
            return
        loc = parse(location)
        if loc.is_local:
            self._check_path(Path(loc.path), location, what)

    def check_dataset(self, uri: str, what: str) -> None:
        """The local files a dataset URI reads (a path, file://, huggingface:// data_files)."""
        for path in data_uri.local_paths(uri):
            self._check_path(path, uri, what)

    def _check_path(self, given: Path, location: str, what: str) -> None:
        path = given.expanduser().resolve()
        if path.is_relative_to(self.jobs):  # the work dir: only jobs this user may read
            job = path.relative_to(self.jobs).parts[:1]
            if job and self.may_read_job(job[0]):
                return
        elif any(path.is_relative_to(r) for r in self.roots):
            return
        raise Forbidden(f"{what} {location} is not a path you may use: {HOW}")

    def check_model(self, model: str) -> None:
        """A model named by a path (not a descriptor or repo id)."""
        if model.startswith(("/", "./", "../", "~", "file:")) or Path(model).exists():
            self.check(model, "model")
