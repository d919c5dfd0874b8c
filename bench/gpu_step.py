"""One measured run of bench/gpu_train.py: a JobSpec as the train step receives it, trained by
the engine through its entry (TrainingContext + get_engine(name).train), timed at each
optimizer step's end through the progress logger both engines report to."""

from __future__ import annotations

import contextlib
import functools
import itertools
import sys
import time
from pathlib import Path
from typing import Any

from gpu_configs import FORBIDDEN


class _Measured(Exception):
    """Raised from the progress hook after the last measured step: the run ends there, before
    the epoch's export (neither run nor timed)."""


class StepClock:
    """Wraps ProgressLogger (once per process): each optimizer step's end time, the
    non-padding tokens fed during it, the engine's label-token figure, its loss and the
    CUDA peak so far."""

    def __init__(self, cuda: bool) -> None:
        import torch

        from llama_stack_provider_kfp.training.progress import ProgressLogger

        self.steps: list[dict[str, float]] = []
        self.total = 0
        self._fed = 0
        add_tokens, log_dict = ProgressLogger.add_input_tokens, ProgressLogger.log_dict
        clock = self

        def counting(logger: ProgressLogger, n: int) -> None:
            clock._fed += n
            add_tokens(logger, n)

        def stepped(logger: ProgressLogger, payload: dict[str, Any], step: int) -> None:
            if cuda:
                torch.cuda.synchronize()
            clock.steps.append({
                "at": time.perf_counter(), "tokens": clock._fed,
                "label_tps": float(payload.get("tokens_per_second_per_gpu", 0.0)),
                "loss": float(payload["loss"]),
                "peak": torch.cuda.max_memory_allocated() if cuda else 0})  # fmt: skip
            clock._fed = 0
            log_dict(logger, payload, step)
            if step >= clock.total:
                raise _Measured

        ProgressLogger.add_input_tokens = counting  # type: ignore[method-assign]
        ProgressLogger.log_dict = stepped  # type: ignore[method-assign]

    def start(self, total: int) -> None:
        self.steps, self.total, self._fed = [], total, 0


_CLOCK: StepClock | None = None


def train_run(cfg: dict, one_job_process: bool) -> dict:
    import torch

    from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
    from llama_stack_provider_kfp.core.lora_targets import resolve
    from llama_stack_provider_kfp.core.phases import Phases
    from llama_stack_provider_kfp.core.spec import (
        DataSpec,
        EngineChoice,
        JobSpec,
        LoraSpec,
        OptimSpec,
        TrainSpec,
    )
    from llama_stack_provider_kfp.training.context import TrainingContext
    from llama_stack_provider_kfp.training.distributed import Ranks
    from llama_stack_provider_kfp.training.engine import get_engine
    from llama_stack_provider_kfp.training.io import Output
    from llama_stack_provider_kfp.training.tracking import Tracker

    global _CLOCK
    cuda = cfg["device"] == "cuda"
    if cuda and not torch.cuda.is_available():
        raise RuntimeError("device cuda but torch.cuda.is_available() is False")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model_dir, work = Path(cfg["model_dir"]), Path(cfg["work"])
    model = inspect_model_dir(cfg["model"], model_dir)
    lora = None
    if cfg["algorithm"] == "lora":
        attn = ["q_proj", "v_proj", "output_proj"]  # torchtune's configs
        targets = resolve(attn, True, False, model.modules, model.is_tied)
        lora = LoraSpec(rank=cfg["rank"], alpha=cfg["alpha"], attn_modules=attn,
                        apply_to_mlp=True, apply_to_output=False,
                        target_modules=targets.peft)  # fmt: skip
    total = cfg["warmup"] + cfg["steps"]
    spec = JobSpec(
        job_uuid=cfg["name"], engine=EngineChoice(name=cfg["engine"], reason="bench/gpu.sh"),
        model=model, data=DataSpec(uri=cfg["rows"], data_format="instruct"),
        train=TrainSpec(epochs=1, max_steps_per_epoch=total, gradient_accumulation_steps=1,
                        batch_size=cfg["batch"], shuffle=False, train_on_input=False,
                        packed=cfg["packed"], dtype="bf16", max_validation_steps=None,
                        max_seq_len=cfg["max_seq_len"], seed=42, device=cfg["device"],
                        enable_activation_checkpointing=cfg["ckpt"]),
        lora=lora, optim=OptimSpec(type="adamw", lr=cfg["lr"], weight_decay=0.01, warmup_steps=0),
        output_format="huggingface", output_uri=str(work / cfg["name"] / "out"),
    )  # fmt: skip
    _CLOCK = _CLOCK or StepClock(cuda)
    clock = _CLOCK
    clock.start(total)
    ctx = TrainingContext(spec, model_dir, Output(spec.output_uri), cfg["rows"], None, Ranks(),
                          Tracker(), Phases("train", echo=False), one_job_process)  # fmt: skip
    start = time.perf_counter()
    with contextlib.suppress(_Measured):
        get_engine(cfg["engine"]).train(ctx)
    steps = clock.steps
    if len(steps) < total:
        raise RuntimeError(f"{len(steps)} optimizer steps for {total} planned: too few rows")
    measured = steps[cfg["warmup"] :]
    seconds = measured[-1]["at"] - steps[cfg["warmup"] - 1]["at"]
    tokens = sum(s["tokens"] for s in measured)
    label = sorted(s["label_tps"] for s in measured)
    return {
        "tokens_per_second": round(tokens / seconds, 1),
        "label_tokens_per_second": round(label[len(label) // 2], 1),
        "tokens_per_step": round(tokens / len(measured), 1),
        "step_seconds": [round(b["at"] - a["at"], 4) for a, b in itertools.pairwise(steps)],
        "setup_and_first_step_seconds": round(steps[0]["at"] - start, 2),
        "train_peak_gib": round(measured[-1]["peak"] / 2**30, 3) if cuda else None,
        "losses": [round(s["loss"], 4) for s in steps],
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "imported": imported_distributions(),
        "versions": versions(),
    }


def versions() -> dict[str, str | None]:
    """What this run trained with (the carried sites included)."""
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for n in ("torch", "transformers", "peft", "torchtune", "torchao", "pydantic", "datasets"):
        try:
            found[n] = version(n)
        except PackageNotFoundError:
            found[n] = None
    return found


@functools.cache
def _owners() -> dict[str, list[str]]:
    from importlib.metadata import packages_distributions

    return packages_distributions()  # reads every installed distribution's files: once


def imported_distributions() -> list[str]:
    """The installed distributions this process has imported so far (not the standard
    library): in a process that ran several runs (the dry run), what all of them imported."""
    owners = _owners()
    tops = {m.split(".")[0] for m in list(sys.modules)} - set(sys.stdlib_module_names)
    found = {d for t in tops for d in owners.get(t, [])}
    if "llama_stack_provider_kfp" in tops:
        found.add("llama-stack-provider-kfp")
    return sorted(found | {t for t in tops if t in FORBIDDEN})
