"""What every registry gets for one job: where the weights are, in which format, the training
and evaluation numbers flattened to scalars, and the job's facts (ids, base model, algorithm,
the pipeline run that made it). Built once, in the step; no credential is ever part of it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...boundary import storage
from ...core.locations import Location, parse
from ...core.outputs import TrainResult
from ...core.spec import JobSpec
from ...core.stage_results import Evaluation

MERGED, ADAPTER = "merged", "adapter"
_PYTORCH = (".bin", ".pt", ".pth")


@dataclass(frozen=True)
class Entry:
    checkpoint: str  # the epoch_<N> folder
    weights: str  # what is registered: its merged/ folder (the loadable model)
    adapter: str | None  # LoRA-family jobs: the PEFT adapter beside it
    format_name: str  # safetensors | pytorch
    format_version: str
    metrics: dict[str, float] = field(default_factory=dict)
    facts: dict[str, str] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return parse(self.weights).is_local


def make_entry(
    spec: JobSpec,
    checkpoint_uri: str,
    evaluation: Evaluation | None,
    train_result: TrainResult | None,
    provenance: dict[str, str],
) -> Entry:
    loc = parse(checkpoint_uri)
    names = _files(loc.join(MERGED))
    adapter = loc.join(ADAPTER)
    has_adapter = spec.lora is not None and bool(_files(adapter))
    facts = {
        "job_uuid": spec.job_uuid,
        "base_model": spec.model.name,
        "algorithm": spec.algorithm,
        "engine": spec.engine.name,
        "layout": spec.output_format or spec.model.layout or "",
        "checkpoint": str(loc),
        **({"adapter": str(adapter)} if has_adapter else {}),
        **{k: v for k, v in provenance.items() if v},
    }
    name, version = _format(names, facts["layout"])
    return Entry(
        checkpoint=str(loc),
        weights=str(loc.join(MERGED)),
        adapter=str(adapter) if has_adapter else None,
        format_name=name,
        format_version=version,
        metrics=metrics(train_result, evaluation),
        facts={k: v for k, v in facts.items() if v},
    )


def metrics(train: TrainResult | None, evaluation: Evaluation | None) -> dict[str, float]:
    """`train/<metric>` (the last epoch's metrics and the final loss) and
    `eval/<task>/<metric>/<base|tuned|delta>`: scalars only, as both registries want."""
    out: dict[str, float] = {}
    if train is not None:
        out.update({f"train/{k}": float(v) for k, v in train.final_metrics.items()})
        if train.final_loss is not None:
            out["train/final_loss"] = float(train.final_loss)
    if evaluation is not None:
        out.update({f"eval/{k}": v for k, v in evaluation.flat().items()})
    return out


def _files(loc: Location) -> list[str]:
    """File names directly under a checkpoint folder (local or S3); [] when it is absent."""
    if loc.is_local:
        p = loc.path
        return sorted(f.name for f in p.iterdir() if f.is_file()) if p.is_dir() else []
    if loc.scheme == "s3":
        return sorted(k for k in storage.list_keys(loc) if k and "/" not in k)
    return []


def _format(names: list[str], layout: str) -> tuple[str, str]:
    """The weights' format from the files the checkpoint holds (else from its layout: this
    project writes safetensors for Hugging Face layouts, torch files for Meta's). The format
    version is 1 for both: neither file format has had another."""
    if any(n.endswith(".safetensors") for n in names):
        return "safetensors", "1"
    if any(n.endswith(_PYTORCH) for n in names):
        return "pytorch", "1"
    return ("pytorch" if layout == "meta" else "safetensors"), "1"
