"""The one pipeline definition: prepare-data -> train -> evaluate -> register, built from a
JobSpec (the stages after prepare-data are those the spec names: JobSpec.stages).

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

from ..core.spec import JobSpec
from . import components

# placement(task, step name): resources, Secrets, scheduling for one task (kfp backend).
Placement = Callable[[Any, str], None]

_METHODS = {"lora": "LoRA", "dora": "DoRA", "qlora": "QLoRA", "full": "full-parameter",
            "osft": "OSFT"}  # fmt: skip


def pipeline_name(spec: JobSpec) -> tuple[str, str]:
    """The pipeline's name and description, from what the job trains (shown in the KFP UI)."""
    algo = spec.algorithm
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


def build_pipeline(
    build: ComponentBuild,
    spec: JobSpec,
    placement: Placement | None = None,
    owner: str | None = None,
) -> Any:
    """The pipeline function for `spec`'s job. `placement(task, step)` may add resources,
    Secrets and scheduling to each task (remote mode); it does not change the DAG. `owner`:
    the submitting user's principal, named in the description (the KFP UI shows it)."""
    opts = dict(
        base_image=build.base_image,
        packages_to_install=list(build.packages_to_install),
        install_kfp_package=build.install_kfp_package,
    )
    prepare_op = dsl.component(components.prepare_data, **opts)
    train_op = dsl.component(components.train, **opts)

    evaluate_op = dsl.component(components.evaluate, **opts)
    register_op = dsl.component(components.register, **opts)

    name, description = pipeline_name(spec)
    if owner is not None:
        description = f"{description}; submitted by {owner}"
    stages = spec.stages

    @dsl.pipeline(name=name, description=description)
    def fine_tune(job_spec: str):
        prep = prepare_op(job_spec=job_spec).set_display_name("prepare-data")
        tasks = {"prepare-data": prep}
        model = evaluation = None
        if "train" in stages:
            train_task = train_op(
                job_spec=job_spec,
                train_data=prep.outputs["train_data"],
                validation_data=prep.outputs["validation_data"],
            ).set_display_name("train")
            tasks["train"] = train_task
            model = train_task.outputs["model"]
        if "evaluate" in stages:
            args = {"model": model} if model is not None else {}
            eval_task = evaluate_op(
                job_spec=job_spec, validation_data=prep.outputs["validation_data"], **args
            ).set_display_name("evaluate")
            if model is None:  # evaluating a finished checkpoint: nothing to wait for
                eval_task.after(prep)
            tasks["evaluate"] = eval_task
            evaluation = eval_task.outputs["evaluation"]
        if "register" in stages:
            args = {"model": model} if model is not None else {}
            if evaluation is not None:
                args["evaluation"] = evaluation
            reg_task = register_op(job_spec=job_spec, **args).set_display_name("register")
            reg_task.after(*[t for n, t in tasks.items() if n != "register"][-1:])
            tasks["register"] = reg_task
        for step, task in tasks.items():
            # Every stage reads or writes the job's own output location, which KFP's cache
            # key does not cover: a cached step would skip work whose files are missing.
            task.set_caching_options(False)
            if placement is not None:
                placement(task, step)

    return fine_tune


def pipeline_arguments(spec: JobSpec) -> dict[str, str]:
    return {"job_spec": spec.model_dump_json()}
