"""The train step's experiment tracking: what a request's logger_config names (core.tracking).

Logged: the job's parameters at the start; per optimizer step loss, learning rate and tokens
per second (from training.progress, for every engine); per epoch the validation metrics and the
checkpoint's location; at the end the result summary. Each tracker's library is imported only
when the job names it, and only rank 0 logs. A tracker that fails is dropped with a warning in
the step's log and in tracking.json: tracking never stops the training.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from ..boundary.files import write_json
from ..core.outputs import TRACKING, epoch_dir
from ..core.spec import JobSpec
from ..core.tracking import MLflowTracking, TensorBoardTracking, WandbTracking

if TYPE_CHECKING:
    from .io import Output


def job_params(spec: JobSpec) -> dict[str, Any]:
    """The job's hyper-parameters, flat, as every tracker shows them."""
    t, o = spec.train, spec.optim
    params: dict[str, Any] = {
        "job_uuid": spec.job_uuid,
        "model": spec.model.name,
        "model_family": spec.model.family,
        "engine": spec.engine.name,
        "algorithm": spec.algorithm,
        "data_format": spec.data.data_format,
        "epochs": t.epochs,
        "max_steps_per_epoch": t.max_steps_per_epoch,
        "batch_size": t.batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "max_seq_len": t.max_seq_len,
        "packed": t.packed,
        "train_on_input": t.train_on_input,
        "dtype": t.dtype,
        "seed": t.seed,
        "optimizer": o.type,
        "lr": o.lr,
        "weight_decay": o.weight_decay,
        "warmup_steps": o.warmup_steps,
        "warmup_ratio": o.warmup_ratio,
        "output_uri": spec.output_uri,
    }
    if spec.lora is not None:
        params.update(
            lora_rank=spec.lora.rank,
            lora_alpha=spec.lora.alpha,
            lora_modules=",".join(spec.lora.target_modules or spec.lora.attn_modules),
            lora_apply_to_mlp=spec.lora.apply_to_mlp,
        )
    if spec.dpo is not None:
        params.update(dpo_beta=spec.dpo.beta, dpo_loss_type=spec.dpo.loss_type)
    return params


def epoch_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """An epoch's metrics.json under the names the trackers show (validation/loss, ...)."""
    named = {}
    for key, value in metrics.items():
        if not isinstance(value, int | float) or isinstance(value, bool) or key == "global_step":
            continue
        if key == "perplexity":
            named["validation/perplexity"] = float(value)
        elif key.startswith("validation_"):
            named[f"validation/{key.removeprefix('validation_')}"] = float(value)
        else:
            named[f"epoch/{key}"] = float(value)
    return named


def _scalars(result: dict[str, Any]) -> dict[str, float]:
    return {
        f"result/{k}": float(v)
        for k, v in result.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }


class _Sink(Protocol):
    def start(self, params: dict[str, Any]) -> dict[str, Any]: ...
    def log(self, metrics: dict[str, float], step: int) -> None: ...
    def checkpoint(self, epoch: int, uri: str, step: int) -> None: ...
    def close(self, result: dict[str, Any] | None, ok: bool) -> None: ...


class Tracker:
    """Fans the job's metrics out to its trackers; does nothing when the job names none."""

    def __init__(self) -> None:
        self._sinks: dict[str, _Sink] = {}
        self.info: dict[str, dict[str, Any]] = {}
        self._output: Output | None = None
        self._step = 0

    def start(self, spec: JobSpec, output: Output, main: bool = True) -> None:
        t = spec.tracking
        if t is None or not main:  # only the main rank logs when several train
            return
        self._output = output
        params = job_params(spec)
        for name, make in (
            ("mlflow", lambda: _MLflow(t.mlflow, spec) if t.mlflow else None),
            ("tensorboard", lambda: _TensorBoard(t.tensorboard, output) if t.tensorboard else None),
            ("wandb", lambda: _Wandb(t.wandb, spec, output) if t.wandb else None),
        ):
            try:
                sink = make()
                if sink is not None:
                    self.info[name] = sink.start(params)
                    self._sinks[name] = sink
            except Exception as e:
                self._drop(name, e)
        self._publish()

    def log_step(self, metrics: dict[str, Any], step: int) -> None:
        self._step = step
        values = {k: float(v) for k, v in metrics.items() if v is not None}
        self._each(lambda s: s.log(values, step))

    def log_epoch(self, epoch: int, metrics: dict[str, Any]) -> None:
        step = int(metrics.get("global_step") or self._step)
        named = epoch_metrics({**metrics, "epoch": epoch})
        self._each(lambda s: s.log(named, step))
        if self._output is not None:
            uri = str(self._output.location.join(epoch_dir(epoch)))
            self._each(lambda s: s.checkpoint(epoch, uri, step))

    def finish(self, result: dict[str, Any] | None, ok: bool) -> None:
        self._each(lambda s: s.close(result, ok))
        self._sinks.clear()
        if self.info:
            self._publish()

    def _each(self, call) -> None:
        for name, sink in list(self._sinks.items()):
            try:
                call(sink)
            except Exception as e:
                self._drop(name, e)
                self._publish()

    def _drop(self, name: str, e: Exception) -> None:
        self._sinks.pop(name, None)
        warning = f"{type(e).__name__}: {e}"[:500]
        if isinstance(e, ImportError):
            warning += " (install llama-stack-provider-kfp[tracking])"
        print(f"tracking: {name} stopped, training goes on: {warning}", flush=True)
        self.info[name] = {**self.info.get(name, {}), "warning": warning}

    def _publish(self) -> None:
        if self._output is not None:
            write_json(self._output.local / TRACKING, self.info, durable=False)
            self._output.push(TRACKING)


