"""CUDA-only paths (`pytest -m gpu` on a machine with a GPU; skipped elsewhere): NCCL
collectives of training.distributed, the CUDA RNG state a resumable checkpoint carries, and
torchtune's distributed recipe with fsdp_cpu_offload (which does nothing on the CPU), OSFT
in bf16, and the Hugging Face engine's FSDP2 in bf16 with CPU offload (2 GPUs)."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness.demo_data import instruct_rows
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.training import resume

pytestmark = pytest.mark.gpu

# Run under torchrun, one rank per GPU. With one GPU the group holds one rank, and
# Ranks(world=2) forces Ranks.sum through its collective (a one-rank Ranks returns its values).
RANKS = """
import torch, torch.distributed as dist
from llama_stack_provider_kfp.training.distributed import Ranks, join_ranks

r = join_ranks()
assert r.device("cuda").type == "cuda"
if r.world == 1:
    dist.init_process_group("nccl")
    r = Ranks(0, 2, 0)
assert dist.get_backend() == "nccl"
n = dist.get_world_size()
got = r.sum(dist.get_rank() + 1, 0.5)
assert got == [n * (n + 1) / 2, 0.5 * n], got
r.barrier()
print("summed", n, flush=True)
"""


def test_ranks_sum_over_nccl(tmp_path):
    gpus = min(torch.cuda.device_count(), 2)
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone",
         f"--nproc_per_node={gpus}", str(script)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert done.stdout.count(f"summed {gpus}") == gpus


def test_cuda_rng_state_survives_a_checkpoint(tmp_path):
    """rng_state() as a checkpoint stores it (torch.save) and a resumed run reads it back
    (torch.load with weights_only): the same CUDA, CPU and Python draws afterwards."""
    state = resume.rng_state()
    assert len(state["cuda"]) == torch.cuda.device_count()
    torch.save({"rng": state}, tmp_path / "state.pt")

    def draws() -> tuple:
        return torch.rand(8, device="cuda").cpu(), torch.rand(8), random.random()

    first = draws()
    resume.set_rng_state(torch.load(tmp_path / "state.pt", weights_only=True)["rng"])
    again = draws()
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert first[2] == again[2]


def test_torchtune_fsdp_cpu_offload_on_two_gpus(tiny_models, tmp_path):
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs: NCCL takes one rank per GPU")
    from test_training import _spec

    from llama_stack_provider_kfp.training.prepare import prepare
    from llama_stack_provider_kfp.training.steps import train_step
    from llama_stack_provider_kfp.training.torchtune.engine import build_config

    data = write_jsonl(instruct_rows(16), tmp_path / "rows.jsonl")
    spec = _spec(tiny_models / "hf", tmp_path / "out", data)
    train = spec.train.model_copy(update={"device": "cuda", "ranks": 2, "batch_size": 4,
                                          "fsdp_cpu_offload": True})  # fmt: skip
    spec = spec.model_copy(update={"train": train})
    js, work = spec.model_dump_json(), tmp_path
    prepare(spec, str(work / "train.jsonl"), str(work / "val.jsonl"))
    cfg = build_config(spec, spec.model.path, tmp_path, str(work / "train.jsonl"), None,
                       str(tmp_path), world=2)  # fmt: skip
    assert cfg["fsdp_cpu_offload"] is True  # on the CPU it is turned off
    result = train_step(js, spec.model.path, spec.output_uri, str(work / "train.jsonl"),
                        str(work / "val.jsonl"))  # fmt: skip
    assert result["device"].startswith("cuda")
    history = json.loads((Path(spec.output_uri) / "progress.json").read_text())["loss_history"]
    assert len(history) == 2 and all(math.isfinite(loss) for _, loss in history)
    assert (Path(spec.output_uri) / "checkpoints" / "epoch_1" / "adapter").is_dir()


def test_osft_in_bf16_on_cuda(tmp_path):
    """OSFT's SVD on the GPU (fp32), bf16 factors, a few AdamW steps with both projections: the
    step-0 model is the base within bf16 rounding, and the frozen part stays put to that
    precision while the weights move."""
    from transformers import AutoModelForCausalLM

    from harness.tiny_families import make
    from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
    from llama_stack_provider_kfp.core.osft_targets import resolve_osft
    from llama_stack_provider_kfp.training.huggingface import osft

    path = make("qwen2", tmp_path / "qwen2")
    info = inspect_model_dir("qwen2", path)
    targets = resolve_osft([], info.modules, info.is_tied).modules
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda()
    ids = torch.tensor([[5, 17, 42, 99, 120, 7, 3]], device="cuda")
    with torch.no_grad():
        base = model(ids).logits.float()
    before = {n: p.detach().float().clone() for n, p in model.named_parameters()}
    done = osft.apply(model, targets, 0.25)
    assert done.targets[0].subspace.U_high.device.type == "cuda"
    with torch.no_grad():
        assert float((model(ids).logits.float() - base).abs().max()) < 0.1
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    for _ in range(3):
        model(ids, labels=ids).loss.backward()
        done.project_gradients()
        optimizer.step()
        done.project_parameters()
        optimizer.zero_grad()
    for t in done.targets:
        s, w = t.subspace, t.module.weight.detach().float()
        seen = s.U_high.float().T @ w @ s.V_high.float().T
        assert float((seen - torch.diag(s.S_high.float())).abs().max()) < 0.05
        assert float((w - before[f"{t.path}.weight"]).abs().max()) > 0


def test_huggingface_fsdp_bf16_cpu_offload_on_two_gpus(tmp_path):
    """The Hugging Face engine's FSDP2 on NCCL: bf16 parameters, fp32 gradient reductions,
    parameters and optimizer steps offloaded to the CPU; each rank holds half the parameters
    and trains DDP's curve to bf16 rounding."""
    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs: NCCL takes one rank per GPU")
    from test_fsdp import _curve, _spec, _train, _weights

    from harness.tiny_families import make

    model_dir = make("qwen2", tmp_path / "qwen2")
    runs = {}
    for name, offload in (("ddp", False), ("fsdp", True)):
        spec = _spec(model_dir, tmp_path, name, ranks=2)
        train = spec.train.model_copy(update={"device": "cuda", "dtype": "bf16",
                                              "fsdp_cpu_offload": offload})  # fmt: skip
        runs[name] = _train(spec.model_copy(update={"train": train}), model_dir, tmp_path)
    sharded = runs["fsdp"]["sharding"]
    assert sharded["strategy"] == "fsdp" and sharded["cpu_offload"] is True
    whole = runs["ddp"]["sharding"]["parameter_bytes_per_rank"][0]
    assert all(abs(h - whole / 2) <= 0.02 * whole for h in sharded["parameter_bytes_per_rank"])
    assert runs["fsdp"]["device"].startswith("cuda")
    ddp, fsdp = _curve(tmp_path, "ddp"), _curve(tmp_path, "fsdp")
    assert all(math.isfinite(x) for x in fsdp) and fsdp[-1] < fsdp[0]
    assert fsdp == pytest.approx(ddp, rel=2e-2)  # bf16: DDP reduces in bf16, FSDP in fp32
    merged = _weights(tmp_path, "fsdp")
    assert {t.dtype for t in merged.values()} == {torch.bfloat16}


