"""OSFT (Orthogonal Subspace Fine-Tuning; Nayak et al., "Sculpting Subspaces",
arXiv:2504.07097) on plain PyTorch, for any module whose forward reads `self.weight`.

Each target matrix W (out x in; GPT-2's Conv1D stores in x out, which only swaps the roles of
U and V) is split by an fp32 SVD on the training device into its top singular directions,
W_high = U_high diag(S_high) V_high, held as frozen buffers, and the rest, U_low diag(S_low)
V_low, trained. The module's weight becomes W_high + W_low through a torch parametrization, so
its forward is unchanged; at step 0 it equals W up to float rounding. Parameters outside the
targets (embeddings, norms, biases) train as in full fine-tuning, as mini-trainer does, unless
`freeze_non_targets` (bench/forgetting.py: on a tied-embedding toy model the forgetting moves
into those free parameters).

How many directions stay frozen: floor(rank x (1 - unfreeze_rank_ratio)), at most rank - 1,
so that at least one trains (mini-trainer's rule; ratio 1 trains every direction).

Keeping updates out of the frozen subspace, two projections per optimizer step:
- before it, the gradients of U_low and V_low lose their components in span(U_high) and in
  the row space of V_high: dU -= U_high (U_high^T dU), dV -= (dV V_high^T) V_high. This is
  mini-trainer's `project_gradient_to_orthogonal_space` and the paper's update rule; the
  optimizer's moments see only projected gradients;
- after it, the same projection of U_low and V_low themselves. An adaptive optimizer's
  per-element scaling (Adam) and decoupled weight decay turn a projected gradient into an
  update that is no longer orthogonal; mini-trainer lets that drift accumulate. Projecting the
  parameters removes it, so U_high^T W V_high^T stays diag(S_high) through training: the frozen
  part of each matrix is what it was, not only nearly.
Both cost two thin matmuls per matrix.

Factors are stored in the model's dtype (as mini-trainer does by default; FSDP and DDP want
one dtype) and the weight is rebuilt in fp32, then cast. With bf16 weights the subspaces are
orthogonal to bf16 precision only.

Unlike mini-trainer, the frozen part's product W_high is kept as a buffer: each forward then
rebuilds only the trainable part, m x (rank - k) x n multiply-adds instead of m x rank x n
(4x fewer at ratio 0.25), for one more matrix of the weight's size in memory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

FACTOR_NAMES = ("U_high", "S_high", "V_high", "U_low", "S_low", "V_low")


def frozen_rank(rank: int, unfreeze_rank_ratio: float) -> int:
    """How many of a rank-`rank` matrix's top singular directions stay frozen."""
    return min(math.floor(rank * (1.0 - unfreeze_rank_ratio) + 1e-9), rank - 1)


class Subspace(nn.Module):
    """The parametrization W = U_high diag(S_high) V_high + U_low diag(S_low) V_low.

    torch keeps the trainable factors as the module's `parametrizations.weight.original0..2`
    (what `right_inverse` returns); the frozen ones are this module's buffers."""

    U_high: torch.Tensor
    S_high: torch.Tensor
    V_high: torch.Tensor
    W_high: torch.Tensor

    def __init__(self, factors: dict[str, torch.Tensor], dtype: torch.dtype) -> None:
        super().__init__()
        for name in ("U_high", "S_high", "V_high"):
            self.register_buffer(name, factors[name])
        self.register_buffer("W_high", torch.empty(0))
        self.refresh()
        self._low: tuple[torch.Tensor, ...] = (factors["U_low"], factors["S_low"], factors["V_low"])
        self.dtype = dtype

    @torch.no_grad()
    def refresh(self) -> None:
        """W_high from the frozen factors (again after they were broadcast or loaded)."""
        f32 = torch.float32
        high = (self.U_high.to(f32) * self.S_high.to(f32)) @ self.V_high.to(f32)
        self.W_high = high.to(self.U_high.dtype)

    def forward(self, u_low: torch.Tensor, s_low: torch.Tensor, v_low: torch.Tensor):
        f32 = torch.float32
        low = (u_low.to(f32) * s_low.to(f32)) @ v_low.to(f32)
        return (self.W_high.to(f32) + low).to(self.dtype)

    def right_inverse(self, weight: torch.Tensor):
        # Called once, by register_parametrization: the trainable factors become parameters.
        low, self._low = self._low, ()
        return low


