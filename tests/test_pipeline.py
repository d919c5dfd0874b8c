"""The pipeline definition compiles to KFP IR without knowing where it will run."""

import yaml
from kfp import compiler

from llama_stack_provider_kfp.pipeline.definition import (
    PIPELINE_NAME,
    ComponentBuild,
    build_pipeline,
)


def test_compiles_to_ir_with_two_steps(tmp_path):
    out = tmp_path / "pipeline.yaml"
    build = ComponentBuild(base_image="registry.example/kfp-sft:1", packages_to_install=[])
    compiler.Compiler().compile(build_pipeline(build), str(out))
    ir = yaml.safe_load(out.read_text())
    assert ir["pipelineInfo"]["name"] == PIPELINE_NAME
    tasks = ir["root"]["dag"]["tasks"]
    assert set(tasks) == {"prepare-data", "train"}
    train_inputs = tasks["train"]["inputs"]["artifacts"]
    assert train_inputs["train_data"]["taskOutputArtifact"]["producerTask"] == "prepare-data"
    params = set(ir["root"]["inputDefinitions"]["parameters"])
    assert params == {"job_spec", "dataset_uri", "validation_uri", "model_uri", "output_uri"}
    images = {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/kfp-sft:1"}