def _chunk_case(tmp_path, family: str, dtype: torch.dtype):
    """A tiny `family` model on CUDA, a batch of three rows, and the budget that makes the
    chunked loss take three positions a chunk."""
    from transformers import AutoModelForCausalLM

    from harness.tiny_families import make
    from llama_stack_provider_kfp.training.huggingface import data, head
    from llama_stack_provider_kfp.training.huggingface.engine import _load_tokenizer

    path = make(family, tmp_path / family)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).cuda().train()
    tokenizer = _load_tokenizer(path)
    rows = [[{"role": "user", "content": f"Greet {n}."},
             {"role": "assistant", "content": f"Hello, {n}! Nice to meet you."}]
            for n in ("Ada", "Alan", "Grace")]  # fmt: skip
    batch = data.collate([data.encode(tokenizer, r, 96, False) for r in rows],
                         tokenizer.pad_token_id)  # fmt: skip
    batch = {k: v.cuda() for k, v in batch.items()}
    return model, batch, 3 * 3 * head.vocab_size(model)


def _loss_and_grads(model, loss):
    params = [p for p in model.parameters() if p.requires_grad]
    return float(loss.detach()), torch.autograd.grad(loss, params)


@pytest.mark.parametrize("family", ["smollm2", "granite"])
def test_chunked_loss_on_cuda_equals_the_whole_logits(tmp_path, family, monkeypatch):
    """The chunked cross-entropy (fused SFT sum, checkpointed DPO chunks) on CUDA in fp32,
    Liger-Kernel kept out (its own test is below)."""
    from llama_stack_provider_kfp.training.huggingface import head, logits

    monkeypatch.setattr(head, "liger_loss", lambda *a: None)
    model, batch, budget = _chunk_case(tmp_path, family, torch.float32)
    want, want_g = _loss_and_grads(model, logits.mean_nll(model, batch, 2**40))
    got, got_g = _loss_and_grads(model, logits.mean_nll(model, batch, budget))
    assert head.find(model, batch, torch.arange(1, device="cuda")) is not None
    assert abs(got - want) <= 1e-5 * abs(want)
    for a, b in zip(want_g, got_g, strict=True):
        assert float((a - b).abs().max()) <= 1e-5 * (float(a.abs().max()) or 1.0)
    whole, _ = logits.sequence_logps(model, batch, 2**40)
    chunked, _ = logits.sequence_logps(model, batch, budget)
    assert float((whole - chunked).abs().max()) <= 1e-5 * float(whole.abs().max())


