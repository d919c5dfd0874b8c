"""Entry points of the pipeline's steps, called from the component bodies."""

from __future__ import annotations

import atexit
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..boundary.files import read_json, write_json
from ..boundary.job_outputs import JobOutputs, write_output
from ..boundary.model_source import inspect_model_dir
from ..core.errors import InvalidRequest
from ..core.locations import parse
from ..core.lora_targets import resolve, tied_output_problem
from ..core.osft_targets import resolve_osft
from ..core.outputs import EVALUATION, PROGRESS, REGISTRY, RESULT, TrainResult, epoch_dir, versioned
from ..core.phases import Phases
from ..core.spec import JobSpec
from ..core.stage_results import Evaluation, Registration
from .context import RankJob, TrainingContext
from .engine import get_engine
from .io import Output, fetch_model, recorded_stage, report_errors
from .prepare import prepare
from .step_log import ship_log
from .tracking import tracking

if TYPE_CHECKING:  # torch: only once the step trains
    from .distributed import Ranks


def skip_teardown_on_success() -> Callable[[], None]:
    """In a step process that KFP's executor runs (`_KFP_RUNTIME=true`), end the process
    without Python's teardown once everything else is done: unloading torch and the modules
    training imported takes 1.3 s here (0.7 s for torch alone), after the step's outputs are
    written and before the pipeline can go on.

    Call it at the start of a component body and call what it returns when the step has
    succeeded. The process then ends after the exit handlers of every library the step
    imported (they registered later, so they run first), after the executor wrote its output
    file and after Python joined non-daemon threads. A step that did not succeed (an
    exception, sys.exit) never calls it and exits as usual, with its traceback and status;
    neither does a failure after it (Python's handler set sys.last_exc). Elsewhere (tests,
    scripts calling the steps) nothing changes."""
    succeeded = False

    def _exit() -> None:
        if not succeeded or getattr(sys, "last_exc", None) or getattr(sys, "last_value", None):
            return
        logging.shutdown()  # registered before us: it would not run otherwise
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def success() -> None:
        nonlocal succeeded
        succeeded = True

    if os.environ.get("_KFP_RUNTIME") == "true":
        atexit.register(_exit)
    return success


def prepare_data_step(job_spec: str, train_path: str, validation_path: str) -> dict[str, Any]:
    """The prepare-data component: the job's data locations come from its spec. Returns the
    row counts and the step's phases (core.phases), which travel to the train step with the
    prepared rows (the artifact's metadata)."""
    phases = Phases("prepare-data")
    phases.mark("step_entered")
    spec = JobSpec.model_validate_json(job_spec)
    with ship_log(spec.output_uri, "prepare-data"), recorded_stage(spec.output_uri, "prepare-data"):
        if spec.evaluation is not None and (spec.evaluation.tasks or spec.evaluation.task_files):
            # lm-eval's task index costs seconds: checked here, before training, not at submit.
            from .evaluation.tasks import check_task_names

            check_task_names(spec)
        counts = prepare(spec, train_path, validation_path)
    phases.mark("done")
    return {**counts, "phases": phases.as_dict()}


def train_job_step(
    job_spec: str, train_path: str, val_path: str, prepared_phases: dict | None = None
) -> dict[str, Any]:
    """The train component: the weights and the output location come from the job's spec;
    `prepared_phases`: prepare-data's, shown beside this step's own."""
    phases = Phases("train")
    phases.mark("step_entered")
    phases.merge(prepared_phases)
    spec = JobSpec.model_validate_json(job_spec)
    with recorded_stage(spec.output_uri, "train"):
        return train_step(
            job_spec, spec.model.path, spec.output_uri, train_path, val_path, phases, True
        )


def tuned_checkpoints(spec: JobSpec) -> list[str]:
    """The checkpoint folders the stages after training work on, oldest first: the one the
    job names (trained_checkpoint), else the job's epoch checkpoints."""
    if spec.trained_checkpoint:
        return [spec.trained_checkpoint]
    loc = parse(spec.output_uri)
    found = [c for c in JobOutputs(loc).checkpoints() if c.step is None]
    if not found:  # a train step that wrote no epoch: the layout's last epoch anyway
        return [str(loc.join(epoch_dir(spec.train.epochs)))]
    return [c.path for c in found]


def model_pointer(job_spec: str) -> dict[str, str]:
    """The train step's Model artifact: where the last checkpoint is, and what it is."""
    spec = JobSpec.model_validate_json(job_spec)
    return {
        "location": tuned_checkpoints(spec)[-1],
        "base_model": spec.model.name,
        "format": spec.output_format or spec.model.layout or "",
        "algorithm": spec.algorithm,
        "engine": spec.engine.name,
    }


def evaluate_job_step(job_spec: str, validation_path: str) -> Evaluation:
    """The evaluate component: base and tuned model on the held-out rows and the named
    lm-eval tasks; the results go to the job's output (evaluation.json) and back to the
    component (its Metrics artifact)."""
    spec = JobSpec.model_validate_json(job_spec)
    with ship_log(spec.output_uri, "evaluate"), recorded_stage(spec.output_uri, "evaluate"):
        from .evaluation import evaluate_job

        result = evaluate_job(spec, tuned_checkpoints(spec), validation_path)
        write_output(parse(spec.output_uri), EVALUATION, result)
        return result


