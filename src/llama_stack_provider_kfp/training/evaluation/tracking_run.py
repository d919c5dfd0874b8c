"""The evaluation's metrics in the job's MLflow run, beside its training metrics.

The train step records its MLflow run in tracking.json (training.tracking). Logging a batch of
metrics to that run is one request, allowed after the run ended (MLflow refuses only deleted
runs), and needs nothing the step lacks: the tracking URI and credentials the train step used.
It is best effort, as tracking is for training: a failure is a note in the evaluation, never
the stage's failure. Only metrics are logged, no artifact (evaluation.json stays in the job's
output): an artifact upload would need the artifact store's credentials as well.
TensorBoard and W&B runs are not appended to.
"""

from __future__ import annotations

import os
import re
import time

from ...boundary.job_outputs import JobOutputs
from ...core.locations import parse
from ...core.spec import JobSpec
from ...core.stage_results import Evaluation

PREFIX = "evaluation/"


def metric_key(name: str) -> str:
    """An MLflow metric name: letters, digits, `_ - . / ` and spaces only."""
    return PREFIX + re.sub(r"[^A-Za-z0-9_\-./ ]", "_", name)


def log_to_tracking_run(spec: JobSpec, evaluations: list[Evaluation]) -> str | None:
    """Log each evaluated checkpoint's flat metrics (step: its epoch) to the job's MLflow run;
    a note saying why not when that failed, None otherwise (also when there is no run)."""
    if spec.tracking is None or spec.tracking.mlflow is None:
        return None
    info = JobOutputs(parse(spec.output_uri)).tracking() or {}
    run = info.get("mlflow") if isinstance(info, dict) else None
    if not isinstance(run, dict) or not run.get("run_id"):
        return None
    try:
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        from mlflow import MlflowClient
        from mlflow.entities import Metric

        client = MlflowClient(
            tracking_uri=run.get("tracking_uri") or spec.tracking.mlflow.tracking_uri
        )
        now = int(time.time() * 1000)
        metrics = [
            Metric(metric_key(k), v, now, e.epoch or 0)
            for e in evaluations
            for k, v in e.flat().items()
        ]
        for i in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics
            client.log_batch(run["run_id"], metrics=metrics[i : i + 1000])
    except Exception as e:
        note = f"tracking: evaluation metrics not logged to MLflow: {type(e).__name__}: {e}"
        print(f"evaluate: {note}", flush=True)
        return note[:500]
    print(f"evaluate: {len(metrics)} metrics logged to MLflow run {run['run_id']}", flush=True)
    return None
