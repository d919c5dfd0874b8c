"""What each training engine can run, and the choice of engine for a job.

Declared here, without importing any engine, so the server can choose (and explain the choice
in the job record) without loading torch; the implementations live in `training`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .errors import Unsupported
from .spec import EngineChoice, ModelSpec


@dataclass(frozen=True)
class JobTraits:
    """What engine selection looks at."""

    family: str  # Hugging Face model_type
    layout: str | None  # meta | huggingface | None (weights read by the step)
    algorithm: str  # lora | dora | qlora | full | osft, or dpo-<one of those>
    tiktoken: bool  # a Llama 3 tiktoken tokenizer.model
    hf_tokenizer: bool  # tokenizer.json / tokenizer_config.json
    torchtune_targets: bool  # the LoRA targets fit torchtune's builders
    ranks: int = 1  # processes training the job together, over all its nodes
    nodes: int = 1  # machines training the job together

    @classmethod
    def of(
        cls,
        model: ModelSpec,
        algorithm: str,
        torchtune_targets: bool,
        ranks: int = 1,
        nodes: int = 1,
    ) -> JobTraits:
        return cls(
            ranks=ranks,
            nodes=nodes,
            family=model.family,
            layout=model.layout,
            algorithm=algorithm,
            tiktoken=bool(model.tokenizer_file) or model.layout is None,
            hf_tokenizer=model.hf_tokenizer,
            torchtune_targets=torchtune_targets and (model.arch is not None or not model.layout),
        )


def _torchtune(t: JobTraits) -> str | None:
    if t.family != "llama" or not t.tiktoken:
        return "it runs Llama-3-architecture models with a tiktoken tokenizer"
    if "osft" in t.algorithm:
        return "OSFT runs on the huggingface engine (set engine: huggingface, or auto)"
    if t.algorithm not in ("lora", "dora", "qlora"):
        return "it trains LoRA, DoRA and QLoRA (NF4) supervised fine-tuning only"
    if t.nodes > 1:
        return (
            "several nodes per job train on the huggingface engine (torchtune's distributed "
            "recipe runs on the ranks of one machine here)"
        )
    if t.ranks > 1 and t.algorithm == "qlora":
        return (
            "QLoRA on several devices (NF4 weights sharded by FSDP) is not verified with this "
            "provider; use one device per job, or LoRA/DoRA"
        )
    if not t.torchtune_targets:
        return (
            "its builders adapt q/k/v/output projections, all of the MLP and the output; "
            "the requested modules do not fit that"
        )
    return None


def _huggingface(t: JobTraits) -> str | None:
    if "qlora" in t.algorithm:
        return (
            "QLoRA here would need bitsandbytes on a CUDA device, which this provider does not "
            "ship; QLoRA runs on the torchtune engine (Llama 3 with a tiktoken tokenizer, NF4, "
            "CPU or GPU), or send quantize_base=false"
        )
    if t.layout == "meta":
        return "it reads the Hugging Face layout (config.json + safetensors), not Meta's"
    if not t.hf_tokenizer and t.layout is not None:
        return "it needs the model's Hugging Face tokenizer (tokenizer.json)"
    return None


@dataclass(frozen=True)
class EngineInfo:
    name: str
    summary: str
    refusal: Callable[[JobTraits], str | None]  # why it cannot run a job, or None


# In order of preference for `engine: auto`: torchtune where it runs (the engine these
# jobs were first measured on), the Hugging Face engine for everything else.
ENGINES: dict[str, EngineInfo] = {
    "torchtune": EngineInfo(
        "torchtune", "Llama-3 models with a tiktoken tokenizer; LoRA, DoRA, QLoRA", _torchtune
    ),
    "huggingface": EngineInfo(
        "huggingface",
        "any Hugging Face causal LM (transformers + PEFT); LoRA, DoRA, full fine-tuning, OSFT",
        _huggingface,
    ),
}


def select_engine(traits: JobTraits, preference: str = "auto") -> EngineChoice:
    """The engine for a job, or Unsupported naming why each engine cannot run it."""
    what = f"a {traits.family!r} model with {traits.algorithm}"
    if preference != "auto":
        info = ENGINES.get(preference)
        if info is None:
            raise Unsupported(f"engine {preference!r} does not exist; use one of {list(ENGINES)}")
        why = info.refusal(traits)
        if why:
            raise Unsupported(
                f"engine {preference!r} (set in the provider config) cannot train {what}: {why}"
            )
        return EngineChoice(name=preference, reason=f"set in the provider config ({preference})")
    refusals: list[str] = []
    for info in ENGINES.values():
        why = info.refusal(traits)
        if why is None:
            skipped = "; ".join(refusals)
            reason = f"auto: {info.name} runs {what}" + (f" (not {skipped})" if skipped else "")
            return EngineChoice(name=info.name, reason=reason)
        refusals.append(f"{info.name}: {why}")
    raise Unsupported(f"no engine can train {what}: " + "; ".join(refusals))
