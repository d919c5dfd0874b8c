"""The test-only pause points (boundary.pause_points), in processes of their own as jobs meet them:
inert without KFP_TEST_PAUSE, per job and per point, announced with the pid, held until
released or killed, not ended by a signal whose handler returns, and fired once per arming."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from llama_stack_provider_kfp.boundary.pause_points import ENV, Pauses

# Reaches each `job/point` of its arguments in turn, saying so; SIGTERM's handler returns.
CHILD = (
    "import signal, sys;"
    "from llama_stack_provider_kfp.boundary.pause_points import reach;"
    "signal.signal(signal.SIGTERM, lambda *a: print('sigterm', flush=True));"
    "[(reach(a.split('/')[1], a.split('/')[0]), print('passed', a, flush=True))"
    " for a in sys.argv[1:]]"
)


def _start(pauses: Pauses | None, *stops: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != ENV}
    if pauses is not None:
        env.update(pauses.env)
    return subprocess.Popen([sys.executable, "-c", CHILD, *stops], env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip


def _passed(proc: subprocess.Popen) -> list[str]:
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, out
    return [line.split()[1] for line in out.splitlines() if line.startswith("passed ")]


def test_inert_without_the_environment_variable(tmp_path):
    pauses = Pauses(tmp_path)
    pauses.arm("j1", "train.step:1")
    assert _passed(_start(None, "j1/train.step:1")) == ["j1/train.step:1"]
    assert not (tmp_path / "j1" / "train.step:1.reached").exists()


def test_pauses_only_the_armed_point_of_the_armed_job_until_released(tmp_path):
    pauses = Pauses(tmp_path)
    pauses.arm("j1", "train.step:3")
    proc = _start(pauses, "j1/train.step:2", "j2/train.step:3", "j1/train.step:3", "j1/x")
    assert proc.stdout is not None
    try:
        assert pauses.wait("j1", "train.step:3", timeout=30) == proc.pid
        lines = [proc.stdout.readline().strip() for _ in range(3)]
        assert lines[:2] == ["passed j1/train.step:2", "passed j2/train.step:3"]
        assert lines[2].startswith("pause point train.step:3: paused")
        # A graceful-stop SIGTERM (its handler returns) leaves it paused: the test releases.
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline().strip() == "sigterm"
        time.sleep(0.3)  # had the signal ended the pause, it would have exited by now
        assert proc.poll() is None
        pauses.release("j1", "train.step:3")
        out, _ = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert out.splitlines() == ["pause point train.step:3: released", "passed j1/train.step:3",
                                "passed j1/x"]  # fmt: skip


def test_a_killed_pause_does_not_fire_again_until_armed_again(tmp_path):
    pauses = Pauses(tmp_path)
    pauses.arm("j1", "checkpoint.write:step_4")
    first = _start(pauses, "j1/checkpoint.write:step_4")
    assert pauses.wait("j1", "checkpoint.write:step_4", timeout=30) == first.pid
    first.send_signal(signal.SIGKILL)
    assert first.wait(30) == -signal.SIGKILL
    # A step restarted in place meets the same point: the arming has fired.
    assert _passed(_start(pauses, "j1/checkpoint.write:step_4")) == ["j1/checkpoint.write:step_4"]
    pauses.arm("j1", "checkpoint.write:step_4")
    again = _start(pauses, "j1/checkpoint.write:step_4")
    try:
        assert pauses.wait("j1", "checkpoint.write:step_4", timeout=30) == again.pid
    finally:
        pauses.release("j1", "checkpoint.write:step_4")
    assert _passed(again) == ["j1/checkpoint.write:step_4"]


def test_wait_fails_early_when_the_job_is_gone(tmp_path):
    pauses = Pauses(tmp_path)
    pauses.arm("j1", "train.step:1")
    try:
        pauses.wait("j1", "train.step:1", timeout=30, going=lambda: False)
    except AssertionError as e:
        assert "ended before pause point train.step:1" in str(e)
    else:
        raise AssertionError("wait returned for a job that never paused")
