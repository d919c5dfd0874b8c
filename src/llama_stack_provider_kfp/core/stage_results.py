"""What the stages after training leave for the server: evaluation.json, registry.json and
one record per stage (stages/<name>.json). Plain pydantic, read tolerantly (a newer step may
add fields an older server passes through)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

StageStatus = Literal["pending", "running", "completed", "failed", "skipped", "cancelled"]
# The pipeline's stages in the order they run.
STAGE_ORDER = ("prepare-data", "train", "evaluate", "register")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class StageRecord(_Open):
    """One stage of a job as its step reports it (resources_allocated.stages)."""

    name: str
    status: StageStatus
    started_at: datetime | None = None
    finished_at: datetime | None = None
    error: str | None = None


class Comparison(_Open):
    """One metric of base and tuned model under the same settings; delta = tuned - base."""

    base: float | None = None
    tuned: float | None = None
    delta: float | None = None

    @classmethod
    def of(cls, base: float | None, tuned: float | None) -> Comparison:
        delta = tuned - base if base is not None and tuned is not None else None
        return cls(base=base, tuned=tuned, delta=delta)


class Sample(_Open):
    """A held-out prompt answered by both models (greedy, bounded length)."""

    prompt: str
    reference: str | None = None
    base: str
    tuned: str


class Evaluation(_Open):
    """evaluation.json: results per task ("held_out" for the held-out rows, else the lm-eval
    task's name), per metric."""

    checkpoint: str  # the evaluated checkpoint's location (epoch_<N> folder)
    epoch: int | None = None
    base_model: str
    held_out_rows: int = 0
    results: dict[str, dict[str, Comparison]] = {}
    samples: list[Sample] = []
    # Why part of the evaluation did not run ("no held-out rows").
    notes: list[str] = []
    # Earlier epochs' results, when every epoch is evaluated.
    epochs: list[dict] = []
    seconds: float | None = None
    # Where the seconds went: load (fetch, convert, load both models), held_out, lm_eval,
    # samples (bench/stages.py reports them).
    phases: dict[str, float] = {}

    def flat(self) -> dict[str, float]:
        """Scalar metrics for the KFP Metrics artifact and registries:
        `<task>/<metric>/<base|tuned|delta>`."""
        out: dict[str, float] = {}
        for task, metrics in self.results.items():
            for metric, c in metrics.items():
                for side in ("base", "tuned", "delta"):
                    value = getattr(c, side)
                    if value is not None:
                        out[f"{task}/{metric}/{side}"] = float(value)
        return out


class GateDecision(_Open):
    metric: str
    base: float | None = None
    tuned: float | None = None
    delta: float | None = None
    higher_is_better: bool
    min_delta: float = 0.0
    passed: bool
    reason: str


class Registration(_Open):
    """registry.json: what the register stage did (resources_allocated.registry)."""

    kind: str
    registered: bool
    name: str
    version: str | None = None
    # The registered artifact's location (the checkpoint) and the registry's own ids.
    uri: str | None = None
    model_id: str | None = None
    version_id: str | None = None
    url: str | None = None
    gate: GateDecision | None = None
    # The epoch folder the registered weights (`uri`, its merged/ folder) come from.
    checkpoint: str | None = None
    # MLflow: the alias set on the version and the run it is linked to; Kubeflow: the
    # model artifact's id.
    alias: str | None = None
    run_id: str | None = None
    artifact_id: str | None = None


def stage_table(
    names: list[str],
    found: dict[str, StageRecord | None],
    job_status: str,
    failed_step: str | None,
) -> list[StageRecord]:
    """Every stage of a job as the status shows it: what its step recorded, else what the
    job's own status says of a stage that never wrote a record (records written before
    stages existed have none: a completed job completed all of them)."""
    out = []
    ended = job_status in ("completed", "failed", "cancelled")
    for name in names:
        rec = found.get(name)
        if rec is not None:
            if rec.status == "running" and ended:  # its step ended without a word
                late = "completed" if job_status == "completed" else job_status
                rec = rec.model_copy(update={"status": late})
            out.append(rec)
        elif job_status == "completed":
            out.append(StageRecord(name=name, status="completed"))
        elif name == failed_step and job_status == "failed":
            out.append(StageRecord(name=name, status="failed"))
        else:
            out.append(StageRecord(name=name, status="skipped" if ended else "pending"))
    return out
