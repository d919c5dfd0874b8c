"""Per-request settings (hyperparam_search_config["kfp"]) and the stages they ask for."""

import pytest

from llama_stack_provider_kfp.config import KFPPostTrainingConfig
from llama_stack_provider_kfp.core.errors import InvalidRequest
from llama_stack_provider_kfp.core.stage_results import Comparison, StageRecord, stage_table
from llama_stack_provider_kfp.core.tracking import MLflowTracking, TrackingSpec
from llama_stack_provider_kfp.service import stages


def test_a_request_overrides_nested_settings_key_by_key():
    base = KFPPostTrainingConfig(evaluation={"tasks": ["a"], "samples": 5}, max_rows=100)
    got = base.for_request({"evaluation": {"enabled": True}, "validation_fraction": 0.2})
    assert got.evaluation.enabled and got.evaluation.tasks == ["a"] and got.evaluation.samples == 5
    assert got.validation_fraction == 0.2 and got.max_rows == 100
    assert base.evaluation.enabled is False  # the server's own config is untouched
    assert base.for_request(None) is base


@pytest.mark.parametrize(
    ("extension", "says"),
    [
        ({"work_dir": "/etc"}, "unknown key(s) 'work_dir'; a request may set: evaluation"),
        ({"evaluation": {"taks": ["x"]}}, 'kfp"].evaluation.taks: Extra inputs'),
        ({"max_rows": 0}, 'kfp"].max_rows: Input should be greater than or equal to 1'),
        ({"registry": {"kind": "s3"}}, 'kfp"].registry.kind: Input should be'),
        ({"stages": ["train", "deploy"]}, 'kfp"].stages.1: Input should be'),
        (["evaluation"], "must be an object of settings"),
    ],
)
def test_bad_extensions_name_the_key(extension, says):
    with pytest.raises(InvalidRequest) as e:
        KFPPostTrainingConfig().for_request(extension)
    assert says in str(e.value)


def test_stages_default_to_what_the_config_enables():
    cfg = KFPPostTrainingConfig()
    assert stages.wanted(cfg) == ["train"]
    cfg = cfg.for_request({"evaluation": {"enabled": True}, "registry": {"kind": "mlflow"}})
    assert stages.wanted(cfg) == ["train", "evaluate", "register"]
    only = cfg.for_request({"stages": ["register", "evaluate"]})
    assert stages.wanted(only) == ["evaluate", "register"]  # in pipeline order
    with pytest.raises(InvalidRequest, match="stages is empty"):
        stages.wanted(cfg.for_request({"stages": []}))


def test_registry_defaults_and_refusals():
    cfg = KFPPostTrainingConfig().for_request({"registry": {"kind": "mlflow"}})
    mlflow = TrackingSpec(mlflow=MLflowTracking(tracking_uri="http://127.0.0.1:5000"))
    spec = stages.registry_spec(cfg, ["train", "register"], "job-1", "/models/Llama-3.2-1B/",
                                "lora", mlflow)  # fmt: skip
    assert spec is not None
    assert (spec.uri, spec.model_name, spec.version_name) == (
        "http://127.0.0.1:5000", "Llama-3.2-1B-lora", "job-1")  # fmt: skip
    assert spec.token_env is None  # MLflow reads its own MLFLOW_TRACKING_* variables
    with pytest.raises(InvalidRequest, match=r"registry\.uri is not set: name an MLflow"):
        stages.registry_spec(cfg, ["train", "register"], "j", "m", "lora", None)
    none = KFPPostTrainingConfig().for_request({"stages": ["train", "register"]})
    with pytest.raises(InvalidRequest, match=r"registry\.kind is none"):
        stages.registry_spec(none, ["train", "register"], "j", "m", "lora", None)
    gated = cfg.for_request({"registry": {"uri": "http://r", "gate": {"metric": "held_out/loss"}}})
    with pytest.raises(InvalidRequest, match="enable evaluation"):
        stages.registry_spec(gated, ["train", "register"], "j", "m", "lora", None)
    kf = cfg.for_request({"registry": {"kind": "kubeflow", "uri": "https://mr:8443"}})
    spec = stages.registry_spec(kf, ["train", "register"], "j", "hf-org/Qwen 2", "full", None)
    assert spec is not None and spec.model_name == "Qwen-2-full"
    assert spec.token_env == "MODEL_REGISTRY_TOKEN"  # a name, never a value


def test_stage_table_from_records_and_from_the_jobs_status():
    names = ["prepare-data", "train", "evaluate", "register"]
    ran = {"prepare-data": StageRecord(name="prepare-data", status="completed"),
           "train": StageRecord(name="train", status="completed"),
           "evaluate": StageRecord(name="evaluate", status="failed", error="boom")}  # fmt: skip
    table = stage_table(names, ran, "failed", "evaluate")
    assert [s.status for s in table] == ["completed", "completed", "failed", "skipped"]
    running = stage_table(names, {"prepare-data": ran["prepare-data"]}, "in_progress", None)
    assert [s.status for s in running] == ["completed", "pending", "pending", "pending"]
    # A record written before stages existed has none: its outcome says it all.
    assert {s.status for s in stage_table(names[:2], {}, "completed", None)} == {"completed"}
    cut = {"train": StageRecord(name="train", status="running")}
    assert stage_table(["train"], cut, "cancelled", None)[0].status == "cancelled"


def test_comparison_delta_is_tuned_minus_base():
    assert Comparison.of(2.0, 1.5).delta == -0.5
    assert Comparison.of(None, 1.5).delta is None
