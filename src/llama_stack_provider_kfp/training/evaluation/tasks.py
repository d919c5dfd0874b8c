"""lm-eval tasks: the names checked against lm-eval's task index (in prepare-data, before
training starts) and the tasks run on a loaded model.

The model runs through lm-eval's `hf` model type (HFLM) given the already loaded model and
tokenizer (training.evaluation.models), so the held-out metrics, the samples and lm-eval share
one load per model. lm-eval's task index is built from the job's task files only, plus the
built-in tasks when a name is not defined by a file (indexing them costs seconds).
"""

from __future__ import annotations

import contextlib
import difflib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...core.errors import InvalidRequest
from ...core.eval_tasks import check_evaluation
from ...core.http_policy import HttpPolicy
from ...core.spec import EvaluationSpec, JobSpec
from ...core.stage_results import Comparison
from .models import Loaded
from .task_files import fetch_task_files, reader


def task_manager(task_dir: Path | None, builtin: bool) -> Any:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_dir) if task_dir else None, include_defaults=builtin)


def prepare_tasks(
    evaluation: EvaluationSpec, task_dir: Path, http: HttpPolicy
) -> tuple[list[str], Any]:
    """The task names the job runs and a TaskManager that knows them (task files fetched into
    `task_dir`); InvalidRequest naming an unknown task and the known names closest to it."""
    names = check_evaluation(evaluation, reader(http))
    defined = fetch_task_files(evaluation, task_dir, http) if evaluation.task_files else []
    builtin = any(n not in defined for n in names)
    manager = task_manager(task_dir if defined else None, builtin)
    known = set(manager.all_tasks)
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
            hint = f"; close: {', '.join(close)}" if close else ""
            where = "the built-in tasks and " if builtin else ""
            raise InvalidRequest(
                f"evaluation task {name!r} is unknown to lm-eval ({where}the task files "
                f"define: {', '.join(defined) or 'none'}){hint}"
            )
    return names, manager


def check_task_names(spec: JobSpec) -> list[str]:
    """Every task the job names is one lm-eval knows: called by prepare-data so a wrong name
    fails before training starts."""
    evaluation = spec.evaluation
    if evaluation is None or not (evaluation.tasks or evaluation.task_files):
        return []
    with tempfile.TemporaryDirectory(prefix="tasks-") as scratch:
        names, _ = prepare_tasks(evaluation, Path(scratch), spec.data.http)
    print(f"evaluate: lm-eval knows the tasks {', '.join(names)}", flush=True)
    return names


@contextlib.contextmanager
def sandboxed_templates(on: bool) -> Iterator[None]:
    """lm-eval renders prompt templates with a plain Jinja environment, from which a template
    can reach Python; while `on`, it renders them in Jinja's immutable sandbox."""
    if not on:
        yield
        return
    import lm_eval.utils as lm_utils
    from jinja2 import BaseLoader, StrictUndefined
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    plain = lm_utils.env
    sandbox = ImmutableSandboxedEnvironment(
        loader=BaseLoader, undefined=StrictUndefined, keep_trailing_newline=True
    )
    sandbox.filters.update(plain.filters)
    lm_utils.env = sandbox
    try:
        yield
    finally:
        lm_utils.env = plain


def run_tasks(
    loaded: Loaded, names: list[str], manager: Any, evaluation: EvaluationSpec
) -> dict[str, dict[str, dict[str, float]]]:
    """{task: {metric: {"value", "stderr"?}}} from lm-eval for one model."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    lm = HFLM(pretrained=loaded.model, tokenizer=loaded.tokenizer,
              batch_size=evaluation.batch_size)  # fmt: skip
    with sandboxed_templates(not evaluation.allow_task_code):
        out = simple_evaluate(
            model=lm,
            tasks=names,
            task_manager=manager,
            limit=evaluation.limit,
            bootstrap_iters=0,
            log_samples=False,
            confirm_run_unsafe_code=evaluation.allow_task_code,
        )
    if out is None:  # only on ranks other than the first
        return {}
    return {task: metrics(values) for task, values in out["results"].items()}


def metrics(values: dict[str, Any]) -> dict[str, dict[str, float]]:
    """lm-eval's `"<metric>,<filter>"` keys as `<metric>` (filter "none") or
    `<metric>.<filter>`; `<metric>_stderr` folded into its metric; non-numbers dropped."""
    out: dict[str, dict[str, float]] = {}
    for key, value in values.items():
        if "," not in key or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        metric, _, filt = key.partition(",")
        stderr = metric.endswith("_stderr")
        metric = metric.removesuffix("_stderr")
        name = metric if filt == "none" else f"{metric}.{filt}"
        out.setdefault(name, {})["stderr" if stderr else "value"] = float(value)
    return {k: v for k, v in out.items() if "value" in v}


def compare(
    base: dict[str, dict[str, dict[str, float]]], tuned: dict[str, dict[str, dict[str, float]]]
) -> dict[str, dict[str, Comparison]]:
    """Per task, per metric: base, tuned, delta (and each side's stderr where lm-eval gave one)."""
    results: dict[str, dict[str, Comparison]] = {}
    for task in dict.fromkeys([*base, *tuned]):
        row: dict[str, Comparison] = {}
        b, t = base.get(task, {}), tuned.get(task, {})
        for metric in dict.fromkeys([*b, *t]):
            c = Comparison.of(b.get(metric, {}).get("value"), t.get(metric, {}).get("value"))
            extra = {
                f"{side}_stderr": v[metric]["stderr"]
                for side, v in (("base", b), ("tuned", t))
                if "stderr" in v.get(metric, {})
            }
            row[metric] = Comparison(**c.model_dump(), **extra) if extra else c
        results[task] = row
    return results
