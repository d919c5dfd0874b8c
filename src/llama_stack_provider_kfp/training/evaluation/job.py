"""The evaluate stage: base and tuned model under the same settings, side by side.

For each model, loaded once (training.evaluation.models): the held-out metrics, the named
lm-eval tasks, the sample answers; then it is released before the next one loads. The base is
evaluated once, then each checkpoint (the last one, or every epoch's). Progress lines go to the
step's log, with the seconds each part took.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...core.spec import EvaluationSpec, JobSpec
from ...core.stage_results import Comparison, Evaluation, Sample
from ..device import resolve_device
from . import held_out, models, samples, tasks
from .checkpoint import ModelFiles, as_hf, fetch_base, fetch_checkpoint
from .tracking_run import log_to_tracking_run

PHASES = ("load", "held_out", "lm_eval", "samples")


def say(message: str) -> None:
    print(f"evaluate: {message}", flush=True)


@dataclass
class Scores:
    """What one model scored."""

    held_out: held_out.HeldOut | None = None
    tasks: dict[str, Any] = field(default_factory=dict)
    answers: list[str] = field(default_factory=list)


@dataclass
class _Plan:
    spec: JobSpec
    evaluation: EvaluationSpec
    rows: list[list[dict]]
    prompts: list[samples.Prompt]
    task_names: list[str]
    manager: Any
    device: str
    dtype: Any
    phases: dict[str, float] = field(default_factory=lambda: dict.fromkeys(PHASES, 0.0))

    def timed(self, phase: str, started: float) -> float:
        seconds = time.perf_counter() - started
        self.phases[phase] += seconds
        return seconds

    def score(self, label: str, load: Any) -> Scores:
        started = time.perf_counter()
        loaded = load()
        say(f"{label} model loaded ({self.timed('load', started):.1f} s)")
        try:
            return self._score(label, loaded)
        finally:
            models.release(loaded)

    def _score(self, label: str, loaded: models.Loaded) -> Scores:
        out = Scores()
        ev, t = self.evaluation, self.spec.train
        if self.rows:
            started = time.perf_counter()
            out.held_out = held_out.measure(loaded, self.rows, t.max_seq_len, t.train_on_input,
                                            ev.batch_size)  # fmt: skip
            seconds = self.timed("held_out", started)
            h = out.held_out
            if h is None:
                say(f"{label} held-out: no answer tokens in {len(self.rows)} rows")
            else:
                say(f"{label} held-out loss {h.loss:.4f}, perplexity {h.perplexity:.3f}, token "
                    f"accuracy {h.token_accuracy:.4f} over {h.tokens} tokens of "
                    f"{len(self.rows)} rows ({seconds:.1f} s)")  # fmt: skip
        if self.task_names:
            started = time.perf_counter()
            say(f"{label} lm-eval {', '.join(self.task_names)} (limit {ev.limit}) ...")
            out.tasks = tasks.run_tasks(loaded, self.task_names, self.manager, ev)
            seconds = self.timed("lm_eval", started)
            for task, values in out.tasks.items():
                shown = ", ".join(f"{m} {v['value']:.4f}" for m, v in values.items())
                say(f"{label} {task}: {shown}")
            say(f"{label} lm-eval done ({seconds:.1f} s)")
        if self.prompts:
            started = time.perf_counter()
            out.answers = [samples.answer(loaded, p, ev.max_new_tokens) for p in self.prompts]
            say(f"{label} answered {len(self.prompts)} sample prompts "
                f"({self.timed('samples', started):.1f} s)")  # fmt: skip
        return out


def _held_out_results(base: Scores, tuned: Scores) -> dict[str, Comparison]:
    b, t = base.held_out, tuned.held_out
    if b is None and t is None:
        return {}
    return {
        name: Comparison.of(getattr(b, name) if b else None, getattr(t, name) if t else None)
        for name in ("loss", "perplexity", "token_accuracy")
    }


def _evaluation(plan: _Plan, location: str, epoch: int | None, base: Scores,
                tuned: Scores, notes: list[str]) -> Evaluation:  # fmt: skip
    results: dict[str, dict[str, Comparison]] = {}
    held = _held_out_results(base, tuned)
    if held:
        results["held_out"] = held
    results.update(tasks.compare(base.tasks, tuned.tasks))
    return Evaluation(
        checkpoint=location,
        epoch=epoch,
        base_model=plan.spec.model.name,
        held_out_rows=len(plan.rows),
        results=results,
        samples=[
            Sample(prompt=p.shown, reference=p.reference, base=b, tuned=t)
            for p, b, t in zip(plan.prompts, base.answers, tuned.answers, strict=True)
        ],
        notes=list(notes),
    )


def evaluate_job(spec: JobSpec, checkpoints: list[str], validation_path: str) -> Evaluation:
    """Base and tuned model on the held-out rows (the first `max_rows`), the named lm-eval
    tasks and a few sample prompts; `checkpoints`: the job's epoch folders, oldest first (the
    last one is the result; with every_epoch the earlier ones are in `epochs`)."""
    started = time.perf_counter()
    evaluation = spec.evaluation or EvaluationSpec()
    if not checkpoints:
        raise ValueError("no checkpoint to evaluate: the train step wrote none")
    chosen = checkpoints if evaluation.every_epoch else checkpoints[-1:]
    notes: list[str] = []
    rows: list[list[dict]] = []
    if evaluation.held_out:
        rows = held_out.read_rows(validation_path, evaluation.max_rows)
        if not rows:
            notes.append("no held-out rows")
    device = resolve_device(spec.train.device)
    plan = _Plan(spec, evaluation, rows, samples.prompts(rows, evaluation.samples), [], None,
                 device, models.eval_dtype(device, spec.train.dtype))  # fmt: skip
    say(f"{len(chosen)} checkpoint(s) and the base model {spec.model.name} on {device}; "
        f"{len(rows)} held-out rows, {len(plan.prompts)} sample prompts")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="evaluate-") as tmp:
        scratch = Path(tmp)
        if evaluation.tasks or evaluation.task_files:  # fetched and indexed: lm-eval's time
            indexing = time.perf_counter()
            plan.task_names, plan.manager = tasks.prepare_tasks(
                evaluation, scratch / "tasks", spec.data.http
            )
            plan.timed("lm_eval", indexing)
        fetching = time.perf_counter()
        base_files = as_hf(fetch_base(spec.model.path, scratch / "base"), scratch / "base-hf")
        plan.timed("load", fetching)
        base = plan.score("base", lambda: models.load(base_files, device, plan.dtype))
        results = [
            _tuned(plan, location, base_files, base, notes, scratch / f"checkpoint-{i}")
            for i, location in enumerate(chosen)
        ]
    note = log_to_tracking_run(spec, results)
    final = results[-1]
    if note:
        final.notes.append(note)
    final.epochs = [r.model_dump(mode="json", exclude={"epochs"}) for r in results[:-1]]
    final.seconds = time.perf_counter() - started
    final.phases = {k: round(v, 3) for k, v in plan.phases.items()}
    spent = ", ".join(f"{k} {v:.1f} s" for k, v in plan.phases.items())
    say(f"done in {final.seconds:.1f} s ({spent})")
    return final


def _tuned(plan: _Plan, location: str, base_files: ModelFiles, base: Scores,
           notes: list[str], scratch: Path) -> Evaluation:  # fmt: skip
    fetching = time.perf_counter()
    checkpoint = fetch_checkpoint(location, scratch)
    plan.timed("load", fetching)
    label = f"epoch {checkpoint.epoch}" if checkpoint.epoch is not None else "tuned"
    tuned = plan.score(label, lambda: models.load_checkpoint(
        checkpoint, base_files, scratch / "hf", plan.device, plan.dtype))  # fmt: skip
    shutil.rmtree(scratch, ignore_errors=True)  # a downloaded or converted checkpoint
    return _evaluation(plan, location, checkpoint.epoch, base, tuned, notes)
