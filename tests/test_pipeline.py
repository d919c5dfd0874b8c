"""The pipeline definition compiles to KFP IR without knowing where it will run."""

import json

import yaml
from fake_backend import spec
from kfp import compiler

from llama_stack_provider_kfp.backends.kfp.placement import OWNER_ANNOTATION, with_owner
from llama_stack_provider_kfp.core.spec import DPOSpec, EvaluationSpec, OSFTSpec, RegistrySpec
from llama_stack_provider_kfp.pipeline.definition import (
    ComponentBuild,
    build_pipeline,
    pipeline_arguments,
)


def _ir(tmp_path, job):
    out = tmp_path / "pipeline.yaml"
    build = ComponentBuild(base_image="registry.example/kfp-sft:1", packages_to_install=[])
    compiler.Compiler().compile(build_pipeline(build, job), str(out))
    return yaml.safe_load(out.read_text())


def test_compiles_to_ir_with_two_steps_and_the_spec_as_only_parameter(tmp_path):
    job = spec("j1")
    ir = _ir(tmp_path, job)
    tasks = ir["root"]["dag"]["tasks"]
    assert set(tasks) == {"prepare-data", "train"}
    train_inputs = tasks["train"]["inputs"]["artifacts"]
    assert train_inputs["train_data"]["taskOutputArtifact"]["producerTask"] == "prepare-data"
    assert set(ir["root"]["inputDefinitions"]["parameters"]) == {"job_spec"}
    args = pipeline_arguments(job)
    assert (
        set(args) == {"job_spec"} and json.loads(args["job_spec"])["output_uri"] == job.output_uri
    )
    images = {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/kfp-sft:1"}


def test_the_name_says_what_the_job_trains(tmp_path):
    lora = spec("j2")
    info = _ir(tmp_path, lora)["pipelineInfo"]
    assert info["name"] == "llama-stack-sft-lora"
    assert info["description"].startswith("LoRA supervised fine-tuning of m")
    full_dpo = lora.model_copy(update={"lora": None, "dpo": DPOSpec(beta=0.1, loss_type="sigmoid")})
    info = _ir(tmp_path, full_dpo)["pipelineInfo"]
    assert info["name"] == "llama-stack-dpo-full"
    assert info["description"].startswith("full-parameter DPO of m")
    osft = lora.model_copy(update={"lora": None, "osft": OSFTSpec(unfreeze_rank_ratio=0.25)})
    info = _ir(tmp_path, osft)["pipelineInfo"]
    assert info["name"] == "llama-stack-sft-osft"
    assert info["description"].startswith("OSFT supervised fine-tuning of m")


def test_the_owner_is_on_the_run_and_every_pod_not_in_the_spec(tmp_path):
    """Remote runs of an authenticated user's job: the principal in the pipeline's description
    (the KFP UI) and as an annotation on every task's pod (KFP v2 runs have no labels)."""
    job = spec("j5")
    out = tmp_path / "owned.yaml"
    build = ComponentBuild(base_image="registry.example/kfp-sft:1", packages_to_install=[])
    placement = with_owner(None, "alice@example.com")
    compiler.Compiler().compile(build_pipeline(build, job, placement, "alice@example.com"),
                                str(out))  # fmt: skip
    pipeline, platform = yaml.safe_load_all(out.read_text())
    assert pipeline["pipelineInfo"]["description"].endswith("; submitted by alice@example.com")
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert len(executors) == 2  # prepare-data, train
    for executor in executors.values():
        assert executor["podMetadata"]["annotations"] == {OWNER_ANNOTATION: "alice@example.com"}
    assert "alice" not in pipeline_arguments(job)["job_spec"]
    assert with_owner(None, None) is None  # no auth: nothing added


def test_stages_after_training_wire_model_and_metrics_artifacts(tmp_path):
    job = spec("j3").model_copy(update={
        "evaluation": EvaluationSpec(),
        "registry": RegistrySpec(kind="mlflow", uri="http://127.0.0.1:1", model_name="m-lora",
                                 version_name="j3"),
    })  # fmt: skip
    ir = _ir(tmp_path, job)
    tasks = ir["root"]["dag"]["tasks"]
    assert list(tasks) == ["evaluate", "prepare-data", "register", "train"]  # IR sorts them
    evaluate = tasks["evaluate"]["inputs"]["artifacts"]
    assert evaluate["model"]["taskOutputArtifact"] == {
        "outputArtifactKey": "model",
        "producerTask": "train",
    }
    assert evaluate["validation_data"]["taskOutputArtifact"]["producerTask"] == "prepare-data"
    register = tasks["register"]["inputs"]["artifacts"]
    assert register["evaluation"]["taskOutputArtifact"]["producerTask"] == "evaluate"
    assert register["model"]["taskOutputArtifact"]["producerTask"] == "train"
    outputs = ir["components"]["comp-evaluate"]["outputDefinitions"]["artifacts"]
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    assert (ir["components"]["comp-train"]["outputDefinitions"]["artifacts"]["model"]
            ["artifactType"]["schemaTitle"]) == "system.Model"  # fmt: skip
    # Nothing is cached: every stage reads or writes the job's own output location.
    assert all(not t.get("cachingOptions", {}).get("enableCache") for t in tasks.values())


def test_stages_on_a_finished_checkpoint_skip_training(tmp_path):
    job = spec("j4").model_copy(update={
        "evaluation": EvaluationSpec(), "trained_checkpoint": "/jobs/j1/checkpoints/epoch_1",
    })  # fmt: skip
    assert job.stages == ["evaluate"]
    tasks = _ir(tmp_path, job)["root"]["dag"]["tasks"]
    assert set(tasks) == {"prepare-data", "evaluate"}
    assert "model" not in tasks["evaluate"]["inputs"]["artifacts"]
