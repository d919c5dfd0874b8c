"""The worker process of one local job: runs the pipeline with kfp.local.

Started by LocalBackend in a session of its own, one per job, because kfp.local keeps
process-wide state. It reports only through files in the job directory, so the server can
restart without losing the job.

    python -m llama_stack_provider_kfp.backends.local.worker <job_dir>
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import traceback
from pathlib import Path

import psutil

from ...boundary.files import read_json, write_json
from ...boundary.job_outputs import JobOutputs
from ...core.locations import parse
from ...core.outputs import PROGRESS, RESULT, StepError
from ...core.phases import Phases, add_phases
from ...jobs.record import RunnerHandle, WorkerState, now
from ...jobs.store import JOB_FILE, JobStore, write_worker_state
from . import task_exits


def _outlive_sigterm() -> None:
    """A cancel or pause signals the job's whole process group. The worker stays until its
    steps have stopped: it relays their output (a train step saving its checkpoint on
    SIGTERM writes to the worker's pipe) and records how the pipeline ended. A Python handler,
    not SIG_IGN, so that the steps it starts get the default disposition."""

    def note(signum: int, frame: object) -> None:
        print("worker: SIGTERM: waiting for the pipeline's steps to stop", flush=True)

    signal.signal(signal.SIGTERM, note)


def run(job_dir: Path) -> int:
    _outlive_sigterm()
    record = JobStore(job_dir.parent.parent).load(job_dir.name)
    if record is None:
        print(f"{job_dir / JOB_FILE}: missing or unreadable", file=sys.stderr)
        return 1
    spec = record.spec
    phases = Phases("worker")
    started = now()
    me = RunnerHandle(pid=os.getpid(), create_time=psutil.Process().create_time())
    write_worker_state(job_dir, WorkerState(status="in_progress", started_at=started, runner=me))
    try:
        _import_kfp_without_its_client()
        from kfp import local

        task_exits.install()
        from ...pipeline.definition import ComponentBuild, build_pipeline, pipeline_arguments

        local.init(
            runner=local.SubprocessRunner(use_venv=False),
            pipeline_root=str(job_dir / "kfp"),
            raise_on_error=True,
        )
        pipeline = build_pipeline(ComponentBuild.local(), spec)
        phases.mark("pipeline_started")
        pipeline(**pipeline_arguments(spec))
        phases.mark("pipeline_done")
    except BaseException as e:
        phases.mark("pipeline_done")
        _publish(spec.output_uri, phases)
        traceback.print_exc()
        sys.stdout.flush()
        # The log's tail is not copied here: the status reads it from the log itself.
        outputs = JobOutputs(parse(spec.output_uri))
        error = outputs.error() or _killed(outputs) or StepError(message=f"{type(e).__name__}: {e}")
        write_worker_state(
            job_dir,
            WorkerState(
                status="failed", started_at=started, completed_at=now(), error=error, runner=me
            ),
        )
        return 1
    _publish(spec.output_uri, phases)
    write_worker_state(
        job_dir,
        WorkerState(status="completed", started_at=started, completed_at=now(), runner=me),
    )
    return 0


def _killed(outputs: JobOutputs) -> StepError | None:
    """A step ended by a signal (the OOM killer's SIGKILL) writes no error.json: say so from
    its exit status, with its peak memory and the checkpoint a new job resumes from."""
    ended = task_exits.last_killed()
    message = ended.killed_message() if ended else None
    if ended is None or message is None:
        return None
    newest = outputs.newest_resumable()
    if newest is not None:
        message += (
            f"; resume from its newest checkpoint with a new job whose checkpoint_dir is "
            f"{newest.path!r} (optimizer step {newest.global_step})"
        )
    return StepError(message=message, step=ended.step)


def _import_kfp_without_its_client() -> None:
    """kfp's package __init__ imports its API client (kubernetes, google-auth, requests: 0.3 s
    of the worker's 0.55 s start here) unless _KFP_RUNTIME says that the process runs a
    component. The worker never calls a KFP API: import the package that way, then
    kfp.dsl and kfp.local in full (they check the variable too, so it is gone by then)."""
    if "kfp" in sys.modules:
        return
    saved = os.environ.get("_KFP_RUNTIME")
    os.environ["_KFP_RUNTIME"] = "true"
    try:
        import kfp  # noqa: F401
    finally:
        if saved is None:
            del os.environ["_KFP_RUNTIME"]
        else:
            os.environ["_KFP_RUNTIME"] = saved


def _publish(output_uri: str, phases: Phases) -> None:
    """The worker's phases beside the steps' in progress.json and result.json (the steps
    have exited: nobody else writes them now)."""
    output = parse(output_uri)
    if not output.is_local:
        return
    for name in (PROGRESS, RESULT):
        data = read_json(output.path / name)
        if isinstance(data, dict):
            with contextlib.suppress(OSError):  # timings never fail a job
                write_json(
                    output.path / name,
                    add_phases(data, phases.name, phases.marks),
                    durable=name == RESULT,
                )


if __name__ == "__main__":
    sys.exit(run(Path(sys.argv[1])))
