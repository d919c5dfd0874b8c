"""The job output layout, read back: complete epochs only, in order; errors without their
traceback; progress written at most once a second and a bounded loss history."""

from __future__ import annotations

import json

import pytest

from llama_stack_provider_kfp.boundary.files import write_json
from llama_stack_provider_kfp.boundary.job_outputs import JobOutputs, write_error
from llama_stack_provider_kfp.core.locations import parse
from llama_stack_provider_kfp.core.outputs import MAX_LOSS_HISTORY, StepError, epoch_dir
from llama_stack_provider_kfp.training import progress as progress_module
from llama_stack_provider_kfp.training.progress import ProgressLogger


def _epoch(out, name: str, metrics: dict | None) -> None:
    d = out / "checkpoints" / name
    (d / "merged").mkdir(parents=True)
    if metrics is not None:
        write_json(d / "metrics.json", metrics)


def test_only_complete_epochs_are_listed_in_order(tmp_path):
    created = "2026-11-24T00:00:00+00:00"
    for n in (10, 2, 1):
        _epoch(tmp_path, f"epoch_{n}", {"created_at": created, "train_loss": float(n)})
    _epoch(tmp_path, "epoch_3.partial", {"created_at": created})  # being written
    _epoch(tmp_path, "epoch_4", None)  # metrics.json is written last: not finished
    _epoch(tmp_path, "notes", {"created_at": created})
    found = JobOutputs(parse(str(tmp_path))).checkpoints()
    assert [c.epoch for c in found] == [1, 2, 10]
    assert found[0].path == str(tmp_path / epoch_dir(1)) and found[0].train_loss == 1.0


def test_error_round_trip_drops_the_traceback(tmp_path):
    loc = parse(str(tmp_path))
    write_error(loc, StepError(step="train", message="ValueError: x", traceback="Traceback..."))
    assert "Traceback" in (tmp_path / "error.json").read_text()  # kept for the step's log
    error = JobOutputs(loc).error()
    assert error is not None and error.message == "ValueError: x" and error.traceback is None


def test_missing_outputs_read_as_none(tmp_path):
    outputs = JobOutputs(parse(str(tmp_path / "nothing-yet")))
    assert outputs.progress() is None and outputs.error() is None
    assert outputs.checkpoints() == []


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> _Clock:
    c = _Clock()
    monkeypatch.setattr(progress_module.time, "perf_counter", c)
    return c


def _step_on_disk(path) -> int:
    return json.loads(path.read_text())["progress"]["step"]


def test_progress_is_throttled_but_the_last_step_is_always_written(tmp_path, clock):
    path = tmp_path / "progress.json"
    logger = ProgressLogger(str(path))
    writes = []
    logger.on_write = lambda: writes.append(_step_on_disk(path))
    logger.begin(total_steps=10, steps_per_epoch=5, total_epochs=2)
    for step in range(1, 11):
        clock.now += 0.3  # ~3 steps a second
        logger.log_dict({"loss": 5.0, "tokens_per_second_per_gpu": 10.0}, step)
    # begin, then at most once a second, then the final step whatever the clock says.
    assert writes[0] == 0 and writes[-1] == 10
    assert writes == [0, 1, 5, 9, 10]
    assert json.loads(path.read_text())["progress"]["epoch"] == 2


def test_close_flushes_a_pending_step(tmp_path, clock):
    path = tmp_path / "progress.json"
    logger = ProgressLogger(str(path))
    logger.begin(total_steps=100, steps_per_epoch=100, total_epochs=1)
    logger.log_dict({"loss": 3.0}, 1)
    clock.now += 0.1
    logger.log_dict({"loss": 2.0}, 2)
    assert _step_on_disk(path) == 1
    logger.close()
    assert _step_on_disk(path) == 2


def test_loss_history_stays_bounded_and_spans_the_run(tmp_path, clock):
    logger = ProgressLogger(str(tmp_path / "progress.json"))
    steps = 5 * MAX_LOSS_HISTORY
    logger.begin(total_steps=steps, steps_per_epoch=steps, total_epochs=1)
    for step in range(1, steps + 1):
        clock.now += 0.01
        logger.log_dict({"loss": 1.0 / step}, step)
    history = json.loads((tmp_path / "progress.json").read_text())["loss_history"]
    assert MAX_LOSS_HISTORY // 2 <= len(history) <= MAX_LOSS_HISTORY
    recorded = [s for s, _ in history]
    assert recorded == sorted(recorded)
    assert recorded[0] <= logger.stride and recorded[-1] > steps - 2 * logger.stride


def test_log_tail_from_the_local_log_file_or_the_steps_logs(tmp_path):
    log = tmp_path / "worker.log"
    log.write_text("".join(f"line {n}\n" for n in range(80)) + "\x1b[92mSUCCESS\x1b[0m\r\n")
    with_file = JobOutputs(parse(str(tmp_path / "out")), log_file=log)
    assert with_file.log_tail() == [*(f"line {n}" for n in range(31, 80)), "SUCCESS"]
    assert with_file.log_tail(2) == ["line 79", "SUCCESS"]
    # Without a log file: the steps' own logs (remote layout), in the order the steps ran.
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "train.log").write_text("train 1\ntrain 2")  # no final newline yet
    (out / "logs" / "prepare-data.log").write_text("prepare 1\n")
    assert JobOutputs(parse(str(out))).log_tail() == ["prepare 1", "train 1", "train 2"]
    assert JobOutputs(parse(str(tmp_path / "nothing"))).log_tail() == []
