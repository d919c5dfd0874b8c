"""Bodies of the pipeline's components.

KFP ships only a component function's source, so every import happens inside the body and
the real work lives in `llama_stack_provider_kfp.training.steps`: locally the same interpreter
imports it, remotely the image carries this package. These imports run in the step's
process, never in the server's (the import contracts allow exactly these two).
"""

from kfp.dsl import Artifact, Dataset, Input, Metrics, Model, Output


def prepare_data(
    job_spec: str,
    train_data: Output[Dataset],
    validation_data: Output[Dataset],
) -> None:
    """Validate every row, convert to chat messages (JSONL), split off validation rows."""
    from llama_stack_provider_kfp.training.steps import prepare_data_step, skip_teardown_on_success

    succeeded = skip_teardown_on_success()
    stats = prepare_data_step(job_spec, train_data.path, validation_data.path)
    train_data.metadata["rows"] = stats["train_rows"]
    validation_data.metadata["rows"] = stats["validation_rows"]
    # Where the step's seconds went (core.phases): the train step shows them beside its own.
    train_data.metadata["phases"] = stats["phases"]
    succeeded()


def train(
    job_spec: str,
    train_data: Input[Dataset],
    validation_data: Input[Dataset],
    metrics: Output[Metrics],
    model: Output[Model],
) -> None:
    """Fine-tune with the job's engine; checkpoints and progress go to its output location.
    The Model artifact records where the last checkpoint is (its weights are not copied)."""
    import json

    from llama_stack_provider_kfp.training.steps import (
        model_pointer,
        skip_teardown_on_success,
        train_job_step,
    )

    succeeded = skip_teardown_on_success()  # unloading torch & co. would cost seconds
    result = train_job_step(
        job_spec, train_data.path, validation_data.path, train_data.metadata.get("phases")
    )
    for key, value in result["final_metrics"].items():
        metrics.log_metric(key, value)
    # A pointer: the weights stay where the job wrote them, stored once.
    info = model_pointer(job_spec)
    model.metadata.update(info)
    with open(model.path, "w") as fh:
        json.dump(info, fh)
    succeeded()


def evaluate(
    job_spec: str,
    validation_data: Input[Dataset],
    metrics: Output[Metrics],
    evaluation: Output[Artifact],
    model: Input[Model] = None,
) -> None:
    """Base and tuned model on the held-out rows and the job's lm-eval tasks.
    `model`: the train step's Model artifact (absent when evaluating a finished checkpoint)."""
    from llama_stack_provider_kfp.training.steps import (
        evaluate_job_step,
        skip_teardown_on_success,
    )

    succeeded = skip_teardown_on_success()
    result = evaluate_job_step(job_spec, validation_data.path)
    for key, value in result.flat().items():
        metrics.log_metric(key, value)
    with open(evaluation.path, "w") as fh:
        fh.write(result.model_dump_json())
    succeeded()


def register(
    job_spec: str,
    registered: Output[Artifact],
    evaluation: Input[Artifact] = None,
    model: Input[Model] = None,
) -> None:
    """The tuned model into the job's registry (MLflow or Kubeflow Model Registry), with the
    evaluation's numbers; the gate's decision is recorded either way."""
    import os

    from llama_stack_provider_kfp.core.stage_results import Evaluation
    from llama_stack_provider_kfp.training.steps import register_job_step

    found = None
    if evaluation is not None and os.path.isfile(evaluation.path):
        with open(evaluation.path) as fh:
            found = Evaluation.model_validate_json(fh.read())
    # The run that made the model (KFP sets these in every task's pod; absent locally).
    names = {"pipeline_run": "KFP_RUN_ID", "pipeline_run_name": "KFP_RUN_NAME",
             "pod": "KFP_POD_NAME"}  # fmt: skip
    provenance = {k: os.environ[v] for k, v in names.items() if v in os.environ}
    result = register_job_step(job_spec, found, provenance)
    registered.metadata.update(result.model_dump(mode="json", exclude_none=True))
    with open(registered.path, "w") as fh:
        fh.write(result.model_dump_json())
