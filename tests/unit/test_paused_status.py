"""A job paused through the OpenAI face, as the llama-stack face shows it: llama-stack's
JobStatus has no "paused", so it is `scheduled` (it waits for a resume, as a queued job waits
for a slot) with when and how it resumes; its stopped run is no failure."""

from __future__ import annotations

from datetime import UTC, datetime

from fake_backend import spec
from rich.console import Console

from llama_stack_provider_kfp.api import responses
from llama_stack_provider_kfp.boundary.job_outputs import JobOutputs
from llama_stack_provider_kfp.cli import render
from llama_stack_provider_kfp.core.locations import parse
from llama_stack_provider_kfp.core.outputs import StepError
from llama_stack_provider_kfp.jobs.backend import Observed
from llama_stack_provider_kfp.jobs.record import JobRecord

STOPPED = StepError(message="stopped by SIGTERM after optimizer step 2 of 6; checkpoint saved")


def _status(tmp_path, seen: Observed, **fields):
    out = tmp_path / "out"
    out.mkdir(exist_ok=True)
    t0 = datetime(2026, 12, 5, tzinfo=UTC)
    record = JobRecord(job_uuid="j1", spec=spec("j1", out), scheduled_at=t0, **fields)
    return responses.status(record, seen, JobOutputs(parse(str(out))), tmp_path)


def test_a_paused_job_waits_and_says_how_it_resumes(tmp_path):
    paused_at = datetime(2026, 12, 5, 1, tzinfo=UTC)
    started = datetime(2026, 12, 5, 0, 30, tzinfo=UTC)
    stopped = Observed("failed", started_at=started, completed_at=paused_at, error=STOPPED)
    st = _status(tmp_path, stopped, paused_at=paused_at)
    assert st.status.value == "scheduled" and st.started_at == started and st.completed_at is None
    res = st.resources_allocated
    assert "error" not in res
    assert res["paused"]["paused_at"] == paused_at.isoformat()
    assert "/v1/fine_tuning/jobs/j1/resume" in res["paused"]["resume"]
    console = Console(record=True, width=200)
    render.status(console, st.model_dump(mode="json"))
    shown = console.export_text()
    assert "paused" in shown and "j1/resume" in shown


def test_what_ended_shows_its_end(tmp_path):
    paused_at = datetime(2026, 12, 5, 1, tzinfo=UTC)
    # The run completed before the pause took effect: completed, not paused.
    done = _status(tmp_path, Observed("completed"), paused_at=paused_at)
    assert done.status.value == "completed" and "paused" not in done.resources_allocated
    # A paused job that was then cancelled has ended: cancelled.
    cancelled = _status(tmp_path, Observed("cancelled"), paused_at=paused_at,
                        cancelled_at=paused_at)  # fmt: skip
    assert cancelled.status.value == "cancelled" and "paused" not in cancelled.resources_allocated
    # Never paused: a stopped run is the failure it is.
    failed = _status(tmp_path, Observed("failed", error=STOPPED))
    assert failed.status.value == "failed"
    assert "SIGTERM" in failed.resources_allocated["error"]["message"]
