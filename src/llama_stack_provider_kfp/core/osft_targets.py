"""Which of a model's weight matrices OSFT decomposes, named as for LoRA (core.lora_targets).

By default every attention and MLP projection (mini-trainer's choice); a request may name
modules in torchtune's or Hugging Face's spelling, or any matrix of the model by its path
below the layer index. A projection inside a fused module (Phi-3's `qkv_proj`, GPT-2's
`c_attn`) maps to that module. An output projection or embedding tied to the other is
refused: decomposing one side would untie them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InvalidRequest
from .lora_targets import _ATTN_PARENTS, _MLP_PARENTS, _OUTPUT, _leaf, _parent, resolve

_EMBEDDINGS = ("embed_tokens", "wte", "word_embeddings", "tok_embeddings", "embed_in")


@dataclass
class OSFTTargets:
    modules: list[str]  # paths below the layer index; empty: resolved by the train step
    notes: list[str] = field(default_factory=list)


def resolve_osft(requested: list[str], modules: list[str], tied: bool) -> OSFTTargets:
    """OSFT's target modules on a model whose matrices are `modules` (empty: unknown, the
    names are kept for the train step to resolve)."""
    if not modules:
        return OSFTTargets([])
    if not requested:
        found = [m for m in modules if _leaf(_parent(m)) in _ATTN_PARENTS + _MLP_PARENTS]
        if not found:
            raise InvalidRequest(
                "OSFT found no attention or MLP projection in this model; name the matrices "
                f"in osft.target_modules (the model has: {', '.join(sorted(set(modules)))})"
            )
        return OSFTTargets(found)
    # Checked by name: a tied model's checkpoint stores no lm_head to resolve against.
    shared = [n for n in requested if _leaf(n) in _OUTPUT + _EMBEDDINGS]
    if tied and shared:
        raise InvalidRequest(
            f"osft.target_modules names {', '.join(shared)}, which this model ties to its "
            "embeddings (one matrix for both); leave it out of osft.target_modules"
        )
    try:
        targets = resolve(requested, False, False, modules, tied)
    except InvalidRequest as e:
        raise InvalidRequest(str(e).replace("LoRA module(s)", "osft.target_modules")) from None
    notes = [n.replace("LoRA adapts", "OSFT decomposes") for n in targets.notes]
    return OSFTTargets(targets.peft, notes)
