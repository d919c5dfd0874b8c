"""How each kfp.local task process ended: its exit status and its peak memory.

kfp.local keeps only SUCCESS or FAILURE of a task. A step the kernel's OOM killer ends (SIGKILL)
writes no error.json, so without its exit status the job could only say "failed". The worker
installs `record` in place of kfp.local's `run_local_subprocess` (the one function its
SubprocessRunner calls per task; same streaming of the task's output), which waits with
`os.wait4` to keep the status and the task's resource usage (its peak resident memory includes
the processes it waited for: ranks, the component's python under kfp's `sh -c`).
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass

# The shell kfp wraps every component in reports a child killed by signal N as 128 + N.
_SHELL_SIGNAL_BASE = 128


@dataclass(frozen=True)
class TaskExit:
    step: str | None  # the component function (`train`, `evaluate`, ...)
    code: int  # as subprocess reports it: negative for a signal
    peak_memory_mb: float

    @property
    def signal(self) -> int | None:
        if self.code < 0:
            return -self.code
        if self.code > _SHELL_SIGNAL_BASE and self.code - _SHELL_SIGNAL_BASE < signal.NSIG:
            return self.code - _SHELL_SIGNAL_BASE
        return None

    def killed_message(self) -> str | None:
        """The job's reason when a signal ended the step, else None."""
        sig = self.signal
        if sig is None:
            return None
        name = signal.Signals(sig).name if sig in signal.valid_signals() else f"signal {sig}"
        why = ", likely out of memory" if sig == signal.SIGKILL else f", {name}"
        return (
            f"the {self.step or 'pipeline'} step was killed (signal {sig}{why}); its peak "
            f"memory was {self.peak_memory_mb:.0f} MB (resident, with the processes it started)"
        )


exits: list[TaskExit] = []


def _step_name(command: list[str]) -> str | None:
    """The component function a kfp lightweight-component command runs."""
    for i, part in enumerate(command[:-1]):
        if part == "--function_to_execute":
            return command[i + 1]
    return None


def record(full_command: list[str], env_vars: dict[str, str] | None = None) -> int:
    """kfp.local's run_local_subprocess, keeping how the task ended in `exits`."""
    env = {**os.environ, **env_vars} if env_vars else None
    with subprocess.Popen(
        full_command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env=env,
    ) as process:
        if process.stdout:
            for line in iter(process.stdout.readline, ""):
                print(line, end="")
            print("\n")
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    # ru_maxrss is in KiB on Linux.
    exits.append(TaskExit(_step_name(full_command), process.returncode, usage.ru_maxrss / 1024))
    return process.returncode


def install() -> None:
    """Route kfp.local's SubprocessRunner tasks through `record` (the worker process only)."""
    from kfp.local import subprocess_task_handler

    subprocess_task_handler.run_local_subprocess = record


def last_killed() -> TaskExit | None:
    """The last task that a signal ended, if the last task that failed was one."""
    failed = [e for e in exits if e.code != 0]
    return failed[-1] if failed and failed[-1].signal is not None else None
