"""Entry points of the pipeline's two steps, called from the component bodies."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..core.files import write_json
from ..core.locations import parse
from ..core.model_source import inspect_model_dir
from ..core.outputs import PROGRESS, RESULT, versioned
from ..core.spec import JobSpec
from .engine import get_engine
from .io import Output, fetch_model, report_errors
from .prepare import prepare
from .step_log import ship_log
from .tracking import tracking


def prepare_data_step(job_spec: str, train_path: str, validation_path: str) -> dict[str, int]:
    """The prepare-data component: the job's data locations come from its spec."""
    spec = JobSpec.model_validate_json(job_spec)
    with ship_log(spec.output_uri, "prepare-data"):
        return prepare(spec, train_path, validation_path)


def train_job_step(job_spec: str, train_path: str, val_path: str) -> dict[str, Any]:
    """The train component: the weights and the output location come from the job's spec."""
    spec = JobSpec.model_validate_json(job_spec)
    return train_step(job_spec, spec.model.path, spec.output_uri, train_path, val_path)


def train_step(
    job_spec: str, model_uri: str, output_uri: str, train_path: str, val_path: str
) -> dict[str, Any]:
    with ship_log(output_uri, "train"):
        return _train(job_spec, model_uri, output_uri, train_path, val_path)


def _train(
    job_spec: str, model_uri: str, output_uri: str, train_path: str, val_path: str
) -> dict[str, Any]:
    spec = JobSpec.model_validate_json(job_spec)
    has_val = Path(val_path).is_file() and Path(val_path).stat().st_size > 0
    val = val_path if has_val else None
    with report_errors(output_uri, "train"), tempfile.TemporaryDirectory(prefix="model-") as tmp:
        if spec.train.nodes > 1 and parse(model_uri).scheme == "s3":
            # The nodes download the weights themselves; nothing to fetch here.
            from .trainjob import run_on_nodes

            return run_on_nodes(spec, model_uri, output_uri, train_path, val)
        model_dir = fetch_model(model_uri, Path(tmp))
        if model_dir != Path(model_uri):  # downloaded or mounted: learn its files now
            found = inspect_model_dir(spec.model.name, model_dir)
            spec = spec.model_copy(
                update={
                    "model": found.model_copy(update={"path": model_uri}),
                    "output_format": spec.output_format or found.layout,
                }
            )
        if spec.lora is not None and spec.lora.apply_to_output and spec.model.is_tied:
            raise ValueError(
                f"{spec.model.name} ties its output projection to the embeddings; "
                "set apply_lora_to_output=false"
            )
        if spec.train.nodes > 1:  # a TrainJob; the weights go to S3 for the nodes
            from .trainjob import run_on_nodes

            return run_on_nodes(spec, model_dir, output_uri, train_path, val)
        if spec.train.ranks > 1:  # torchrun: every rank runs train() below, rank 0 writes
            from .distributed import launch

            return launch(spec.train.ranks, {
                "spec": spec.model_dump_json(), "model_dir": str(model_dir),
                "output_uri": output_uri, "train_path": train_path, "val_path": val,
            })  # fmt: skip
        return train(spec, model_dir, Output(output_uri), train_path, val, main=True)


def train(
    spec: JobSpec,
    model_dir: Path,
    output: Output,
    train_path: str,
    val_path: str | None,
    main: bool,
) -> dict[str, Any]:
    """Train with the job's engine; the main rank tracks it and writes the result."""
    with tracking(spec, output) as tracker:
        result = get_engine(spec.engine.name).train(spec, model_dir, output, train_path, val_path)
        tracker.finish(result, ok=True)
    if main:
        write_json(output.local / RESULT, versioned(result))
        output.push(PROGRESS)
        output.push(RESULT)
    return result
