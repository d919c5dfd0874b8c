"""The evaluate stage (training.steps.evaluate_job_step): base vs tuned on held-out rows,
lm-eval tasks and sample answers. Modules: job (the stage), checkpoint (layouts), tokenizer,
models (loading), held_out, samples, task_files + tasks (lm-eval), tracking_run (MLflow)."""

from .job import evaluate_job

__all__ = ["evaluate_job"]
