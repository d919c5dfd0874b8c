"""One node of a TrainJob (several nodes per job): fetch the staged inputs, run this node's ranks.

Kubeflow Trainer starts this on every node with the job file's S3 location. The nodes cannot
see the train step's files, so the step staged the prepared rows (and the weights, unless
they were in S3 already) under the job's prefix; each node downloads them to its own scratch
space. torchrun takes the node count, this node's rank and the master's address and port from
the PET_* variables of Trainer's torch runtime; rank 0 (on node 0) writes progress,
checkpoints and the result to the job's output prefix, exactly as a one-node step does.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from ..boundary import storage
from ..core.locations import parse
from ..core.spec import JobSpec
from .context import NodeJob, RankJob
from .distributed import launch
from .io import fetch_model, report_errors


def run(job_uri: str, procs_per_node: int) -> None:
    data = storage.read_json(parse(job_uri))
    if not isinstance(data, dict):
        raise SystemExit(f"node: cannot read the job file {job_uri}")
    job = NodeJob.model_validate(data)
    spec = JobSpec.model_validate_json(job.spec)
    with report_errors(spec.output_uri, "train"), tempfile.TemporaryDirectory(prefix="node-") as d:
        tmp = Path(d)
        model_dir = fetch_model(job.model_uri, tmp)
        train_path = storage.download_file(parse(job.train_uri), tmp / "train.jsonl")
        val_path = None
        if job.val_uri:
            val_path = str(storage.download_file(parse(job.val_uri), tmp / "validation.jsonl"))
        launch(procs_per_node, RankJob(
            spec=job.spec, model_dir=str(model_dir), output_uri=spec.output_uri,
            train_path=str(train_path), val_path=val_path,
        ), nodes=spec.train.nodes)  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="node_main", description=__doc__)
    parser.add_argument("--nproc-per-node", type=int, default=1)
    parser.add_argument("job_uri", help="s3:// location of the job file the train step staged")
    args = parser.parse_args(argv)
    run(args.job_uri, args.nproc_per_node)


if __name__ == "__main__":
    main()
