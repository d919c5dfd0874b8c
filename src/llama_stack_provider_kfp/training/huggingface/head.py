"""The output projection and the family's logit transforms, a chunk of positions at a time.

The model's forward runs as usual (through DDP or PEFT wrappers, so their hooks and gradient
reduction work), except that its output module (`get_output_embeddings()`, the PEFT LoRA layer
when the output is adapted) captures the final hidden states instead of projecting them. Each
chunk then goes through that module and the transforms the family applies between it and the
returned logits (TRANSFORMS): under activation checkpointing (nll: per-position values, DPO),
or with its gradients taken in the forward (summed_nll: SFT's sum, no recomputation).

The transforms are read from transformers' modeling files; a model whose own logits this
does not reproduce (checked once per model on its first batch, against the model's own
forward at a few positions) falls back to the whole logits, saying so in the log.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .data import IGNORE

Transform = Callable[[torch.Tensor], torch.Tensor]
PROBE_POSITIONS = 8  # positions the first batch compares with the model's own logits


def _divide(attr: str) -> Callable[[Any], Transform | None]:
    def make(config: Any) -> Transform | None:
        by = getattr(config, attr, None)
        return None if by is None else (lambda x: x / by)

    return make


def _multiply(attr: str) -> Callable[[Any], Transform | None]:
    def make(config: Any) -> Transform | None:
        by = getattr(config, attr, None)
        return None if by is None else (lambda x: x * by)

    return make


class _Softcap:
    """Gemma's final_logit_softcapping (a class: Liger's fused loss takes the cap itself)."""

    def __init__(self, cap: float) -> None:
        self.cap = cap

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / self.cap) * self.cap


def _softcap(config: Any) -> Transform | None:
    cap = getattr(config, "final_logit_softcapping", None)
    return None if cap is None else _Softcap(cap)


# model_type -> what its ForCausalLM does to lm_head's output (transformers 5 modeling files).
TRANSFORMS: dict[str, Callable[[Any], Transform | None]] = {
    **{t: _divide("logits_scaling") for t in ("granite", "granitemoe", "granitemoeshared",
                                             "granitemoehybrid", "granite_swa",
                                             "granitemoe_swa")},
    "hyperclovax": _multiply("logits_scaling"),
    **{t: _multiply("logit_scale") for t in ("cohere", "cohere2", "cohere2_moe")},
    "falcon_h1": _multiply("lm_head_multiplier"),
    **{t: _softcap for t in ("gemma2", "gemma3", "gemma3_text", "gemma3n_text", "gemma4_text")},
}  # fmt: skip


def unwrap(model: Any) -> Any:
    """The model under a DDP wrapper (PEFT models answer for their base model themselves)."""
    return (
        getattr(model, "module", model) if type(model).__name__.endswith("DataParallel") else model
    )


def vocab_size(model: Any) -> int:
    out = unwrap(model).get_output_embeddings()
    weight = getattr(out, "weight", None)
    return int(weight.shape[0]) if isinstance(weight, torch.Tensor) else 0


@dataclass(frozen=True)
class Head:
    module: torch.nn.Module  # what projects hidden states to the vocabulary
    transform: Transform | None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        out = self.module(hidden)
        return (self.transform(out) if self.transform is not None else out).float()

    def _nll(self, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self.logits(hidden)
        nll = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                              reduction="none")  # fmt: skip
        return nll.view(targets.shape)

    def hidden(self, model: Any, inputs: dict[str, torch.Tensor], keep: torch.Tensor) -> Any:
        """The final hidden states [B, K, H] at `keep`, from the model's own forward."""
        with self._captured() as seen:
            model(**inputs, logits_to_keep=keep)
        return seen[0] if len(seen) == 1 else None

    def nll(self, model: Any, inputs: dict[str, torch.Tensor], keep: torch.Tensor,
            targets: torch.Tensor, positions: int) -> torch.Tensor:  # fmt: skip
        """Per-position NLL [B, K] (fp32), `positions` positions at a time."""
        hidden = self.hidden(model, inputs, keep)
        parts = []
        for start in range(0, targets.shape[1], positions):
            h, t = hidden[:, start : start + positions], targets[:, start : start + positions]
            if torch.is_grad_enabled():  # recomputed in the backward, not kept
                parts.append(checkpoint(self._nll, h, t, use_reentrant=False))
            else:
                parts.append(self._nll(h, t))
        return torch.cat(parts, dim=1)

    def summed_nll(self, model: Any, inputs: dict[str, torch.Tensor], keep: torch.Tensor,
                   targets: torch.Tensor, positions: int) -> torch.Tensor:  # fmt: skip
        """The NLL summed over every position (SFT's loss is this over the labelled count).
        With gradients, each chunk's gradients are taken in the forward (_FusedSum: nothing
        is recomputed); FSDP's sharded parameters take nll()'s checkpointed chunks."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        if not torch.is_grad_enabled() or any(_sharded(p) for p in params):
            return self.nll(model, inputs, keep, targets, positions).sum()
        hidden = self.hidden(model, inputs, keep)
        fused = liger_loss(self, hidden)
        if fused is not None:
            return fused(self.module.weight, hidden.flatten(0, 1), targets.flatten(),
                         getattr(self.module, "bias", None))  # fmt: skip
        if not (hidden.requires_grad or params):
            return self.nll(model, inputs, keep, targets, positions).sum()
        total: torch.Tensor = _FusedSum.apply(hidden, self, targets, positions, *params)
        return total

    @contextlib.contextmanager
    def _captured(self) -> Iterator[list[torch.Tensor]]:
        """While inside: the output module records its input and returns a [.., 1] stand-in
        (the family's transforms then run on that, and the result is not used)."""
        seen: list[torch.Tensor] = []
        module = self.module
        own = module.__dict__.get("forward")  # e.g. accelerate's hooks set one

        def capture(hidden: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            seen.append(hidden)
            return hidden.new_zeros(*hidden.shape[:-1], 1)

        module.forward = capture
        try:
            yield seen
        finally:
            if own is not None:
                module.forward = own
            else:
                del module.forward


def liger_loss(head: Head, hidden: torch.Tensor) -> Any:
    """Liger-Kernel's fused linear cross-entropy (Triton, CUDA only; `pip install
    liger-kernel`) summing the NLL, where it computes what this module does: a plain Linear
    output (not PEFT-adapted) with no transform but Gemma's soft-capping. None otherwise, and
    where it is not installed."""
    if hidden.device.type != "cuda" or type(head.module) is not torch.nn.Linear:
        return None
    if head.transform is not None and not isinstance(head.transform, _Softcap):
        return None
    try:
        from liger_kernel.transformers import (  # type: ignore[import-not-found, unused-ignore]
            LigerFusedLinearCrossEntropyLoss,
        )
    except ImportError:
        return None
    cap = head.transform.cap if isinstance(head.transform, _Softcap) else None
    return LigerFusedLinearCrossEntropyLoss(
        ignore_index=IGNORE, reduction="sum", softcap=cap, accum_dtype=torch.float32
    )


def _sharded(param: torch.Tensor) -> bool:
    return type(param).__name__ == "DTensor" or type(param.data).__name__ == "DTensor"


class _FusedSum(torch.autograd.Function):
    """sum(NLL) whose gradients (for the hidden states and the output module's trainable
    parameters) are computed chunk by chunk in the forward, where the chunk's logits exist
    anyway; the backward scales them by the incoming gradient (a scalar). Same arithmetic as
    autograd's backward, without recomputing the projection; the parameters' gradients are
    accumulated over the chunks in fp32 (for an untied full-fine-tuned output that is 4 bytes
    a vocabulary weight, held from the forward to the backward)."""

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, head: Head, targets: torch.Tensor,
                positions: int, *params: torch.Tensor) -> torch.Tensor:  # fmt: skip
        wants_hidden = hidden.requires_grad
        grad_hidden = torch.zeros_like(hidden) if wants_hidden else None
        grads = [torch.zeros_like(p, dtype=torch.float32) for p in params]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, targets.shape[1], positions):
            end = start + positions
            with torch.enable_grad():
                h = hidden[:, start:end].detach().requires_grad_(wants_hidden)
                nll = head._nll(h, targets[:, start:end]).sum()
            wrt = [h, *params] if wants_hidden else list(params)
            got = torch.autograd.grad(nll, wrt, allow_unused=True)
            if grad_hidden is not None:
                grad_hidden[:, start:end] = got[0]
                got = got[1:]
            for acc, g in zip(grads, got, strict=True):
                if g is not None:
                    acc += g
            total += nll.detach()
        ctx.wants_hidden = wants_hidden
        ctx.dtypes = [p.dtype for p in params]
        ctx.save_for_backward(*([grad_hidden] if grad_hidden is not None else []), *grads)
        return total

    @staticmethod
    def backward(ctx: Any, upstream: torch.Tensor) -> tuple[Any, ...]:
        saved = list(ctx.saved_tensors)
        grad_hidden = None
        if ctx.wants_hidden:
            grad_hidden = saved.pop(0)
            grad_hidden = grad_hidden * upstream.to(grad_hidden.dtype)
        grads = [(g * upstream).to(dtype) for g, dtype in zip(saved, ctx.dtypes, strict=True)]
        return (grad_hidden, None, None, None, *grads)