def test_liger_fused_linear_cross_entropy_equals_the_whole_logits(tmp_path, monkeypatch):
    """With liger-kernel installed, SFT's chunked loss on CUDA is Liger's fused linear
    cross-entropy (Triton): same loss and gradients as the whole logits (fp32)."""
    pytest.importorskip("liger_kernel")
    from llama_stack_provider_kfp.training.huggingface import head, logits

    used = []
    liger = head.liger_loss
    monkeypatch.setattr(head, "liger_loss", lambda *a: used.append(liger(*a)) or used[-1])
    model, batch, budget = _chunk_case(tmp_path, "smollm2", torch.float32)
    want, want_g = _loss_and_grads(model, logits.mean_nll(model, batch, 2**40))
    got, got_g = _loss_and_grads(model, logits.mean_nll(model, batch, budget))
    assert used and used[-1] is not None  # Liger's loss ran
    assert abs(got - want) <= 1e-4 * abs(want)
    for a, b in zip(want_g, got_g, strict=True):
        assert float((a - b).abs().max()) <= 1e-4 * (float(a.abs().max()) or 1.0)


def test_liger_kernels_keep_the_logits_and_train(tmp_path):
    """With liger-kernel installed, its RMSNorm/RoPE/SwiGLU kernels patched into a tiny
    SmolLM2 (Llama) on CUDA give its logits (bf16 rounding) and a LoRA step trains."""
    pytest.importorskip("liger_kernel")
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from harness.tiny_families import make
    from llama_stack_provider_kfp.training.huggingface import kernels

    path = make("smollm2", tmp_path / "smollm2")
    ids = torch.tensor([[5, 17, 42, 99, 120, 7, 3]], device="cuda")
    plain = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda()
    with torch.no_grad():
        want = plain(ids).logits.float()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).cuda()
    assert kernels.apply_liger(model, torch.device("cuda")) is not None
    assert kernels.apply_liger(plain, torch.device("cpu")) is None  # CUDA only
    with torch.no_grad():
        got = model(ids).logits.float()
    assert float((got - want).abs().max()) <= 0.05 * float(want.abs().max())
    model = get_peft_model(
        model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "up_proj"])
    )
    model(ids, labels=ids).loss.backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "lora_A" in n)
