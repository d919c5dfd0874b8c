"""The job's side of S3 for the kfp backend: model weights the cluster can reach, datasets
staged to the job's prefix, and the job's outputs read back from it.

Every job has `s3://<s3_bucket>/<s3_prefix>/jobs/<job_uuid>/` with `input/` (what was staged
from this machine) and `output/` (what the steps write; KFP's API gives no artifact URIs).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from ...boundary import data_uri, storage
from ...boundary.job_outputs import JobOutputs
from ...boundary.model_source import ModelError, hub_model, inspect_s3_model, pvc_model
from ...config import RemoteConfig
from ...core.locations import Location, parse
from ...core.resume import TrainingState, load_state
from ...core.spec import ModelSpec
from ...jobs.backend import DatasetSource, JobInputs, StagedInputs
from ...jobs.record import JobRecord


class Staging:
    def __init__(self, cfg: RemoteConfig) -> None:
        if not cfg.s3_bucket:
            raise ValueError("mode: remote needs remote.s3_bucket (where jobs stage data)")
        self.cfg = cfg
        self.root = Location("s3", cfg.s3_bucket, cfg.s3_prefix.strip("/"))
        self._lock = threading.Lock()
        self._s3: Any = None

    @property
    def s3(self) -> Any:
        """The server's own S3 client, on the configured endpoint (not set process-wide). Made
        once, under a lock: boto3 clients are thread-safe, creating them is not."""
        with self._lock:
            if self._s3 is None:
                ca = str(self.cfg.s3_ca_bundle) if self.cfg.s3_ca_bundle else None
                self._s3 = storage.client(self.cfg.s3_endpoint_url, ca_bundle=ca,
                                          timeout=self.cfg.request_timeout_seconds)  # fmt: skip
            return self._s3

    def job_prefix(self, job_uuid: str) -> Location:
        return self.root.join("jobs", job_uuid)

    def resolve_model(
        self, name: str, checkpoint_dir: str | None, descriptor_repo: str | None
    ) -> ModelSpec:
        where = checkpoint_dir or name
        loc = parse(where)
        if loc.scheme == "s3":
            return inspect_s3_model(name, loc, self.s3)
        if loc.scheme == "pvc":
            return pvc_model(name, loc)
        if loc.scheme == "hf":
            return hub_model(name, loc.root)
        if where.startswith(("/", ".", "~")):
            raise ModelError(
                f"in remote mode the weights must be reachable from the cluster: upload "
                f"them with scripts/upload-model.py and pass checkpoint_dir='s3://...', "
                f"or use pvc://<claim>/<path> (got {where!r})"
            )
        # A llama-stack descriptor maps to its Hub repo; anything else is taken as a repo id.
        return hub_model(name, (descriptor_repo if where == name else None) or where)

    def training_state(self, where: str) -> TrainingState | None:
        """A checkpoint of this provider in S3 (the only place remote steps write them)."""
        loc = parse(where)
        if loc.scheme != "s3" or loc.key.endswith((".tar.gz", ".tgz")):
            return None
        # None for a missing object; S3 denying or failing the read raises (502 / 503).
        return load_state(lambda name: storage.read_json(loc.join(name), self.s3), where)

    def stage(self, job_uuid: str, job_dir: Path, inputs: JobInputs) -> StagedInputs:
        prefix = self.job_prefix(job_uuid)
        validation = inputs.validation
        return StagedInputs(
            train_uri=self._dataset(inputs.train, job_dir, prefix, "train.jsonl"),
            validation_uri=(
                self._dataset(validation, job_dir, prefix, "validation.jsonl")
                if validation is not None
                else None
            ),
            output_uri=str(prefix.join("output")),
        )

    def _dataset(self, source: DatasetSource, job_dir: Path, prefix: Location, name: str) -> str:
        """Inline rows and data: URIs (too big for a pipeline parameter) become a JSONL file;
        files on this machine are uploaded to the job's prefix; the rest the pod reads."""
        if isinstance(source, list):
            source = str(data_uri.write_jsonl(source, job_dir / "input" / name))
        elif source.startswith("data:"):
            path = job_dir / "input" / name
            source = str(data_uri.write_jsonl(data_uri.iter_rows(source), path))
        local = data_uri.local_file(source)
        if local is None:
            return source  # s3://, or a hub dataset the pod reads itself
        key = Path(name).stem + local.suffix  # keep the suffix: it says how to parse the file
        target = prefix.join("input", key)
        storage.upload_file(local, target, self.s3)  # Refused / Unavailable name the key
        return str(target)

    def outputs(self, record: JobRecord) -> JobOutputs:
        return JobOutputs(parse(record.spec.output_uri), self.s3)
