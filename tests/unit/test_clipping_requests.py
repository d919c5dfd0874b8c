"""Gradient clipping's settings as pure functions (no torch, no server): the provider default,
the per-request override (DESIGN.md "Per-request extensions"), 0 / null for off, refusals, the
CLI flag, and what a resumed job clips with (records from before clipping: nothing)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from llama_stack_api import SupervisedFineTuneRequest, TrainingConfig

from llama_stack_provider_kfp.api import translate
from llama_stack_provider_kfp.cli import configs
from llama_stack_provider_kfp.cli.watch import describe
from llama_stack_provider_kfp.config import KFPPostTrainingConfig
from llama_stack_provider_kfp.core.engines import JobTraits, select_engine
from llama_stack_provider_kfp.core.errors import InvalidRequest
from llama_stack_provider_kfp.core.resume import TrainingState, check_resume
from llama_stack_provider_kfp.core.spec import JobSpec, ModelSpec
from llama_stack_provider_kfp.jobs.backend import StagedInputs
from llama_stack_provider_kfp.service import submission

RECORDS = Path(__file__).resolve().parents[1] / "fixtures" / "records"
EXT = 'hyperparam_search_config\\["kfp"\\]'


def _spec(config: KFPPostTrainingConfig) -> JobSpec:
    tc = TrainingConfig.model_validate({"n_epochs": 1, "max_steps_per_epoch": 1,
        "data_config": {"dataset_id": "ds", "batch_size": 1, "shuffle": False,
                        "data_format": "instruct"}})  # fmt: skip
    model = ModelSpec(name="m", family="qwen2", path="/m", layout="huggingface",
                      checkpoint_files=["model.safetensors"], tokenizer_file="",
                      hf_tokenizer=True, tied=True, arch=None)  # fmt: skip
    req = SupervisedFineTuneRequest(job_uuid="j", model="m", training_config=tc,
                                    hyperparam_search_config={}, logger_config={})  # fmt: skip
    engine = select_engine(JobTraits.of(model, "full", False))
    sub = submission.Submission(req.job_uuid, "m", None, translate.training(tc), None, None,
                                config=config)  # fmt: skip
    return submission.build_spec(sub, None, model, StagedInputs("/in", None, "/out"), engine)


def test_clipping_is_on_at_one_by_default_and_a_request_overrides_it():
    config = KFPPostTrainingConfig(work_dir=Path("/tmp/w"))
    assert config.max_grad_norm == 1.0  # TRL's and llama-stack's in-tree recipe's default
    assert _spec(config).train.max_grad_norm == 1.0
    assert _spec(config.for_request({"max_grad_norm": 0.25})).train.max_grad_norm == 0.25
    # 0 and null turn it off; the JobSpec says off one way only.
    assert _spec(config.for_request({"max_grad_norm": 0})).train.max_grad_norm is None
    assert _spec(config.for_request({"max_grad_norm": None})).train.max_grad_norm is None
    # run.yaml's ${env.KFP_MAX_GRAD_NORM:=} unset gives "": off, as null.
    assert KFPPostTrainingConfig(max_grad_norm="").max_grad_norm is None


@pytest.mark.parametrize("bad", [-1, "much", float("inf"), float("nan")])
def test_a_bad_max_grad_norm_is_a_400_naming_it(bad):
    with pytest.raises(InvalidRequest, match=rf"{EXT}\.max_grad_norm: "):
        KFPPostTrainingConfig().for_request({"max_grad_norm": bad})


def test_the_cli_flag_becomes_the_extension_key():
    assert configs.hyperparam_search_config(None, max_grad_norm=0.5) == {
        "kfp": {"max_grad_norm": 0.5}
    }
    assert configs.hyperparam_search_config(None, max_grad_norm=0.0)["kfp"] == {
        "max_grad_norm": 0.0
    }
    assert configs.hyperparam_search_config(None) == {}
    assert "max_grad_norm" in configs.EXTENSION_KEYS
    # The status line shows the norm before clipping when the job clips.
    assert describe({"loss": 2.5, "grad_norm": 3.21}) == "loss 2.5000 grad norm 3.21"
    assert describe({"loss": 2.5}) == "loss 2.5000"


def _old_record_spec() -> JobSpec:
    """The JobSpec of a record written before clipping existed (a release fixture)."""
    data = json.loads((RECORDS / "v1" / "v1-completed-job" / "job.json").read_text())
    assert "max_grad_norm" not in data["spec"]["train"]
    return JobSpec.model_validate(data["spec"])


def _state(spec: JobSpec) -> TrainingState:
    """A checkpoint's state as a release before clipping wrote it (no max_grad_norm)."""
    saved = spec.model_dump(mode="json", exclude={"train": {"max_grad_norm"}})
    return TrainingState(engine="huggingface", algorithm=spec.algorithm, base_model="/m",
                         job_uuid=spec.job_uuid, global_step=1, resume_epoch=1, position=1,
                         steps_per_epoch=4, train_rows=8, samples_seen=2, spec=saved)  # fmt: skip


def test_a_record_from_before_clipping_resumes_unclipped():
    old = _old_record_spec()
    # Its own train step restarted (a retry, a preempted pod) runs its record's spec: off.
    assert old.train.max_grad_norm is None
    # A new job continuing its checkpoint with the provider's default clips as it was trained.
    engine = old.engine.model_copy(update={"name": "huggingface"})
    train = old.train.model_copy(update={"max_grad_norm": 1.0})
    new = old.model_copy(update={"engine": engine, "train": train})
    state = _state(old)
    resumed = submission.resumed_clipping(new, state, frozenset())
    assert resumed.train.max_grad_norm is None
    check_resume(state, resumed, "/ckpt")
    # A request that names another bound for it is refused, saying what to leave out.
    named = submission.resumed_clipping(new, state, frozenset({"max_grad_norm"}))
    assert named.train.max_grad_norm == 1.0
    with pytest.raises(InvalidRequest, match=r"max_grad_norm is off in the checkpoint, 1.0 here "
                       rf"\(leave it out of {EXT}"):  # fmt: skip
        check_resume(state, named, "/ckpt")
