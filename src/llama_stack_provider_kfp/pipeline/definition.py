"""The one pipeline definition: prepare-data -> train, built from a JobSpec.

It knows neither which backend executes it nor which engine trains (the train step asks the
engine seam). How components are packaged (base image, what is installed) is a
`ComponentBuild` chosen per backend, outside the DAG. The JobSpec is the pipeline's only
parameter: the steps read every location (data, weights, output) from it, so a fact is never
passed twice; between steps, data travels as artifacts.
"""
# No `from __future__ import annotations` here: KFP reads the pipeline signature's types.

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kfp import dsl

from ..core.spec import JobSpec, algorithm
from . import components

# placement(task, step name): resources, Secrets, scheduling for one task (kfp backend).
Placement = Callable[[Any, str], None]

_METHODS = {"lora": "LoRA", "dora": "DoRA", "qlora": "QLoRA", "full": "full-parameter"}


def pipeline_name(spec: JobSpec) -> tuple[str, str]:
    """The pipeline's name and description, from what the job trains (shown in the KFP UI)."""
    algo = algorithm(spec.lora, spec.dpo)
    base = algo.removeprefix("dpo-")
    kind = "DPO" if spec.dpo is not None else "supervised fine-tuning"
    name = f"llama-stack-{'dpo' if spec.dpo is not None else 'sft'}-{base}"
    return name, f"{_METHODS[base]} {kind} of {spec.model.name} (llama-stack post-training)"


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


def build_pipeline(build: ComponentBuild, spec: JobSpec, placement: Placement | None = None) -> Any:
    """The pipeline function for `spec`'s job. `placement(task, step)` may add resources,
    Secrets and scheduling to each task (remote mode); it does not change the DAG."""
    opts = dict(
        base_image=build.base_image,
        packages_to_install=list(build.packages_to_install),
        install_kfp_package=build.install_kfp_package,
    )
    prepare_op = dsl.component(components.prepare_data, **opts)
    train_op = dsl.component(components.train, **opts)

    name, description = pipeline_name(spec)

    @dsl.pipeline(name=name, description=description)
    def fine_tune(job_spec: str):
        prep = prepare_op(job_spec=job_spec).set_display_name("prepare-data")
        train_task = train_op(
            job_spec=job_spec,
            train_data=prep.outputs["train_data"],
            validation_data=prep.outputs["validation_data"],
        ).set_display_name("train")
        train_task.set_caching_options(False)
        prep.set_caching_options(False)
        if placement is not None:
            placement(prep, "prepare-data")
            placement(train_task, "train")

    return fine_tune


def pipeline_arguments(spec: JobSpec) -> dict[str, str]:
    return {"job_spec": spec.model_dump_json()}
