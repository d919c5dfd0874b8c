"""Publishes job progress to `<output>/progress.json` (core.outputs), for every engine, and
hands each step's and epoch's metrics to the job's experiment trackers (training.tracking).

It has torchtune's MetricLoggerInterface (the recipe calls `log_dict` after every optimizer
step); the server reads the file when a client asks for the job's status.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..boundary import pause_points
from ..boundary.files import write_json
from ..core.outputs import MAX_LOSS_HISTORY, PROGRESS, versioned
from ..core.phases import Phases
from .tracking import Tracker

if TYPE_CHECKING:
    from .io import Output

WRITE_EVERY_SECONDS = 1.0  # progress.json is rewritten at most this often (and at the end)


class ProgressLogger:
    """Implements torchtune's MetricLoggerInterface (log, log_dict, log_config, close)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.facts: dict[str, Any] = {}
        self.total_steps = 0
        self.steps_per_epoch = 1
        self.total_epochs = 1
        self.history: list[list[float]] = []
        self.stride = 1
        self._input_tokens = 0
        self._started = self._last = time.perf_counter()
        self._tps: list[float] = []
        self._trained_tps: list[float] = []
        self.on_write = lambda: None  # e.g. upload progress.json when the output is remote
        self.tracker = Tracker()
        self._written_at = -1e9
        self._pending: dict[str, Any] | None = None
        self.start_step = 0  # > 0 when the job continues a checkpoint
        self.job: str | None = None  # set on the rank that publishes (attach)
        self.phases: Phases | None = None  # published with the progress (attach)

    def restore(self, history: list[list[float]], stride: int, step: int) -> None:
        """Continue a resumed job's loss curve where its checkpoint left it."""
        self.history = [[int(s), float(v)] for s, v in history]
        self.stride, self.start_step = stride, step

    def attach(
        self, output: Output, tracker: Tracker, job: str | None = None, phases: Phases | None = None
    ) -> None:
        """Publish through the job's output: progress.json uploaded (at most every 5 s when
        remote), metrics to its trackers. `job` names the job for its test pause points;
        `phases` (core.phases) go into progress.json, first_step and training_done marked
        here."""
        self.on_write = lambda: output.push(PROGRESS, 5.0)
        self.tracker = tracker
        self.job = job
        self.phases = phases

    def begin(self, total_steps: int, steps_per_epoch: int, total_epochs: int, **facts) -> None:
        self.total_steps, self.steps_per_epoch = total_steps, max(steps_per_epoch, 1)
        self.total_epochs = total_epochs
        self.facts.update(facts)
        self._started = self._last = time.perf_counter()
        self._write(
            {"step": self.start_step, "loss": None, "tokens_per_second": None, "eta_seconds": None}
        )

    def preparing(self, key: str, facts: dict[str, Any]) -> None:
        """What the step does before its first optimizer step (OSFT's SVD), in progress.json
        under `key` while it runs and after: a long preparation does not look like a hang."""
        self.facts[key] = facts
        self._write(
            {"step": self.start_step, "loss": None, "tokens_per_second": None, "eta_seconds": None}
        )

    def add_input_tokens(self, n: int) -> None:
        self._input_tokens += n

    def log_config(self, config: Any) -> None:
        pass

    def log(self, name: str, data: Any, step: int) -> None:
        self.log_dict({name: data}, step)

    def log_dict(self, payload: dict[str, Any], step: int) -> None:
        if self.phases is not None:
            self.phases.mark("first_step")  # the first one counts
            if step >= self.total_steps:
                self.phases.mark("training_done")
        now = time.perf_counter()
        dt, self._last = max(now - self._last, 1e-9), now
        tps = self._input_tokens / dt
        self._input_tokens = 0
        self._tps.append(tps)
        trained = float(payload.get("tokens_per_second_per_gpu", 0.0))
        self._trained_tps.append(trained)
        loss = float(payload["loss"]) if "loss" in payload else None
        if loss is not None and step % self.stride == 0:
            self.history.append([step, round(loss, 6)])
            if len(self.history) > MAX_LOSS_HISTORY:  # keep it bounded: halve the resolution
                self.history, self.stride = self.history[::2], self.stride * 2
        per_step = (now - self._started) / max(step - self.start_step, 1)
        self._pending = {
            "step": step,
            "loss": loss,
            "lr": payload.get("lr"),
            "tokens_per_second": round(tps, 2),
            "trained_tokens_per_second": round(trained, 2),
            "eta_seconds": round(per_step * (self.total_steps - step), 1),
            # With clipping on: the gradients' total norm before clipping.
            **{k: round(float(v), 6) for k, v in payload.items() if k == "grad_norm"},
            # DPO: rewards_chosen / rewards_rejected / reward_margin / reward_accuracy
            **{k: round(float(v), 6) for k, v in payload.items() if k.startswith("reward")},
        }
        rewards = {k: v for k, v in self._pending.items() if k.startswith("reward")}
        self.tracker.log_step(
            {
                "train/loss": loss,
                "train/lr": self._pending["lr"],
                "train/tokens_per_second": tps,
                "train/trained_tokens_per_second": trained,
                **{f"train/{k}": v for k, v in self._pending.items() if k == "grad_norm"},
                **{f"train/{k}": v for k, v in rewards.items()},
            },
            step,
        )
        if step >= self.total_steps or now - self._written_at >= WRITE_EVERY_SECONDS:
            self._flush()
        if pause_points.armed(f"train.step:{step}", self.job):  # tests only
            self._flush()  # a paused job shows the step it stopped after
            pause_points.reach(f"train.step:{step}", self.job)

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        """A finished epoch's metrics (its metrics.json) for the trackers."""
        self.tracker.log_epoch(epoch, metrics)

    def _flush(self) -> None:
        if self._pending is not None:
            self._written_at = time.perf_counter()
            self._write(self._pending)
            self._pending = None

    def throughput(self) -> dict[str, float | None]:
        """Median tokens/s over steps 2..N (step 1 carries one-off warm-up costs): non-padding
        tokens fed to the model, and label tokens (torchtune's own figure)."""

        def median(series: list[float]) -> float | None:
            window = sorted(series[1:] or series)
            return round(window[len(window) // 2], 2) if window else None

        return {
            "tokens_per_second": median(self._tps),
            "trained_tokens_per_second": median(self._trained_tps),
        }

    def _write(self, progress: dict[str, Any]) -> None:
        step = progress["step"]
        progress.update(
            total_steps=self.total_steps,
            epoch=min((step - 1) // self.steps_per_epoch + 1 if step else 0, self.total_epochs),
            total_epochs=self.total_epochs,
        )
        phases = {"phases": self.phases.as_dict()} if self.phases is not None else {}
        write_json(
            self.path,
            versioned({"progress": progress, "loss_history": self.history, **self.facts, **phases}),
            durable=False,
        )
        self.on_write()

    def close(self) -> None:
        self._flush()