def decompose(weight: torch.Tensor, unfreeze_rank_ratio: float) -> dict[str, torch.Tensor]:
    """The six factors of one matrix: an fp32 SVD where the weight is, stored in its dtype."""
    u, s, vt = torch.linalg.svd(weight.detach().to(torch.float32), full_matrices=False)
    k = frozen_rank(s.shape[0], unfreeze_rank_ratio)
    parts = (u[:, :k], s[:k], vt[:k], u[:, k:], s[k:], vt[k:])
    return {n: p.contiguous().to(weight.dtype) for n, p in zip(FACTOR_NAMES, parts, strict=True)}


def _empty(weight: torch.Tensor, unfreeze_rank_ratio: float) -> dict[str, torch.Tensor]:
    """Factors of the right shapes, to be filled by a broadcast or a checkpoint."""
    m, n = weight.shape
    r = min(m, n)
    k = frozen_rank(r, unfreeze_rank_ratio)
    shapes = ((m, k), (k,), (k, n), (m, r - k), (r - k,), (r - k, n))
    return {
        name: torch.zeros(shape, dtype=weight.dtype, device=weight.device)
        for name, shape in zip(FACTOR_NAMES, shapes, strict=True)
    }


@dataclass
class _Target:
    path: str  # the module's path in the model (model.layers.0.self_attn.q_proj)
    module: nn.Module

    @property
    def subspace(self) -> Subspace:
        found: Any = self.module.parametrizations.weight[0]  # type: ignore[union-attr,index]
        return found

    @property
    def low(self) -> tuple[nn.Parameter, nn.Parameter, nn.Parameter]:
        p: Any = self.module.parametrizations.weight  # type: ignore[union-attr]
        return p.original0, p.original1, p.original2

    def factors(self) -> dict[str, torch.Tensor]:
        s = self.subspace
        high = {"U_high": s.U_high, "S_high": s.S_high, "V_high": s.V_high}
        low = dict(zip(("U_low", "S_low", "V_low"), self.low, strict=True))
        return {k: v.detach() for k, v in {**high, **low}.items()}


@dataclass
class Decomposition:
    """What apply() did: the SVD's cost, for the job's log and progress."""

    matrices: int
    seconds: float
    trainable: int  # parameters the optimizer updates (factors and every non-target)
    total: int  # parameters of the model before OSFT
    frozen_directions: int
    directions: int


