"""How the Hugging Face engine spreads a model over several ranks: a whole copy on every rank
(DDP), or each rank holding 1/N of the parameters, gradients and optimizer state (FSDP2:
`torch.distributed.fsdp.fully_shard` on every decoder layer, then on the root).

The choice (`choose`), for a job on more than one rank (a job made before this engine could
shard, TrainSpec.sharding "ddp", keeps DDP):
- the request's `efficiency_config.memory_efficient_fsdp_wrap` or `fsdp_cpu_offload` asks for
  FSDP (`fsdp_cpu_offload` also keeps the shards and the optimizer step on the CPU; on CUDA
  only: on a CPU device the parameters are there already);
- otherwise FSDP when a whole training copy (weights, plus for the trained parameters their
  gradients and the optimizer's states: 16 bytes a parameter for fp32 AdamW) would take more
  than half of one GPU's memory, the other half being left for activations and the logits;
- otherwise DDP: on a CPU device always (the ranks share one host memory, and DDP is the faster
  of the two on small models), and for OSFT (its parametrized matrices do not shard).

Parameters keep the job's dtype (bf16 by default) as DDP's do; gradients are reduced in fp32.
Checkpoints are consolidated: rank 0 writes the full weights (merged/, adapter/) and the full
optimizer state in the same training-state layout as DDP's, so a checkpoint resumes under
either strategy and any number of ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch

from ...core.spec import JobSpec
from ..distributed import Ranks

# A GPU keeps this share of its memory for what is not weights, gradients or optimizer state.
_ACTIVATION_SHARE = 0.5
# Optimizer states per trained parameter, each of the parameter's size.
_OPTIMIZER_STATES = {"adam": 2, "adamw": 2, "sgd": 0}


@dataclass(frozen=True)
class Plan:
    strategy: Literal["single", "ddp", "fsdp"]
    reason: str
    cpu_offload: bool = False

    @property
    def fsdp(self) -> bool:
        return self.strategy == "fsdp"


def training_bytes(model: torch.nn.Module, spec: JobSpec) -> int:
    """A whole training copy's bytes: the weights, and for each trained parameter its
    gradient and optimizer states (LoRA's adapter is too small to count)."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if spec.lora is not None:
        return weights
    return weights * (2 + _OPTIMIZER_STATES[spec.optim.type])


def choose(spec: JobSpec, ranks: Ranks, device: torch.device, model: torch.nn.Module) -> Plan:
    """DDP or FSDP for this job (module docstring); every rank reaches the same plan."""
    t = spec.train
    asked = t.memory_efficient_fsdp_wrap or t.fsdp_cpu_offload
    if ranks.world == 1:
        if asked:
            print("efficiency: one rank: nothing to shard (FSDP needs several ranks)")
        return Plan("single", "one rank")
    if t.sharding == "ddp":  # a job from before FSDP existed on this engine
        if asked:
            print(
                "efficiency: fsdp_cpu_offload / memory_efficient_fsdp_wrap: this job was made "
                "before the huggingface engine could shard; it trains on DDP as it started"
            )
        return Plan("ddp", "a job made before this engine could shard (DDP, as it started)")
    if spec.osft is not None:
        if asked:  # refused at submit; a record or CLI job that reaches here anyway
            raise ValueError(_OSFT_REFUSAL)
        return Plan("ddp", "OSFT trains a whole copy on every rank (its matrices do not shard)")
    offload = t.fsdp_cpu_offload and device.type == "cuda"
    if t.fsdp_cpu_offload and not offload:
        print("efficiency: fsdp_cpu_offload: the parameters are on the CPU already")
    if asked:
        flags = [f for f in ("memory_efficient_fsdp_wrap", "fsdp_cpu_offload") if getattr(t, f)]
        return Plan("fsdp", f"requested ({' and '.join(flags)})", offload)
    if device.type != "cuda":
        return Plan("ddp", "CPU ranks share one memory: a whole copy on every rank (DDP)")
    need = training_bytes(model, spec)
    have = torch.cuda.get_device_properties(device).total_memory
    plan = on_gpus(need, have)
    # Any rank short of memory decides for all of them.
    if ranks.sum(1.0 if plan.fsdp else 0.0)[0] > 0 and not plan.fsdp:
        plan = Plan("fsdp", "another rank's GPU is too small for a whole copy")
    if plan.fsdp and not decoder_layers(model):
        return Plan("ddp", f"{type(model).__name__} has no decoder layers to shard")
    return plan


def on_gpus(need: int, have: int) -> Plan:
    """The automatic choice on GPUs of `have` bytes for a whole training copy of `need`."""
    gib = f"{need / 2**30:.1f} GiB of weights, gradients and optimizer state"
    if need > have * (1 - _ACTIVATION_SHARE):
        return Plan("fsdp", f"{gib} exceed half of one GPU's {have / 2**30:.0f} GiB")
    return Plan("ddp", f"{gib} fit in half of one GPU's {have / 2**30:.0f} GiB")


_OSFT_REFUSAL = (
    "OSFT does not shard across ranks (FSDP): send efficiency_config without "
    "memory_efficient_fsdp_wrap and fsdp_cpu_offload (OSFT trains a whole copy on every rank)"
)


def shard(model: torch.nn.Module, plan: Plan, device: torch.device, dtype: torch.dtype) -> None:
    """FSDP2 on each decoder layer, then the root (embeddings, final norm, output), in place:
    each rank keeps its shard on `device` (the CPU with offloading); the layer's full
    parameters exist only while it runs."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    options: dict[str, Any] = {"mesh": mesh}
    if dtype != torch.float32:  # the job's dtype for compute, fp32 for the gradient reduction
        options["mp_policy"] = MixedPrecisionPolicy(reduce_dtype=torch.float32)
    if plan.cpu_offload:
        options["offload_policy"] = CPUOffloadPolicy()
    layers = decoder_layers(model)
    if not layers:
        raise ValueError(
            f"{type(model).__name__} has no decoder layers to shard (FSDP looks for modules "
            "named *DecoderLayer / *Block); send efficiency_config without "
            "memory_efficient_fsdp_wrap and fsdp_cpu_offload to train a whole copy per rank"
        )
    for layer in layers:
        fully_shard(layer, **options)
    fully_shard(model, **options)


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's repeated transformer blocks: what transformers marks as its no-split
    modules (Qwen2DecoderLayer, GPT2Block, ...), found inside a PEFT wrapper too."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or [])
    found: dict[str, torch.nn.Module] = {}
    for path, module in model.named_modules():
        inside = any(path.startswith(f"{outer}.") for outer in found)
        if type(module).__name__ in names and not inside:  # the outermost: sharded once
            found[path] = module
    return list(found.values())


def parameter_bytes(model: torch.nn.Module) -> int:
    """The bytes of parameters this rank holds (its shards under FSDP)."""
    from torch.distributed.tensor import DTensor

    return sum(
        (p.to_local() if isinstance(p, DTensor) else p).numel() * p.element_size()
        for p in model.parameters()
    )


def per_rank(ranks: Ranks, value: int) -> list[int]:
    """Each rank's `value`, in rank order, on every rank."""
    slots = [0.0] * ranks.world
    slots[ranks.rank] = float(value)
    return [int(v) for v in ranks.sum(*slots)]


def full_weights(model: torch.nn.Module, main: bool) -> dict[str, torch.Tensor]:
    """The whole state dict on the CPU of the main rank (empty elsewhere); every rank calls it
    (the shards are gathered one tensor at a time)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    state: dict[str, Any] = get_model_state_dict(model, options=options)
    return state if main else {}


def full_optimizer(optimizer: torch.optim.Optimizer, main: bool) -> dict[str, Any]:
    """The optimizer's state_dict as one rank's optimizer would hold it (DDP's layout: states
    keyed by parameter index, whole tensors on the CPU) on the main rank; every rank calls it."""
    from torch.distributed.tensor import DTensor

    saved = optimizer.state_dict()
    state: dict[int, dict[str, Any]] = {}
    for index in sorted(saved["state"]):
        entry = {}
        for key, value in saved["state"][index].items():
            if isinstance(value, DTensor):
                value = value.full_tensor()  # a collective: every rank, same order
                value = value.cpu() if main else None
            entry[key] = value
        state[index] = entry
    return {"state": state, "param_groups": saved["param_groups"]} if main else {}


def load_optimizer(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> None:
    """A whole optimizer state (full_optimizer's, or a DDP checkpoint's) into an optimizer
    over sharded parameters: each rank keeps its shard of every state."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict[str, Any]] = {}
    for index, entry in saved["state"].items():
        param = params[int(index)]
        state[index] = {
            key: distribute_tensor(value.to(param.device), param.device_mesh, param.placements)
            if isinstance(param, DTensor)
            and isinstance(value, torch.Tensor)
            and value.shape == param.shape
            else value
            for key, value in entry.items()
        }
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
