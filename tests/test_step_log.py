"""A remote step's log reaches the job's output prefix while the step runs, and the server reads
its tail back through boundary.job_outputs.JobOutputs (what the status shows as `log_tail`).

Each step runs in a process of its own, as in a pod; S3 is moto on loopback (tests/s3_server.py,
the stand-in for MinIO/ODF/Ceph) reached through real boto3.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest
from s3_server import s3_server

from llama_stack_provider_kfp.boundary import storage
from llama_stack_provider_kfp.boundary.job_outputs import JobOutputs
from llama_stack_provider_kfp.core.locations import parse
from llama_stack_provider_kfp.core.outputs import LOG_TAIL_LINES
from llama_stack_provider_kfp.training.step_log import KEEP_BYTES

# moto's state is per process, shared by every test's server: a prefix no other test writes.
OUTPUT = f"s3://kfp/jobs/step-log-{uuid.uuid4().hex[:8]}/output"

# The step: output through Python, the raw file descriptor and a child process; it waits until
# the server-side reader sees those lines (so they were uploaded while it still ran), then fails.
STEP = textwrap.dedent(
    """
    import os, subprocess, sys, time
    from llama_stack_provider_kfp.core.locations import parse
    from llama_stack_provider_kfp.boundary.job_outputs import JobOutputs
    from llama_stack_provider_kfp.training.step_log import ship_log

    output, step, lines = sys.argv[1], sys.argv[2], int(sys.argv[3])
    with ship_log(output, step, every=0.1):
        for n in range(lines):
            print(f"{step} line {n}", flush=True)
        os.write(2, f"{step} raw stderr\\n".encode())
        subprocess.run(["echo", f"{step} child process"], check=True)
        if step == "train":
            deadline = time.monotonic() + 60
            while f"{step} child process" not in JobOutputs(parse(output)).log_tail():
                assert time.monotonic() < deadline, "never uploaded while running"
                time.sleep(0.05)
            print("seen while running", flush=True)
            raise ValueError("boom in the train step")
    """
)


@pytest.fixture(scope="module")
def s3():
    with s3_server() as env:
        storage.client().create_bucket(Bucket="kfp")
        yield env


def _step(step: str, lines: int, output: str = OUTPUT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", STEP, output, step, str(lines)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_step_log_is_uploaded_as_it_runs_and_read_back(s3):
    prepare = _step("prepare-data", 3)
    assert prepare.returncode == 0, prepare.stderr
    train = _step("train", 5)
    assert train.returncode == 1

    # Every byte still reaches the pod log (the process's stdout), in the order written.
    lines = train.stdout.splitlines()
    assert lines[:5] == [f"train line {n}" for n in range(5)]
    assert lines[5:8] == ["train raw stderr", "train child process", "seen while running"]

    tail = JobOutputs(parse(OUTPUT)).log_tail()
    # Both steps, in the order they ran; the failure's traceback is in the uploaded log.
    assert tail[:3] == ["prepare-data line 0", "prepare-data line 1", "prepare-data line 2"]
    assert tail[3:5] == ["prepare-data raw stderr", "prepare-data child process"]
    assert tail[5:13] == [*lines[:8]]  # the train step's log, as the pod log shows it
    assert "seen while running" in tail  # the last upload, at the end of the step
    assert tail[-1] == "ValueError: boom in the train step"


def test_uploaded_log_and_tail_are_bounded(s3):
    output = "s3://kfp/jobs/j2/output"
    result = _step("prepare-data", 20000, output)  # ~400 kB of output
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("\n") >= 20000  # the pod log keeps everything
    body = storage.read_tail(parse(f"{output}/logs/prepare-data.log"), 10**7)
    assert body is not None and len(body.encode()) <= KEEP_BYTES
    assert body.endswith("prepare-data line 19999\nprepare-data raw stderr\n"
                         "prepare-data child process\n")  # fmt: skip
    tail = JobOutputs(parse(output)).log_tail()
    assert len(tail) == LOG_TAIL_LINES
    assert tail[-3:] == ["prepare-data line 19999", "prepare-data raw stderr",
                         "prepare-data child process"]  # fmt: skip
    # Whole lines only, though both the kept log and the read start inside a line.
    assert all(line.startswith("prepare-data line ") for line in tail[:-2])
    assert all(int(line.split()[-1]) > 19900 for line in tail[:-2])