_FOUND: weakref.WeakKeyDictionary[Any, Head | None] = weakref.WeakKeyDictionary()


def find(model: Any, batch: dict[str, torch.Tensor], keep: torch.Tensor) -> Head | None:
    """The model's head, or None where the chunked loss cannot reproduce its logits (decided
    on its first batch, once per model)."""
    inner = unwrap(model)
    if inner in _FOUND:
        return _FOUND[inner]
    config = inner.config
    model_type = getattr(config, "model_type", "")
    transform = TRANSFORMS[model_type](config) if model_type in TRANSFORMS else None
    head = Head(inner.get_output_embeddings(), transform)
    problem = _probe(head, inner, batch, keep[:PROBE_POSITIONS])
    if problem:
        print(f"loss: the chunked cross-entropy does not reproduce {model_type!r}'s logits "
              f"({problem}); this model's loss uses its whole logits")  # fmt: skip
    _FOUND[inner] = None if problem else head
    return _FOUND[inner]


@torch.no_grad()
def _probe(head: Head, model: Any, batch: dict[str, torch.Tensor], keep: torch.Tensor) -> str:
    """Why the chunked logits differ from the model's own at `keep` ('' when they agree)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    modes = {m: m.training for m in model.modules()}
    model.eval()  # no dropout: both forwards see the same hidden states, no RNG is drawn
    try:
        want = model(**inputs, logits_to_keep=keep).logits.float()
        hidden = head.hidden(model, inputs, keep)
        if hidden is None:
            return "its forward does not call get_output_embeddings() once"
        got = head.logits(hidden)
    except Exception as e:  # a family whose forward needs real logits from its head
        return f"{type(e).__name__}: {e}"
    finally:
        for m, training in modes.items():
            m.training = training
    if got.shape != want.shape:
        return f"logits of shape {tuple(want.shape)}, {tuple(got.shape)} here"
    # Equal in practice (the same operations); the bound allows another matmul order.
    fp32 = next(model.parameters()).dtype == torch.float32
    tolerance = 1e-5 if fp32 else 1e-2
    worst = float((got - want).abs().max())
    scale = float(want.abs().max()) or 1.0
    return "" if worst <= tolerance * scale else f"they differ by up to {worst:.3g}"
