"""One count of optimizer steps per epoch for every engine (JobSpec.steps_per_epoch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llama_stack_provider_kfp.core.spec import (
    DataSpec,
    EngineChoice,
    JobSpec,
    ModelSpec,
    OptimSpec,
    TrainSpec,
)


def _spec(engine: str, accum: int, cap: int | None, rule: str) -> JobSpec:
    return JobSpec(
        job_uuid="s", engine=EngineChoice(name=engine, reason="test"),
        model=ModelSpec(name="m", path="/m", layout="huggingface", checkpoint_files=[],
                        tokenizer_file="", arch=None),
        data=DataSpec(uri="/d", data_format="instruct"),
        train=TrainSpec(epochs=1, max_steps_per_epoch=cap, gradient_accumulation_steps=accum,
                        batch_size=2, shuffle=False, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=64, seed=1, device="cpu",
                        short_last_group=rule),
        lora=None, optim=OptimSpec(type="adamw", lr=1e-3, weight_decay=0.0, warmup_steps=0),
        output_format=None, output_uri="/o",
    )  # fmt: skip


@pytest.mark.parametrize("engine", ["torchtune", "huggingface"])
@pytest.mark.parametrize(
    ("batches", "accum", "cap", "steps"),
    [
        (5, 2, None, 3),
        (4, 2, None, 2),
        (1, 4, None, 1),
        (7, 3, 2, 2),
        (7, 3, 9, 3),
        (6, 1, None, 6),
    ],
)
def test_a_short_last_group_is_a_step_on_every_engine(engine, batches, accum, cap, steps):
    assert _spec(engine, accum, cap, "step").steps_per_epoch(batches) == steps


@pytest.mark.parametrize(
    ("engine", "batches", "accum", "steps"),
    [("torchtune", 5, 2, 2), ("torchtune", 1, 4, 0), ("huggingface", 5, 2, 3)],
)
def test_records_from_before_the_rule_keep_their_engines_count(engine, batches, accum, steps):
    # A record without the field (every record written before it) reads as "engine".
    legacy = _spec(engine, accum, None, "step").model_dump()
    del legacy["train"]["short_last_group"]
    assert JobSpec.model_validate(legacy).steps_per_epoch(batches) == steps


def test_the_previous_releases_record_keeps_torchtunes_count():
    records = Path(__file__).resolve().parents[1] / "fixtures" / "records" / "v1"
    data = json.loads((records / "v1-completed-job" / "job.json").read_text())
    old = JobSpec.model_validate(data["spec"])
    assert old.engine.name == "torchtune" and old.train.short_last_group == "engine"
    accum = old.model_copy(update={"train": old.train.model_copy(
        update={"gradient_accumulation_steps": 2, "max_steps_per_epoch": None})})  # fmt: skip
    assert accum.steps_per_epoch(5) == 2
