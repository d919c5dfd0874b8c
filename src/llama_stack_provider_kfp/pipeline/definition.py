"""The one pipeline definition: prepare-data -> train, built from a JobSpec.

It knows neither which backend executes it nor which engine trains (the train step asks the
engine seam). How components are packaged (base image, what is installed) is a
`ComponentBuild` chosen per backend, outside the DAG.
"""
# No `from __future__ import annotations` here: KFP reads the pipeline signature's types.

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kfp import dsl

from ..core.spec import JobSpec
from . import components

# placement(task, step name): resources, Secrets, scheduling for one task (kfp backend).
Placement = Callable[[Any, str], None]

PIPELINE_NAME = "llama-stack-sft-lora"


@dataclass(frozen=True)
class ComponentBuild:
    base_image: str = "python:3.12"
    packages_to_install: list[str] = field(default_factory=list)
    install_kfp_package: bool = True

    @classmethod
    def local(cls) -> "ComponentBuild":
        # kfp.local runs tasks with this interpreter: nothing to install (and installing
        # kfp would serialize tasks under a process-wide lock).
        return cls(install_kfp_package=False)


def build_pipeline(build: ComponentBuild, placement: Placement | None = None) -> Any:
    """The pipeline function. `placement(task, step)` may add resources, Secrets and
    scheduling to each task (remote mode); it does not change the DAG."""
    opts = dict(
        base_image=build.base_image,
        packages_to_install=list(build.packages_to_install),
        install_kfp_package=build.install_kfp_package,
    )
    prepare_op = dsl.component(components.prepare_data, **opts)
    train_op = dsl.component(components.train, **opts)

    @dsl.pipeline(name=PIPELINE_NAME, description="LoRA supervised fine-tuning (llama-stack)")
    def sft_pipeline(
        job_spec: str,
        dataset_uri: str,
        validation_uri: str,
        model_uri: str,
        output_uri: str,
    ):
        prep = prepare_op(
            job_spec=job_spec, dataset_uri=dataset_uri, validation_uri=validation_uri
        ).set_display_name("prepare-data")
        train_task = train_op(
            job_spec=job_spec,
            model_uri=model_uri,
            output_uri=output_uri,
            train_data=prep.outputs["train_data"],
            validation_data=prep.outputs["validation_data"],
        ).set_display_name("train")
        train_task.set_caching_options(False)
        prep.set_caching_options(False)
        if placement is not None:
            placement(prep, "prepare-data")
            placement(train_task, "train")

    return sft_pipeline


def pipeline_arguments(spec: JobSpec) -> dict[str, str]:
    return {
        "job_spec": spec.model_dump_json(),
        "dataset_uri": spec.data.uri,
        "validation_uri": spec.data.validation_uri or "",
        "model_uri": spec.model.path,
        "output_uri": spec.output_uri,
    }
