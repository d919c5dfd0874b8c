"""A step process that succeeded ends without Python's teardown (training.steps
skip_teardown_on_success); one that did not keeps its traceback and exit status. Checked in
child processes by which exit handlers ran, not by how long they took."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

STEP = r"""
import atexit, logging, sys
atexit.register(lambda: print("TEARDOWN", flush=True))  # registered first: runs last
logging.basicConfig(stream=sys.stdout, level=logging.INFO)
from llama_stack_provider_kfp.training.steps import skip_teardown_on_success
succeeded = skip_teardown_on_success()
atexit.register(lambda: print("LIBRARY HANDLER", flush=True))  # as torch's: runs first
logging.info("LOGGED")
print("UNTERMINATED", end="")
how = sys.argv[1]
if how == "exit3":
    sys.exit(3)
if how == "raise":
    raise RuntimeError("the step failed")
succeeded()
if how == "raise_after":  # e.g. the executor failing to write its output file
    raise RuntimeError("after the step")
"""


def _run(how: str, runtime: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "_KFP_RUNTIME"}
    if runtime:
        env["_KFP_RUNTIME"] = "true"  # as KFP's component command sets it
    return subprocess.run([sys.executable, "-c", STEP, how], capture_output=True, text=True,
                          env=env)  # fmt: skip


def test_a_step_that_succeeded_skips_the_teardown_and_loses_no_output():
    done = _run("ok", runtime=True)
    assert done.returncode == 0, done.stderr
    assert "LOGGED" in done.stdout and "UNTERMINATED" in done.stdout
    assert "LIBRARY HANDLER" in done.stdout  # the step's libraries still cleaned up
    assert "TEARDOWN" not in done.stdout


@pytest.mark.parametrize(("how", "status"), [("exit3", 3), ("raise", 1), ("raise_after", 1)])
def test_a_step_that_did_not_succeed_exits_as_usual(how, status):
    done = _run(how, runtime=True)
    assert done.returncode == status
    assert "TEARDOWN" in done.stdout
    if how.startswith("raise"):
        assert "RuntimeError" in done.stderr


def test_outside_a_kfp_step_nothing_changes():
    done = _run("ok", runtime=False)
    assert done.returncode == 0 and "TEARDOWN" in done.stdout
