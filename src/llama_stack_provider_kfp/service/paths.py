"""Which locations a request may name while the server's auth is on: models, checkpoint_dir,
dataset files and evaluation task files only under configured roots (`allowed_path_roots`;
default: `model_dirs` and the Hugging Face cache), and inside the work dir only the folders of
jobs the access policy lets the caller read. The same for the provider's own S3 job prefixes
(`s3://<s3_bucket>/<s3_prefix>/jobs/<job>/`: another user's checkpoint is not a model to start
from) and for PersistentVolumeClaims (`allowed_claims`). Anything else is a 403 that names the
setting, before anything is read.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from ..boundary import data_uri
from ..core.errors import Forbidden
from ..core.locations import Location, parse

HOW = (
    "local paths a user may name while auth is on are under allowed_path_roots (default: "
    "model_dirs and the Hugging Face cache) or in the folder of a job they may read"
)

HOW_S3 = "in the provider's S3 job prefix a user may name only the folders of jobs they may read"


class PathRoots:
    def __init__(
        self,
        roots: list[Path],
        work_dir: Path,
        may_read_job: Callable[[str], bool],
        s3_jobs: Location | None = None,
        claims: list[str] | None = None,
    ):
        self.roots = [r.expanduser().resolve() for r in roots]
        self.jobs = (work_dir / "jobs").expanduser().resolve()
        self.may_read_job = may_read_job
        self.s3_jobs = s3_jobs  # s3://<s3_bucket>/<s3_prefix>/jobs (remote mode's job folders)
        self.claims = set(claims or [])

    def check(self, location: str | None, what: str) -> None:
        """Forbidden unless `location` is not local, or local under a root this user may
        read. Symlinks are resolved first: a link out of a root leads out of it."""
        if not location:
            return
        loc = parse(location)
        if loc.is_local:
            self._check_path(Path(loc.path), location, what)
        elif loc.scheme == "s3":
            self._check_s3(loc, location, what)
        elif loc.scheme == "pvc" and loc.root not in self.claims:
            raise Forbidden(
                f"{what} {location}: claim {loc.root!r} is not one you may name; with auth on, "
                "requests name only the claims in allowed_claims"
            )

    def _check_s3(self, loc: Location, location: str, what: str) -> None:
        """Under the provider's own job prefix, only the jobs this user may read."""
        jobs = self.s3_jobs
        if jobs is None or loc.root != jobs.root:
            return
        base = f"{jobs.key}/" if jobs.key else ""
        key = loc.key.rstrip("/")
        # Some S3-compatible stores resolve dot segments: "mine/../theirs" is not "mine".
        dots = {".", ".."} & set(key.split("/"))
        if not (key + "/").startswith(base) and not dots:
            return
        job = key[len(base) :].split("/", 1)[0] if not dots else ""
        if job and self.may_read_job(job):
            return
        raise Forbidden(f"{what} {location} is not a location you may use: {HOW_S3}")

    def check_dataset(self, uri: str, what: str) -> None:
        """The files a dataset URI reads: local ones (a path, file://, huggingface://
        data_files), the provider's S3 job folders, claims."""
        for path in data_uri.local_paths(uri):
            self._check_path(path, uri, what)
        if uri.startswith(("s3://", "pvc://")):
            self.check(uri, what)

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
        """A model named by a location (not a descriptor or repo id)."""
        if (
            model.startswith(("/", "./", "../", "~", "file:", "s3://", "pvc://"))
            or Path(model).exists()
        ):
            self.check(model, "model")
