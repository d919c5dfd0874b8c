"""The register stage inside its step: the gate, then the job's registry.

    register_job(spec, checkpoint_uri, evaluation, train_result, provenance) -> Registration

`mlflow` (mlflow_registry.py) and `kubeflow` (kubeflow_registry.py) import their client
libraries only when a job names them; the server never imports this package (the
model-registry client patches asyncio globally when it is created). A gate that finds the
tuned model not better returns `registered: false` with the numbers (the stage completes); a
gate that cannot be decided, or a registry that refuses, raises and the stage fails.
"""

from __future__ import annotations

from ...core.gate import decide
from ...core.outputs import TrainResult
from ...core.spec import JobSpec
from ...core.stage_results import Evaluation, Registration
from .entry import make_entry


def register_job(
    spec: JobSpec,
    checkpoint_uri: str,
    evaluation: Evaluation | None,
    train_result: TrainResult | None,
    provenance: dict[str, str],
) -> Registration:
    reg = spec.registry
    if reg is None:
        raise ValueError("register_job called for a job without a registry")
    decision = decide(reg.gate, evaluation) if reg.gate is not None else None
    if decision is not None:
        print(f"register: gate {'passed' if decision.passed else 'failed'}: {decision.reason}",
              flush=True)  # fmt: skip
        if not decision.passed:
            return Registration(kind=reg.kind, registered=False, name=reg.model_name,
                                uri=checkpoint_uri, gate=decision)  # fmt: skip
    entry = make_entry(spec, checkpoint_uri, evaluation, train_result, provenance)
    if reg.kind == "mlflow":
        from .mlflow_registry import register
    else:
        from .kubeflow_registry import register
    done = register(spec, entry)
    print(f"register: {done.kind} {done.name} version {done.version} <- {done.uri}", flush=True)
    return done.model_copy(update={"gate": decision})
