"""TrainingContext.imports_done: the phase is marked, and only a process that trains one job
freezes its import-time objects out of the garbage collector (checked in child processes)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = r"""
import gc, sys
from llama_stack_provider_kfp.core.phases import Phases
from llama_stack_provider_kfp.training.context import TrainingContext
phases = Phases("train", echo=False)
ctx = TrainingContext(None, None, None, "", None, None, None, phases, sys.argv[1] == "one")
before = gc.get_freeze_count()  # something at start-up may have frozen a few already
ctx.imports_done()
print(gc.get_freeze_count() > before, "imports_done" in phases.marks)
"""


@pytest.mark.parametrize(("kind", "frozen"), [("one", "True"), ("several", "False")])
def test_only_a_one_job_process_freezes_its_imports(kind, frozen):
    out = subprocess.run([sys.executable, "-c", CHILD, kind], capture_output=True, text=True,
                         check=True)  # fmt: skip
    assert out.stdout.split() == [frozen, "True"]
