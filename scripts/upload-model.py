#!/usr/bin/env python3
"""Pack a model directory (Meta or Hugging Face layout) as a gzip tarball and upload it to S3.

    python scripts/upload-model.py ~/.llama/checkpoints/Llama3.2-1B-Instruct \\
        s3://models/llama3.2-1b-instruct.tar.gz --endpoint-url https://minio.example:9000

The archive holds the directory's files at its top level (no leading folder), with
config.json / params.json first so a reader can find the architecture without reading the
weights. Credentials come from the environment (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
or a profile); the endpoint from --endpoint-url or AWS_ENDPOINT_URL. Use the uploaded URI
as `checkpoint_dir` in a remote-mode request.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import tempfile
from pathlib import Path

from llama_stack_provider_kfp.boundary import storage
from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
from llama_stack_provider_kfp.core.locations import parse

FIRST = ("config.json", "params.json")


def pack(model_dir: Path, archive: Path) -> int:
    files = sorted(
        (p for p in model_dir.rglob("*") if p.is_file()),
        key=lambda p: (p.name not in FIRST, p.relative_to(model_dir).as_posix()),
    )
    with tarfile.open(archive, "w:gz") as tar:
        for p in files:
            tar.add(p, arcname=p.relative_to(model_dir).as_posix(), recursive=False)
    return len(files)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("model_dir", type=Path, help="model directory (Meta or HF layout)")
    ap.add_argument("destination", help="s3://bucket/key.tar.gz")
    ap.add_argument("--endpoint-url", help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")
    ap.add_argument("--region", help="region (default: AWS_DEFAULT_REGION or us-east-1)")
    args = ap.parse_args()

    if not args.destination.startswith("s3://") or not args.destination.endswith(
        (".tar.gz", ".tgz")
    ):
        ap.error("destination must be s3://bucket/<name>.tar.gz")
    spec = inspect_model_dir(str(args.model_dir), args.model_dir)  # refuse what cannot train
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "model.tar.gz"
        n = pack(args.model_dir, archive)
        s3 = storage.client(args.endpoint_url, args.region)
        storage.upload_file(archive, parse(args.destination), s3)
        size = archive.stat().st_size
    print(f"uploaded {n} files ({spec.layout} layout, {size / 2**20:.1f} MiB gzip) to "
          f"{args.destination}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
