"""An in-memory Backend for unit tests of the scheduler (a stand-in: no process, no cluster)."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

from llama_stack_provider_kfp.boundary.job_outputs import JobOutputs
from llama_stack_provider_kfp.core.locations import parse
from llama_stack_provider_kfp.core.outputs import StepError
from llama_stack_provider_kfp.core.spec import (
    DataSpec,
    JobSpec,
    LoraSpec,
    ModelSpec,
    OptimSpec,
    TrainSpec,
)
from llama_stack_provider_kfp.jobs.backend import JobInputs, Observed, StagedInputs
from llama_stack_provider_kfp.jobs.record import JobRecord, RunnerHandle


def spec(job_uuid: str, out: Path | None = None) -> JobSpec:
    return JobSpec(
        job_uuid=job_uuid,
        model=ModelSpec(name="m", path="/m", layout="huggingface", checkpoint_files=[],
                        tokenizer_file="t", arch=None),
        data=DataSpec(uri="/d.jsonl", data_format="instruct"),
        train=TrainSpec(epochs=1, max_steps_per_epoch=1, gradient_accumulation_steps=1,
                        batch_size=1, shuffle=False, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=8, seed=0, device="cpu"),
        lora=LoraSpec(rank=1, alpha=1, attn_modules=["q_proj"], apply_to_mlp=False,
                      apply_to_output=False),
        optim=OptimSpec(type="adamw", lr=1e-3, weight_decay=0.0, warmup_steps=0),
        output_format=None,
        output_uri=str(out or Path("/nonexistent/out")),
    )  # fmt: skip


_T0 = datetime(2026, 11, 24, tzinfo=UTC)


def record(job_uuid: str, order: int) -> JobRecord:
    """A queued record submitted `order` seconds after a fixed instant."""
    return JobRecord(
        job_uuid=job_uuid, spec=spec(job_uuid), scheduled_at=_T0 + timedelta(seconds=order)
    )


class FakeBackend:
    name = "fake"
    poll_seconds = 0.01
    observation_max_age = 0.01

    def __init__(self) -> None:
        self.state: dict[str, str] = {}  # job -> in_progress | completed | failed
        self.started: list[str] = []
        self.killed: list[str] = []
        self.forgotten: list[str] = []
        self.fail_start: set[str] = set()
        self.fail_observe: set[str] = set()
        # job -> gate: observing that job blocks until the gate opens (a blackholed route).
        self.hang_observe: dict[str, threading.Event] = {}
        self.hanging = threading.Event()
        self.start_gate: threading.Event | None = None
        self.starting = threading.Event()
        self.max_running = 0

    # Backend protocol ---------------------------------------------------------------------
    def check(self) -> None:
        pass

    def resolve_model(self, name, checkpoint_dir, descriptor_repo) -> ModelSpec:
        return spec("x").model

    def training_state(self, where: str) -> None:
        return None

    def stage(self, job_uuid: str, job_dir: Path, inputs: JobInputs) -> StagedInputs:
        return StagedInputs(str(inputs.train), None, str(job_dir / "out"))

    def start(self, record: JobRecord) -> RunnerHandle:
        self.starting.set()
        if self.start_gate is not None:
            self.start_gate.wait(10)
        if record.job_uuid in self.fail_start:
            raise RuntimeError(f"cannot start {record.job_uuid}")
        self.started.append(record.job_uuid)
        self.state[record.job_uuid] = "in_progress"
        running = sum(1 for s in self.state.values() if s == "in_progress")
        self.max_running = max(self.max_running, running)
        n = self.started.count(record.job_uuid)  # a resumed job's next run is another run
        return RunnerHandle(run_id=f"run-{record.job_uuid}" + (f"-{n}" if n > 1 else ""))

    def handle(self, record: JobRecord) -> RunnerHandle | None:
        return record.runner

    def observe(self, record: JobRecord) -> Observed:
        if record.job_uuid in self.fail_observe:
            raise ConnectionError("cluster unreachable")
        gate = self.hang_observe.get(record.job_uuid)
        if gate is not None and threading.current_thread().name == "round":
            self.hanging.set()
            gate.wait(10)
        if self.state.get(record.job_uuid) == "completed":  # a cancel that came too late
            return Observed("completed")
        if record.cancelled_at is not None:
            return Observed("cancelled")
        if record.lost is not None:
            return Observed("failed", error=record.lost)
        if record.runner is None:
            return Observed("scheduled")
        if self.state.get(record.job_uuid) == "stopped":
            return Observed("failed", error=StepError(message="stopped by SIGTERM"))
        return Observed(self.state.get(record.job_uuid, "in_progress"))  # type: ignore[arg-type]

    def outputs(self, record: JobRecord) -> JobOutputs:
        return JobOutputs(parse(record.spec.output_uri))

    def kill(self, record: JobRecord, grace_seconds: float = 5.0, save: bool = False) -> None:
        self.killed.append(record.job_uuid)
        if self.state.get(record.job_uuid) == "in_progress":
            # A pause (save): the run stops with a checkpoint, as the train step does on SIGTERM.
            self.state[record.job_uuid] = "stopped" if save else "killed"

    def rerun(self, record: JobRecord) -> None:
        self.state.pop(record.job_uuid, None)

    def forget(self, record: JobRecord) -> None:
        self.forgotten.append(record.job_uuid)

    # test controls ------------------------------------------------------------------------
    def finish(self, job_uuid: str, status: str = "completed") -> None:
        self.state[job_uuid] = status