@contextlib.contextmanager
def tracking(spec: JobSpec, output: Output, main: bool = True) -> Iterator[Tracker]:
    """The job's Tracker while the step trains (the engine gets it in its TrainingContext);
    its runs are ended as finished or failed with the step. Inert on ranks other than the
    main one."""
    tracker = Tracker()
    tracker.start(spec, output, main)
    try:
        yield tracker
    except BaseException:
        tracker.finish(None, ok=False)
        raise


class _MLflow:
    def __init__(self, cfg: MLflowTracking, spec: JobSpec) -> None:
        # A tracking server that stops answering must not hold the training for minutes
        # (MLflow's defaults: 7 retries with backoff, 120 s per request); the user's own
        # settings win.
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
        from mlflow import MlflowClient

        self.cfg, self.spec = cfg, spec
        self.client = MlflowClient(tracking_uri=cfg.tracking_uri)
        self.run_id = ""

    def start(self, params: dict[str, Any]) -> dict[str, Any]:
        from mlflow.entities import Param

        name = self.cfg.experiment_name
        found = self.client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else self.client.create_experiment(name)
        run = self.client.create_run(
            experiment_id,
            run_name=self.cfg.run_name or self.spec.job_uuid,
            tags={"llama_stack.job_uuid": self.spec.job_uuid, **self.cfg.tags},
        )
        self.run_id = run.info.run_id
        self.client.log_batch(
            self.run_id, params=[Param(k, str(v)[:6000]) for k, v in params.items()]
        )
        info = {"run_id": self.run_id, "experiment_id": experiment_id}
        info["tracking_uri"] = self.cfg.tracking_uri
        if self.cfg.tracking_uri.startswith(("http://", "https://")):
            base = self.cfg.tracking_uri.rstrip("/")
            info["run_url"] = f"{base}/#/experiments/{experiment_id}/runs/{self.run_id}"
        return info

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(
            self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()]
        )

    def checkpoint(self, epoch: int, uri: str, step: int) -> None:
        self.client.set_tag(self.run_id, f"checkpoint.epoch_{epoch}", uri)

    def close(self, result: dict[str, Any] | None, ok: bool) -> None:
        if result is not None:
            self.log(_scalars(result), int(result.get("global_step") or 0))
            self.client.log_dict(self.run_id, result, "result.json")
        self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


def _under(output: Output, path: Path) -> str | None:
    """`path` relative to the job's output folder (uploaded at the end), or None."""
    try:
        return path.resolve().relative_to(output.local.resolve()).as_posix()
    except ValueError:
        return None


class _TensorBoard:
    def __init__(self, cfg: TensorBoardTracking, output: Output) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.output = output
        self.dir = Path(cfg.log_dir) if cfg.log_dir else output.local / "tensorboard"
        self.writer = SummaryWriter(log_dir=str(self.dir), flush_secs=5)

    def start(self, params: dict[str, Any]) -> dict[str, Any]:
        rows = "\n".join(f"| {k} | {v} |" for k, v in params.items())
        self.writer.add_text("params", f"| param | value |\n|---|---|\n{rows}", 0)
        rel = _under(self.output, self.dir)
        return {"log_dir": str(self.output.location.join(rel)) if rel else str(self.dir)}

    def log(self, metrics: dict[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)

    def checkpoint(self, epoch: int, uri: str, step: int) -> None:
        self.writer.add_text(f"checkpoints/epoch_{epoch}", uri, step)

    def close(self, result: dict[str, Any] | None, ok: bool) -> None:
        if result is not None:
            summary = {k: v for k, v in result.items() if k != "epochs"}
            self.writer.add_text("result", f"```\n{json.dumps(summary, indent=1)}\n```", 0)
        self.writer.close()
        rel = _under(self.output, self.dir)
        if rel:
            self.output.push(rel)


class _Wandb:
    def __init__(self, cfg: WandbTracking, spec: JobSpec, output: Output) -> None:
        import wandb

        self.wandb, self.cfg, self.spec, self.output = wandb, cfg, spec, output
        self.dir = Path(cfg.dir) if cfg.dir else output.local
        self.run: Any = None

    def start(self, params: dict[str, Any]) -> dict[str, Any]:
        c = self.cfg
        self.dir.mkdir(parents=True, exist_ok=True)
        self.run = self.wandb.init(
            project=c.project,
            entity=c.entity,
            name=c.name or self.spec.job_uuid,
            mode=c.mode,
            group=c.group,
            job_type=c.job_type,
            notes=c.notes,
            tags=list(c.tags),
            dir=str(self.dir),
            config=params,
            # kfp.local patches print and the step's log is plain text: no console capture.
            settings=self.wandb.Settings(console="off", x_disable_stats=True),
        )
        info = {"run_id": self.run.id, "mode": c.mode, "dir": str(Path(self.run.dir).parent)}
        if c.mode == "online":
            info["run_url"] = self.run.url
        return info

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.run.log(metrics, step=step)

    def checkpoint(self, epoch: int, uri: str, step: int) -> None:
        self.run.summary[f"checkpoint/epoch_{epoch}"] = uri

    def close(self, result: dict[str, Any] | None, ok: bool) -> None:
        if result is not None:
            self.run.summary.update(_scalars(result))
        self.run.finish(exit_code=0 if ok else 1)
        rel = _under(self.output, self.dir / "wandb")
        if rel:
            self.output.push(rel)