class OSFT:
    """The targets of one model, once parametrized: projections around each optimizer step,
    the factors for a resumable checkpoint, and the folded weights for outputs."""

    def __init__(self, targets: list[_Target], summary: Decomposition) -> None:
        self.targets = targets
        self.summary = summary

    @torch.no_grad()
    def project_gradients(self) -> None:
        for t in self.targets:
            s, (u, _, v) = t.subspace, t.low
            if u.grad is not None:
                u.grad.sub_(s.U_high @ (s.U_high.T @ u.grad))
            if v.grad is not None:
                v.grad.sub_((v.grad @ s.V_high.T) @ s.V_high)

    @torch.no_grad()
    def project_parameters(self) -> None:
        for t in self.targets:
            s, (u, _, v) = t.subspace, t.low
            u.sub_(s.U_high @ (s.U_high.T @ u))
            v.sub_((v @ s.V_high.T) @ s.V_high)

    def factors(self) -> dict[str, dict[str, torch.Tensor]]:
        """Every target's six factors, by module path (CPU copies, for a checkpoint)."""
        return {t.path: {k: v.cpu() for k, v in t.factors().items()} for t in self.targets}

    @torch.no_grad()
    def folded_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The model's state dict with every target's weight as a plain matrix (what
        `from_pretrained` reads), without the factors."""
        out = {k: v for k, v in model.state_dict().items() if ".parametrizations." not in k}
        for t in self.targets:
            weight: Any = t.module.weight
            out[f"{t.path}.weight"] = weight.detach().clone()
        return out


def target_paths(model: nn.Module, modules: list[str]) -> list[str]:
    """The model's modules (full paths) whose path ends in one of `modules` (paths below the
    layer index, as core.lora_targets resolves them) and that hold a weight matrix."""
    found = []
    for path, module in model.named_modules():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
            continue
        if any(path == m or path.endswith("." + m) for m in modules):
            found.append(path)
    return found


def apply(
    model: nn.Module,
    modules: list[str],
    unfreeze_rank_ratio: float,
    *,
    saved: dict[str, dict[str, torch.Tensor]] | None = None,
    decompose_here: bool = True,
    freeze_non_targets: bool = False,
    report: Callable[[int, int, str, float], None] = lambda done, total, path, secs: None,
) -> OSFT:
    """Parametrize every target of `model` in place. `saved`: factors of a checkpoint (no
    SVD); `decompose_here` False: zeros of the right shapes, for a rank that receives rank
    0's factors (broadcast()). `report(done, total, path, seconds)` after each matrix."""
    if not 0.0 < unfreeze_rank_ratio <= 1.0:
        raise ValueError(f"unfreeze_rank_ratio must be in (0, 1] (got {unfreeze_rank_ratio})")
    paths = target_paths(model, modules)
    if not paths:
        raise ValueError(f"OSFT: no weight matrix of this model matches {modules}")
    if saved is not None and set(saved) != set(paths):
        raise ValueError(
            "OSFT: the checkpoint's factors are for other modules than this job targets "
            f"({sorted(set(saved) ^ set(paths))[:3]})"
        )
    total = sum(p.numel() for p in model.parameters())
    started = time.perf_counter()
    targets, frozen, directions = [], 0, 0
    for i, path in enumerate(paths):
        module = model.get_submodule(path)
        weight: Any = module.weight
        if saved is not None:
            factors = {k: v.to(weight.device, weight.dtype) for k, v in saved[path].items()}
        elif decompose_here:
            factors = decompose(weight, unfreeze_rank_ratio)
        else:
            factors = _empty(weight, unfreeze_rank_ratio)
        sub = Subspace(factors, weight.dtype)
        parametrize.register_parametrization(module, "weight", sub, unsafe=True)
        targets.append(_Target(path, module))
        frozen += factors["S_high"].shape[0]
        directions += factors["S_high"].shape[0] + factors["S_low"].shape[0]
        report(i + 1, len(paths), path, time.perf_counter() - started)
    if freeze_non_targets:
        for name, p in model.named_parameters():
            if ".parametrizations.weight.original" not in name:
                p.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    summary = Decomposition(len(paths), time.perf_counter() - started, trainable, total,
                            frozen, directions)  # fmt: skip
    return OSFT(targets, summary)


def broadcast(osft: OSFT) -> None:
    """Rank 0's factors to every rank (one SVD per job, not per rank)."""
    import torch.distributed as dist

    with torch.no_grad():
        for t in osft.targets:
            s = t.subspace
            for tensor in (s.U_high, s.S_high, s.V_high, *t.low):
                dist.broadcast(tensor.data, src=0)
            s.refresh()


def describe(summary: Decomposition, ratio: float, device: Any, peak_mb: float) -> dict[str, Any]:
    """The decomposition as the job's progress and result show it."""
    return {
        "unfreeze_rank_ratio": ratio,
        "matrices": summary.matrices,
        "svd_seconds": round(summary.seconds, 3),
        "svd_device": str(device),
        "peak_memory_mb": round(peak_mb, 1),
        "frozen_directions": summary.frozen_directions,
        "directions": summary.directions,
        "trainable_parameters": summary.trainable,
        "model_parameters": summary.total,
    }
