"""Where a job's fixed seconds go: per process (the local worker, prepare-data, train), the
seconds from the process's own start to each phase it reaches.

The start is the kernel's (/proc/self/stat's starttime against the boot clock /proc/uptime
reads, both in 10 ms ticks), so a mark includes the interpreter's start and every import
before the first line of our code ran. psutil's create_time() is no substitute: it adds the
integer boot time, off by up to a second. Elsewhere than Linux, the start is when this module
was imported.

Each mark is printed as one line in the step's log (the job's log) and kept in a dict that
progress.json and result.json carry as `phases` (core.outputs.StatusResources):

    {"train": {"started_at": 1790000000.12, "step_entered": 1.31, "imports_done": 4.02, ...},
     "prepare-data": {...}, "worker": {...}}

`started_at` (Unix time) places the processes on one time line: the gaps between them are
what the pipeline runner itself costs (kfp.local's task start-up and hand-over).
"""

from __future__ import annotations

import os
import time
from typing import Any

_IMPORTED = time.monotonic()


def process_age() -> float:
    """Seconds since this process started, as the kernel counts it."""
    try:
        with open("/proc/self/stat", "rb") as fh:
            stat = fh.read()
        # The command name (field 2) may hold spaces and parentheses: split after its ")".
        start_ticks = int(stat[stat.rindex(b")") + 2 :].split()[19])
        boot_clock = time.clock_gettime(time.CLOCK_BOOTTIME)  # what /proc/uptime reads
        return max(boot_clock - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError, AttributeError):
        return time.monotonic() - _IMPORTED


class Phases:
    """The phases of one process (`name`), plus those other processes of the job reported
    (`merge`): prepare-data's reach the train step through its output artifact's metadata."""

    def __init__(self, name: str, echo: bool = True) -> None:
        self.name = name
        self.echo = echo
        age = process_age()
        self._mono_start = time.monotonic() - age
        self.marks: dict[str, float] = {"started_at": round(time.time() - age, 2)}
        self.others: dict[str, dict[str, float]] = {}

    def mark(self, phase: str) -> float:
        """Record (once: the first time counts) and print the seconds since the start."""
        seconds = round(time.monotonic() - self._mono_start, 2)
        if phase not in self.marks:
            self.marks[phase] = seconds
            if self.echo:
                print(f"phase: {self.name} {phase} at {seconds:.2f} s", flush=True)
        return seconds

    def add(self, what: str, seconds: float) -> None:
        """Accumulate a duration that recurs (e.g. `export_seconds`, once per epoch)."""
        self.marks[what] = round(self.marks.get(what, 0.0) + seconds, 2)

    def merge(self, phases: dict[str, Any] | None) -> None:
        """Add the phases other processes recorded (their dict as `as_dict` gives it), in time
        order (an artifact's metadata does not keep the order)."""
        for name, marks in (phases or {}).items():
            if name != self.name and isinstance(marks, dict):
                start = {k: float(v) for k, v in marks.items() if k == "started_at"}
                rest = sorted(
                    ((float(v), _rank(k), k) for k, v in marks.items() if k != "started_at")
                )
                self.others[name] = {**start, **{k: v for v, _, k in rest}}

    def as_dict(self) -> dict[str, dict[str, float]]:
        return {**self.others, self.name: dict(self.marks)}


# The phases a step marks, in the order it reaches them (ties: marks 10 ms apart or less).
ORDER = ["step_entered", "imports_done", "model_loaded", "first_step", "training_done",
         "exports_done", "done"]  # fmt: skip


def _rank(mark: str) -> int:
    return ORDER.index(mark) if mark in ORDER else len(ORDER)


def add_phases(data: dict[str, Any], name: str, marks: dict[str, float]) -> dict[str, Any]:
    """`data` (a progress.json or result.json) with one more process's phases."""
    phases = data.get("phases")
    return {**data, "phases": {**(phases if isinstance(phases, dict) else {}), name: marks}}
