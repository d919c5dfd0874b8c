"""The pipeline definition compiles to KFP IR without knowing where it will run."""

import json

import yaml
from fake_backend import spec
from kfp import compiler

from llama_stack_provider_kfp.core.spec import DPOSpec
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
