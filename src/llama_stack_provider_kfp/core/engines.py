"""What each training engine can run, and the choice of engine for a job.

Declared here, without importing any engine, so the server can choose (and explain the choice
in the job record) without loading torch; the implementations live in `training`.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import Unsupported
from .spec import EngineChoice


@dataclass(frozen=True)
class EngineInfo:
    name: str
    families: frozenset[str]  # Hugging Face model_type values
    algorithms: frozenset[str]  # "lora", "dora"
    summary: str

    def runs(self, family: str, algorithm: str) -> bool:
        return family in self.families and algorithm in self.algorithms


# In order of preference for `engine: auto`.
ENGINES: dict[str, EngineInfo] = {
    "torchtune": EngineInfo(
        name="torchtune",
        families=frozenset({"llama"}),
        algorithms=frozenset({"lora", "dora"}),
        summary="Llama-3-architecture models with a tiktoken tokenizer; LoRA and DoRA",
    ),
}


def select_engine(family: str, algorithm: str, preference: str = "auto") -> EngineChoice:
    """The engine for a job, or Unsupported naming what each engine runs."""
    if preference != "auto":
        info = ENGINES.get(preference)
        if info is None:
            raise Unsupported(f"engine {preference!r} does not exist; use one of {list(ENGINES)}")
        if not info.runs(family, algorithm):
            raise Unsupported(
                f"engine {preference!r} (set in the provider config) cannot train a {family!r} "
                f"model with {algorithm}: it runs {info.summary}"
            )
        return EngineChoice(
            name=preference, reason=f"set in the provider config (engine: {preference})"
        )
    for info in ENGINES.values():
        if info.runs(family, algorithm):
            return EngineChoice(
                name=info.name,
                reason=f"auto: first engine that runs {family!r} models with {algorithm}",
            )
    offered = "; ".join(f"{i.name}: {i.summary}" for i in ENGINES.values())
    raise Unsupported(f"no engine trains a {family!r} model with {algorithm} (engines: {offered})")
