"""Bodies of the pipeline's components.

KFP ships only a component function's source, so every import happens inside the body and
the real work lives in `llama_stack_provider_kfp.training.steps`: locally the same interpreter
imports it, remotely the image carries this package. These imports run in the step's
process, never in the server's (the import contracts allow exactly these two).
"""

from kfp.dsl import Dataset, Input, Metrics, Output


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
) -> None:
    """Fine-tune with the job's engine; checkpoints and progress go to its output location."""
    from llama_stack_provider_kfp.training.steps import skip_teardown_on_success, train_job_step

    succeeded = skip_teardown_on_success()  # unloading torch & co. would cost seconds
    result = train_job_step(
        job_spec, train_data.path, validation_data.path, train_data.metadata.get("phases")
    )
    for key, value in result["final_metrics"].items():
        metrics.log_metric(key, value)
    succeeded()
