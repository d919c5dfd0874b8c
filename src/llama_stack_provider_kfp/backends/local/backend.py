"""Local backend: the pipeline runs through kfp.local in one worker process per job.

Each worker leads its own session, so it outlives the server and a cancel signals its whole
process group (kfp.local's task processes included). Everything the server knows about a
worker comes from files in the job directory (see jobs.store) and the process table.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

from ...boundary import data_uri
from ...boundary.files import read_json_named
from ...boundary.job_outputs import JobOutputs, write_cancel
from ...boundary.model_source import resolve_model
from ...core.locations import parse
from ...core.outputs import CANCEL, StepError
from ...core.resume import TrainingState, load_state
from ...core.spec import ModelSpec
from ...jobs.backend import DatasetSource, JobInputs, Observed, StagedInputs
from ...jobs.record import TERMINAL, JobRecord, RunnerHandle
from ...jobs.store import INPUT_DIR, OUTPUT_DIR, STATE_FILE, WORKER_LOG, JobStore

WORKER_MODULE = "llama_stack_provider_kfp.backends.local.worker"
# After SIGTERM and the grace period, SIGKILL; then wait at most this long for the group.
KILL_WAIT_SECONDS = 5.0


class LocalBackend:
    name = "local"

    def __init__(
        self,
        store: JobStore,
        model_dirs: list[Path],
        poll_seconds: float = 0.5,
        save_on_cancel: bool = False,
        stop_grace_seconds: float = 30.0,
    ) -> None:
        self.store = store
        self.model_dirs = model_dirs
        self.save_on_cancel, self.stop_grace_seconds = save_on_cancel, stop_grace_seconds
        self.poll_seconds = poll_seconds  # checks are file reads: cheap
        # So cheap that a status sees a job end within 0.1 s, not one poll later.
        self.observation_max_age = min(poll_seconds, 0.1)
        # Popen objects of workers this server started and that have not exited yet.
        self._children: dict[str, subprocess.Popen] = {}
        self._children_lock = threading.Lock()

    # ---- before a job exists ------------------------------------------------------------

    def check(self) -> None:
        pass  # nothing remote to reach

    def resolve_model(
        self, name: str, checkpoint_dir: str | None, descriptor_repo: str | None
    ) -> ModelSpec:
        return resolve_model(name, checkpoint_dir, self.model_dirs, descriptor_repo)

    def training_state(self, where: str) -> TrainingState | None:
        folder = Path(where).expanduser()
        if not folder.is_dir():
            return None
        return load_state(lambda name: read_json_named(folder / name), where)

    def stage(self, job_uuid: str, job_dir: Path, inputs: JobInputs) -> StagedInputs:
        (job_dir / OUTPUT_DIR).mkdir()
        validation = inputs.validation
        return StagedInputs(
            train_uri=_as_uri(inputs.train, job_dir / INPUT_DIR / "train.jsonl"),
            validation_uri=(
                _as_uri(validation, job_dir / INPUT_DIR / "validation.jsonl")
                if validation is not None
                else None
            ),
            output_uri=str(job_dir / OUTPUT_DIR),
        )

    # ---- running ------------------------------------------------------------------------

    def start(self, record: JobRecord) -> RunnerHandle:
        job_dir = self.store.job_dir(record.job_uuid)
        with (job_dir / WORKER_LOG).open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", WORKER_MODULE, str(job_dir)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=job_dir,
                start_new_session=True,  # own process group: cancel signals the whole tree
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        with self._children_lock:
            self._children[record.job_uuid] = proc
        # Reap the worker the moment it exits, whether or not anything polls it again:
        # a record can turn terminal (state.json) before the process has exited.
        threading.Thread(
            target=self._reap, args=(record.job_uuid, proc), name=f"reap-{proc.pid}", daemon=True
        ).start()
        return RunnerHandle(pid=proc.pid, create_time=psutil.Process(proc.pid).create_time())

    def _reap(self, job_uuid: str, proc: subprocess.Popen) -> None:
        proc.wait()
        with self._children_lock:
            if self._children.get(job_uuid) is proc:
                del self._children[job_uuid]

    def outputs(self, record: JobRecord) -> JobOutputs:
        where = parse(record.spec.output_uri)
        if where.is_local and not where.path.exists():  # the work dir was moved since
            moved = self.store.own_outputs(record.job_uuid)
            if moved is not None:
                return moved
        log_file = self.store.job_dir(record.job_uuid) / WORKER_LOG  # every step's output
        return JobOutputs(where, log_file=log_file)

    def handle(self, record: JobRecord) -> RunnerHandle | None:
        if record.runner is not None:
            return record.runner
        state = self.store.worker_state(record.job_uuid)
        return state.runner if state else None

    def observe(self, record: JobRecord) -> Observed:
        state = self.store.worker_state(record.job_uuid)
        started = state.started_at if state else None
        if state is not None and state.status == "completed":  # a cancel that came too late
            return Observed("completed", started, state.completed_at)
        if record.cancelled_at is not None:
            return Observed("cancelled", started, record.cancelled_at)
        if state is not None and state.status in TERMINAL:
            return Observed(state.status, started, state.completed_at, state.error)
        if record.lost is not None:
            return Observed("failed", started, record.lost_at, record.lost)
        if self.handle(record) is None:
            return Observed("scheduled")
        if _live(self.handle(record)) is not None:  # the worker still runs
            return Observed(state.status if state else "scheduled", started)
        return Observed("failed", started, None, self.lost_reason(record), lost=True)

    def lost_reason(self, record: JobRecord) -> StepError:
        return StepError(
            message="the job's worker process exited without reporting an outcome (killed, or "
            "out of memory); see log_tail"
        )

    def forget(self, record: JobRecord) -> None:
        pass  # workers are reaped by their own waiter thread; nothing else is cached

    def rerun(self, record: JobRecord) -> None:
        job_dir = self.store.job_dir(record.job_uuid)
        state = job_dir / STATE_FILE
        if state.exists():  # kept beside the record's runs, numbered as they are
            os.replace(state, job_dir / f"state.run{len(record.runs)}.json")
        where = parse(record.spec.output_uri)
        if where.is_local:
            (where.path / CANCEL).unlink(missing_ok=True)

    def kill(self, record: JobRecord, grace_seconds: float = 5.0, save: bool = False) -> None:
        """Stop the worker's whole process group (kfp.local tasks included), then wait.

        The train step saves a checkpoint on SIGTERM unless cancel.json tells it that this
        is a cancel; with save_on_cancel (or a pause: `save`) it may take stop_grace_seconds
        to do so."""
        if self.save_on_cancel or save:
            grace_seconds = max(grace_seconds, self.stop_grace_seconds)
        else:
            with contextlib.suppress(OSError):
                write_cancel(self.outputs(record).location)
        handle = self.handle(record)
        with self._children_lock:
            child = self._children.get(record.job_uuid)
        if handle is None and child is not None:
            # Started a moment ago: neither the record nor state.json names it yet.
            with contextlib.suppress(psutil.NoSuchProcess):
                handle = RunnerHandle(
                    pid=child.pid, create_time=psutil.Process(child.pid).create_time()
                )
        if handle is None:
            return
        for sig, wait in ((signal.SIGTERM, grace_seconds), (signal.SIGKILL, KILL_WAIT_SECONDS)):
            members = group_members(handle)
            if not members:
                break
            for p in members:
                with contextlib.suppress(psutil.NoSuchProcess):
                    p.send_signal(sig)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and group_members(handle):
                time.sleep(0.05)


def _live(handle: RunnerHandle | None) -> psutil.Process | None:
    if handle is None or handle.pid is None or handle.create_time is None:
        return None
    try:
        proc = psutil.Process(handle.pid)
        if abs(proc.create_time() - handle.create_time) > 0.5:
            return None  # the pid was recycled
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc
    except psutil.NoSuchProcess:
        return None


def group_members(handle: RunnerHandle) -> list[psutil.Process]:
    """Live processes of the worker's process group, started no earlier than the worker.

    The worker leads its own session, so its group id is its pid; the start-time check keeps
    a recycled group id from reaching unrelated processes.
    """
    if handle.pid is None or handle.create_time is None:
        return []
    found = []
    for p in psutil.process_iter(["pid", "create_time", "status"]):
        try:
            if (
                os.getpgid(p.pid) == handle.pid
                and p.info["create_time"] >= handle.create_time - 0.5
                and p.info["status"] != psutil.STATUS_ZOMBIE
            ):
                found.append(p)
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return found


def _as_uri(source: DatasetSource, inline_path: Path) -> str:
    """A dataset location the worker can read: inline rows become a JSONL file."""
    if isinstance(source, str):
        return source
    return str(data_uri.write_jsonl(source, inline_path))
