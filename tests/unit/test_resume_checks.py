"""Resuming, as pure functions (no torch, no server): which checkpoint folders are resumable,
which requests may continue one (with a message that says what to change), and how step and
epoch checkpoints are listed."""

from __future__ import annotations

import pytest

from llama_stack_provider_kfp.boundary.files import write_json
from llama_stack_provider_kfp.boundary.job_outputs import JobOutputs
from llama_stack_provider_kfp.core.errors import InvalidRequest
from llama_stack_provider_kfp.core.locations import parse
from llama_stack_provider_kfp.core.resume import TrainingState, check_resume, check_rows, load_state
from llama_stack_provider_kfp.core.spec import (
    DataSpec,
    EngineChoice,
    JobSpec,
    LoraSpec,
    ModelSpec,
    OptimSpec,
    TrainSpec,
)

HF = EngineChoice(name="huggingface", reason="test")


def _spec(**train) -> JobSpec:
    fields = dict(epochs=2, max_steps_per_epoch=None, gradient_accumulation_steps=1,
                  batch_size=2, shuffle=True, train_on_input=False, dtype="fp32",
                  max_validation_steps=None, max_seq_len=64, seed=1, device="cpu")  # fmt: skip
    return JobSpec(
        job_uuid="old",
        engine=HF,
        model=ModelSpec(name="m", path="/models/m", layout="huggingface", checkpoint_files=[],
                        tokenizer_file="", arch=None),
        data=DataSpec(uri="/d.jsonl", data_format="instruct"),
        train=TrainSpec(**{**fields, **train}),
        lora=LoraSpec(rank=4, alpha=8, attn_modules=["q_proj"], apply_to_mlp=False,
                      apply_to_output=False, requested_modules=["q_proj"]),
        optim=OptimSpec(type="adamw", lr=1e-3, weight_decay=0.0, warmup_steps=1),
        output_format="huggingface",
        output_uri="/out",
    )  # fmt: skip


def _state(spec: JobSpec, resume_epoch: int = 1, position: int = 3) -> TrainingState:
    return TrainingState(engine="huggingface", algorithm="lora", base_model="/models/m",
                         job_uuid="old", global_step=3, resume_epoch=resume_epoch,
                         position=position, steps_per_epoch=10, train_rows=20, samples_seen=6,
                         spec=spec.model_dump(mode="json"))  # fmt: skip


def test_the_same_request_with_more_epochs_continues():
    state = _state(_spec())
    check_resume(state, _spec(), "/ckpt")
    check_resume(state, _spec(epochs=5), "/ckpt")  # train further
    check_rows(state, 20, "/ckpt")


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"train": {"batch_size": 4}}, "batch_size is 2 in the checkpoint, 4 here"),
        ({"train": {"seed": 9}}, "seed is 1"),
        ({"optim": {"lr": 1e-2}}, "optimizer lr is 0.001 in the checkpoint, 0.01 here"),
        ({"lora": None}, "it trains lora and this request full"),
        ({"lora": {"rank": 8}}, "LoRA rank is 4 in the checkpoint, 8 here"),
        ({"engine": EngineChoice(name="torchtune", reason="x")}, "huggingface engine"),
    ],
)
def test_what_cannot_change_is_refused_with_what_to_send(change, words):
    new = _spec()
    for key, value in change.items():
        if isinstance(value, dict):
            value = getattr(new, key).model_copy(update=value)
        new = new.model_copy(update={key: value})
    with pytest.raises(InvalidRequest, match="cannot be resumed") as err:
        check_resume(_state(_spec()), new, "/ckpt")
    assert words in str(err.value)


def test_an_osft_checkpoint_continues_with_the_same_subspaces_only():
    from llama_stack_provider_kfp.core.spec import OSFTSpec

    osft = OSFTSpec(unfreeze_rank_ratio=0.25, target_modules=["self_attn.q_proj"])
    old = _spec().model_copy(update={"lora": None, "osft": osft})
    state = _state(old).model_copy(update={"algorithm": "osft"})
    check_resume(state, old.model_copy(update={"train": old.train.model_copy(
        update={"epochs": 4})}), "/ckpt")  # fmt: skip
    # The factors' shapes follow the ratio and the modules: neither may change.
    other = old.model_copy(update={"osft": osft.model_copy(update={"unfreeze_rank_ratio": 0.5})})
    with pytest.raises(
        InvalidRequest, match=r"OSFT unfreeze_rank_ratio is 0\.25 in the checkpoint"
    ):
        check_resume(state, other, "/ckpt")
    with pytest.raises(InvalidRequest, match=r"it trains osft and this request full.*kfp"):
        check_resume(state, old.model_copy(update={"osft": None}), "/ckpt")


def test_fewer_epochs_than_trained_and_other_rows_are_refused():
    state = _state(_spec(epochs=3), resume_epoch=3, position=0)  # two epochs done
    with pytest.raises(InvalidRequest, match="send n_epochs >= 3"):
        check_resume(state, _spec(epochs=2), "/ckpt")
    with pytest.raises(InvalidRequest, match="trained on 20 training rows and this job has 21"):
        check_rows(state, 21, "/ckpt")


def test_which_folders_are_checkpoints_to_resume(tmp_path):
    read = lambda name: None  # noqa: E731
    assert load_state(read, "/plain/weights") is None  # plain weights: a base model
    metrics_only = {"metrics.json": {"epoch": 1}}
    with pytest.raises(InvalidRequest, match="checkpoint_dir='/c/epoch_1/merged'"):
        load_state(metrics_only.get, "/c/epoch_1")  # the torchtune engine's checkpoints
    state = _state(_spec()).model_dump(mode="json")
    assert load_state({"training_state.json": state}.get, "/c").global_step == 3
    with pytest.raises(InvalidRequest, match="newer version"):
        load_state({"training_state.json": {**state, "format": 99}}.get, "/c")


def test_step_and_epoch_checkpoints_listed_in_training_order(tmp_path):
    created = "2026-11-24T00:00:00+00:00"
    for name, epoch, step in (("step_4", 1, 4), ("epoch_1", 1, 6), ("step_8", 2, 8),
                              ("step_10.partial", 2, 10)):  # fmt: skip
        d = tmp_path / "checkpoints" / name
        d.mkdir(parents=True)
        write_json(d / "training_state.json", {})
        write_json(d / "metrics.json", {"created_at": created, "epoch": epoch, "global_step": step})
    write_json(tmp_path / "checkpoints" / "epoch_1" / "metrics.json",
               {"created_at": created, "epoch": 1, "global_step": 6})  # fmt: skip
    (tmp_path / "checkpoints" / "step_8" / "training_state.json").unlink()
    found = JobOutputs(parse(str(tmp_path))).checkpoints()
    assert [(c.name, c.epoch, c.step, c.resumable) for c in found] == [
        ("step_4", 1, 4, True), ("epoch_1", 1, None, True), ("step_8", 2, 8, False)
    ]  # fmt: skip
    newest = JobOutputs(parse(str(tmp_path))).newest_resumable()
    assert newest is not None and newest.name == "epoch_1"  # step_8 holds no training state