def register_job_step(
    job_spec: str, evaluation: Evaluation | None, provenance: dict[str, str]
) -> Registration:
    """The register component: the tuned checkpoint into the configured registry (or the
    gate's reason not to); `provenance`: the pipeline run that made it."""
    spec = JobSpec.model_validate_json(job_spec)
    with ship_log(spec.output_uri, "register"), recorded_stage(spec.output_uri, "register"):
        from .registry import register_job

        out = JobOutputs(parse(spec.output_uri))
        result = register_job(spec, tuned_checkpoints(spec)[-1], evaluation, out.result(),
                              provenance)  # fmt: skip
        write_output(parse(spec.output_uri), REGISTRY, result)
        return result


def train_step(
    job_spec: str,
    model_uri: str,
    output_uri: str,
    train_path: str,
    val_path: str,
    phases: Phases | None = None,
    one_job_process: bool = False,
) -> dict[str, Any]:
    """`one_job_process`: this process ends with this job (a pipeline step), see
    TrainingContext.imports_done."""
    with ship_log(output_uri, "train"):
        return _train(
            job_spec, model_uri, output_uri, train_path, val_path, phases, one_job_process
        )


def _train(
    job_spec: str,
    model_uri: str,
    output_uri: str,
    train_path: str,
    val_path: str,
    phases: Phases | None,
    one_job_process: bool,
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
            spec = reinspected(spec, model_dir, model_uri)
        if spec.train.nodes > 1:  # a TrainJob; the weights go to S3 for the nodes
            from .trainjob import run_on_nodes

            return run_on_nodes(spec, model_dir, output_uri, train_path, val)
        if spec.train.ranks > 1:  # torchrun: every rank runs train() below, rank 0 writes
            from .distributed import launch

            return launch(spec.train.ranks, RankJob(
                spec=spec.model_dump_json(), model_dir=str(model_dir), output_uri=output_uri,
                train_path=train_path, val_path=val,
            ))  # fmt: skip
        from .distributed import Ranks

        return train(
            spec, model_dir, Output(output_uri), train_path, val, Ranks(), phases, one_job_process
        )


def reinspected(spec: JobSpec, model_dir: Path, model_uri: str) -> JobSpec:
    """The spec with what the fetched weights say (files, layout, modules) and, for LoRA and
    OSFT, the targets and the tied-output check done again on them: the server could not read these
    weights at submit (a PVC) or read only their config (the Hub)."""
    found = inspect_model_dir(spec.model.name, model_dir).model_copy(update={"path": model_uri})
    update: dict[str, Any] = {"model": found, "output_format": spec.output_format or found.layout}
    lora = spec.lora
    if lora is not None:
        problem = tied_output_problem(found.name, lora.apply_to_output, found.is_tied)
        if problem:
            raise InvalidRequest(problem)
        targets = resolve(lora.requested_modules or lora.attn_modules, lora.apply_to_mlp,
                          lora.apply_to_output, found.modules, found.is_tied)  # fmt: skip
        for note in targets.notes:
            print(f"lora: {note}")
        update["lora"] = lora.model_copy(update={"target_modules": targets.peft})
    if spec.osft is not None:
        chosen = resolve_osft(spec.osft.requested_modules, found.modules, found.is_tied)
        for note in chosen.notes:
            print(f"osft: {note}")
        update["osft"] = spec.osft.model_copy(update={"target_modules": chosen.modules})
    return spec.model_copy(update=update)


def train(
    spec: JobSpec,
    model_dir: Path,
    output: Output,
    train_path: str,
    val_path: str | None,
    ranks: Ranks,
    phases: Phases | None = None,
    one_job_process: bool = False,
) -> dict[str, Any]:
    """Train with the job's engine as one of `ranks`; the main rank tracks it and writes the
    result. `phases` records where this process's seconds go (a rank: its own, unprinted);
    `one_job_process`: see TrainingContext.imports_done."""
    phases = phases or Phases("train", echo=ranks.main)
    with tracking(spec, output, ranks.main) as tracker:
        ctx = TrainingContext(
            spec, model_dir, output, train_path, val_path, ranks, tracker, phases, one_job_process
        )
        result = get_engine(spec.engine.name).train(ctx)
        tracker.finish(result, ok=True)
    if ranks.main:
        phases.mark("done")
        result = {**result, "phases": phases.as_dict()}
        progress = read_json(output.local / PROGRESS)
        if isinstance(progress, dict):  # the last progress with every phase of the step
            write_json(output.local / PROGRESS, {**progress, "phases": result["phases"]}, False)
        checked = TrainResult.model_validate(result)  # a renamed field fails here, not later
        write_json(output.local / RESULT, versioned(checked.model_dump(mode="json")))
        output.push(PROGRESS)
        output.push(RESULT)
    return result
