"""Which of a model's modules a LoRA request adapts, in every engine's vocabulary.

Requests name modules two ways: torchtune's (`q_proj, k_proj, v_proj, output_proj` plus the
`apply_lora_to_mlp` / `apply_lora_to_output` flags) and Hugging Face's (`q_proj ... o_proj,
gate_proj, up_proj, down_proj`, or any module name of the model). PEFT applies a config as long
as *one* target matches, so a name is resolved here against the model's own module paths and
never dropped silently: a projection that lives inside a fused module (Phi-3's `qkv_proj`,
GPT-2's `c_attn`) maps to that module, which then adapts every projection in it; a name the
model has nowhere is an InvalidRequest listing the model's modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .errors import InvalidRequest

_ATTN_PARENTS = ("self_attn", "attn", "attention", "self_attention", "mixer")
_MLP_PARENTS = ("mlp", "feed_forward", "ffn", "block_sparse_moe")
_FUSED_QKV = ("qkv_proj", "c_attn", "query_key_value", "Wqkv", "W_pack")
_ATTN_OUT = ("o_proj", "out_proj", "dense", "c_proj")
_OUTPUT = ("lm_head", "output")


@dataclass
class Targets:
    peft: list[str]  # module paths PEFT matches by suffix
    torchtune_attn: list[str] | None  # None: torchtune's builders cannot express the request
    notes: list[str] = field(default_factory=list)


def _parent(path: str) -> str:
    return path.rsplit(".", 1)[0] if "." in path else ""


def _leaf(path: str) -> str:
    return path.rsplit(".", 1)[-1]


def _canonical(name: str) -> str:
    return "o_proj" if name == "output_proj" else name


def tied_output_problem(model_name: str, to_output: bool, tied: bool) -> str | None:
    """Why LoRA cannot adapt this output projection (it is the embedding matrix), or None."""
    if to_output and tied:
        return f"{model_name} ties its output projection to the embeddings; set " \
            "apply_lora_to_output=false"  # fmt: skip
    return None


def resolve(
    requested: list[str],
    to_mlp: bool,
    to_output: bool,
    modules: list[str],
    tied: bool,
) -> Targets:
    """Resolve a LoRA request against `modules` (paths below the layer index; see ModelSpec).
    With no module list (weights unread at submit), names are only translated. An output
    projection tied to the embeddings is never adapted (the front end refuses the request)."""
    to_output = to_output and not tied
    wanted = [_canonical(n) for n in requested]
    expressible = all(n in ("q_proj", "k_proj", "v_proj", "o_proj") for n in wanted)
    torchtune = [n if n != "o_proj" else "output_proj" for n in wanted] if expressible else None
    if not modules:
        guess = list(dict.fromkeys(wanted))
        if to_mlp:
            guess += ["gate_proj", "up_proj", "down_proj"]
        if to_output:
            guess.append("lm_head")
        return Targets(guess, torchtune)

    attn = [m for m in modules if _leaf(_parent(m)) in _ATTN_PARENTS]
    peft: list[str] = []
    notes: list[str] = []
    missing: list[str] = []
    for name, asked in zip(wanted, requested, strict=True):
        exact = [m for m in modules if m == name or _leaf(m) == name or m.endswith("." + name)]
        if exact:
            peft += exact
            continue
        fused = [m for m in attn if _leaf(m) in _FUSED_QKV]
        out = [m for m in attn if _leaf(m) in _ATTN_OUT]
        if name in ("q_proj", "k_proj", "v_proj") and fused:
            peft += fused
            notes.append(f"{asked} is part of the fused {fused[0]}: LoRA adapts all of it")
        elif name == "o_proj" and out:
            peft += out
        else:
            missing.append(asked)
    if missing:
        raise InvalidRequest(
            f"LoRA module(s) {missing} are not in this model; its weight matrices are: "
            f"{', '.join(sorted(set(modules)))}"
        )
    if to_mlp:
        mlp = [m for m in modules if _leaf(_parent(m)) in _MLP_PARENTS]
        if not mlp:
            raise InvalidRequest(
                "apply_lora_to_mlp=true but no MLP module was found; name the modules in "
                f"lora_attn_modules instead (the model has: {', '.join(sorted(set(modules)))})"
            )
        peft += mlp
    if to_output:
        heads = [m for m in modules if m in _OUTPUT]
        if not heads:
            raise InvalidRequest("apply_lora_to_output=true but the model has no lm_head")
        peft += heads
    return Targets(list(dict.fromkeys(peft)), torchtune, notes)


def module_paths(weight_names: list[str], shapes: dict[str, list[int]] | None = None) -> list[str]:
    """Weight names (model.layers.0.self_attn.q_proj.weight) -> module paths below the layer
    index (self_attn.q_proj); only matrices when shapes are known (norms are vectors)."""
    found = set()
    for name in weight_names:
        if not name.endswith(".weight"):
            continue
        if shapes is not None and len(shapes.get(name, [])) != 2:
            continue
        parts = name.removesuffix(".weight").split(".")
        digits = [i for i, p in enumerate(parts) if p.isdigit()]
        found.add(".".join(parts[digits[-1] + 1 :]) if digits else parts[-1])
    return sorted(found)
