"""Phase timings of a job's processes (core.phases): seconds from the process's own start."""

from __future__ import annotations

import subprocess
import sys
import time

from llama_stack_provider_kfp.core.phases import Phases, add_phases, process_age


def test_a_process_age_counts_from_the_kernels_start_of_the_process():
    # A child reports its age just before it exits: it cannot exceed the time the parent saw
    # it run, and the interpreter's start is in it (it is not zero).
    code = "from llama_stack_provider_kfp.core.phases import process_age; print(process_age())"
    start = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    elapsed = time.monotonic() - start
    age = float(out.stdout)
    assert 0 < age <= elapsed + 0.02  # the kernel counts in 10 ms ticks


def test_marks_are_kept_once_printed_and_shown_beside_other_processes(capsys):
    phases = Phases("train")
    first = phases.mark("step_entered")
    assert phases.mark("step_entered") >= first
    assert phases.marks["step_entered"] == first  # the first time counts
    phases.add("export_seconds", 0.5)
    phases.add("export_seconds", 0.25)
    phases.merge({"prepare-data": {"started_at": 1.0, "done": 0.3}, "train": {"x": 1}})
    out = phases.as_dict()
    assert out["prepare-data"] == {"started_at": 1.0, "done": 0.3}
    assert out["train"]["export_seconds"] == 0.75
    assert abs(out["train"]["started_at"] - (time.time() - process_age())) < 0.1
    assert "x" not in out["train"]  # our own marks are ours
    assert capsys.readouterr().out.count("phase: train step_entered at ") == 1
    Phases("rank", echo=False).mark("a")
    assert not capsys.readouterr().out


def test_another_process_adds_its_phases_to_a_file():
    data = {"progress": {}, "phases": {"train": {"done": 2.0}}}
    assert add_phases(data, "worker", {"pipeline_done": 3.0})["phases"] == {
        "train": {"done": 2.0},
        "worker": {"pipeline_done": 3.0},
    }
    assert add_phases({}, "worker", {"a": 1.0}) == {"phases": {"worker": {"a": 1.0}}}


def test_phases_from_an_artifacts_metadata_come_back_in_time_order():
    # KFP's metadata (a protobuf Struct) sorts the keys; marks 10 ms apart round to one value.
    phases = Phases("train", echo=False)
    phases.merge({"prepare-data": {"done": 0.3, "started_at": 5.0, "step_entered": 0.3}})
    assert list(phases.as_dict()["prepare-data"]) == ["started_at", "step_entered", "done"]
