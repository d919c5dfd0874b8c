"""SIGTERM and cancel as the train step sees them (training.stop), through the local backend's
kill: a cancel stops the step at once (cancel.json first), with save_on_cancel the step gets
SIGTERM alone and the grace period to save; a preemption's SIGTERM sets the flag the engine
checks at every optimizer-step boundary."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime

import psutil
from fake_backend import spec

from llama_stack_provider_kfp.backends.local import backend as local
from llama_stack_provider_kfp.jobs.record import JobRecord, RunnerHandle
from llama_stack_provider_kfp.jobs.store import JobStore

# A stand-in for the train step's loop: training.stop's handler around a loop that "saves"
# (takes a while) once asked to stop.
STEP = (
    "import sys, time;"
    "from llama_stack_provider_kfp.training.io import Output;"
    "from llama_stack_provider_kfp.training.stop import GracefulStop;"
    "out = Output(sys.argv[1]);"
    "stop = GracefulStop(out).__enter__();"
    "print('ready', flush=True);"
    "[time.sleep(0.01) for _ in iter(lambda: stop.requested, True)];"
    "print('saving', flush=True); time.sleep(0.3); print('saved', flush=True)"
)


def _run(tmp_path, save_on_cancel: bool) -> tuple[str, int, bool]:
    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", STEP, str(out)], stdout=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    handle = RunnerHandle(pid=proc.pid, create_time=psutil.Process(proc.pid).create_time())
    record = JobRecord(job_uuid="j", spec=spec("j", out), scheduled_at=datetime.now(UTC),
                       runner=handle)  # fmt: skip
    backend = local.LocalBackend(JobStore(tmp_path / "store"), [], save_on_cancel=save_on_cancel,
                                 stop_grace_seconds=20.0)  # fmt: skip
    backend.kill(record, grace_seconds=20.0)
    code = proc.wait(5)
    return proc.stdout.read(), code, (out / "cancel.json").is_file()


def test_cancel_stops_at_once_and_saves_nothing(tmp_path):
    printed, code, marker = _run(tmp_path, save_on_cancel=False)
    assert marker and code == 128 + 15 and "saving" not in printed


def test_save_on_cancel_lets_the_step_save_within_the_grace_period(tmp_path):
    printed, code, marker = _run(tmp_path, save_on_cancel=True)
    # Exit code 0: it finished saving and exited by itself, before any SIGKILL.
    assert not marker and code == 0
    assert printed.splitlines()[-2:] == ["saving", "saved"]
    assert "SIGTERM: saving a checkpoint at the next optimizer step" in printed
