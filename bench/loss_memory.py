"""Peak memory and time of one training step's loss over a 128k vocabulary: the whole-logits
cross-entropy the Hugging Face engine used before, against the chunked one
(training/huggingface/head.py), for SFT (mean NLL) and DPO (the policy's sequence
log-probabilities), side by side in one run.

A Llama-3.2-shaped model, random weights, made in memory: vocabulary 128256, 2 layers, width
64 (so the logits, not the body, decide the memory), fp32 on the CPU; 2 rows of 1024 tokens,
the first 64 of each a prompt. Each variant runs in a fresh process: forward + backward,
--steps times; reported per variant: the process's peak RSS above its RSS before the first
step (ru_maxrss), the median step time, and the loss (equal across variants). The time ratio
comes from one more process per loss that alternates whole and chunked steps (--pairs), so
that other load on the machine hits both alike.

    python bench/loss_memory.py [--steps 3] [--pairs 7] [--rows 2] [--tokens 1024]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import save

VOCAB = 128256
CHILD = """
import json, resource, statistics, sys, time
import psutil, torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM
from llama_stack_provider_kfp.training.huggingface import logits
from llama_stack_provider_kfp.training.huggingface.data import IGNORE

variant, loss_kind, rows, tokens, steps, vocab = sys.argv[1:3] + [int(a) for a in sys.argv[3:]]
torch.manual_seed(0)
config = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128,
                     num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                     tie_word_embeddings=True)
model = LlamaForCausalLM(config).float().train()
ids = torch.randint(0, vocab, (rows, tokens))
labels = ids.clone()
labels[:, :64] = IGNORE
batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def whole_sft():  # the engine's loss before chunking (logits.py at baea19c)
    out, targets = logits.labelled(model, batch)
    total = F.cross_entropy(out.flatten(0, 1), targets.flatten(), ignore_index=IGNORE,
                            reduction="sum")
    return total / (targets != IGNORE).sum().clamp(min=1)


def whole_dpo():
    out, targets = logits.labelled(model, batch)
    mask = targets != IGNORE
    picked = torch.gather(F.log_softmax(out, dim=-1), 2,
                          targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return -(picked * mask).sum(-1).sum()


loss_fn = {("whole", "sft"): whole_sft, ("whole", "dpo"): whole_dpo,
           ("chunked", "sft"): lambda: logits.mean_nll(model, batch),
           ("chunked", "dpo"): lambda: -logits.sequence_logps(model, batch)[0].sum()}
if variant == "paired":  # time only: whole and chunked steps alternate in one process
    ratios = []
    for i in range(steps):
        took = {}
        for v in (("whole", "chunked") if i % 2 else ("chunked", "whole")):
            tick = time.perf_counter()
            loss_fn[(v, loss_kind)]().backward()
            model.zero_grad(set_to_none=True)
            took[v] = time.perf_counter() - tick
        ratios.append(took["chunked"] / took["whole"])
    print(json.dumps({"chunked_over_whole_step_time": [round(r, 3) for r in ratios],
                      "median": round(statistics.median(ratios[1:] or ratios), 3)}))
    sys.exit(0)
fn = loss_fn[(variant, loss_kind)]
before = psutil.Process().memory_info().rss
times, value = [], None
for _ in range(steps):
    tick = time.perf_counter()
    loss = fn()
    loss.backward()
    model.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - tick)
    value = float(loss.detach())
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak_above_start_mb": round((peak - before) / 2**20, 1),
                  "rss_before_mb": round(before / 2**20, 1),
                  "step_seconds": round(statistics.median(times), 3), "loss": value,
                  "logits_fp32_mb": round(rows * (tokens - 64) * vocab * 4 / 2**20, 1)}))
"""


def run(variant: str, loss: str, args: argparse.Namespace, steps: int = 0) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, variant, loss, str(args.rows), str(args.tokens),
         str(steps or args.steps), str(VOCAB)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=1024)
    parser.add_argument("--pairs", type=int, default=7, help="alternating steps timed")
    args = parser.parse_args()
    results: dict[str, dict] = {}
    for loss in ("sft", "dpo"):
        for variant in ("whole", "chunked"):
            results[f"{loss}/{variant}"] = got = run(variant, loss, args)
            print(f"{loss:4} {variant:8} {json.dumps(got)}", flush=True)
    for loss in ("sft", "dpo"):  # step 1 (the chunked path's one-off check) left out
        results[f"{loss}/paired_time"] = got = run("paired", loss, args, args.pairs)
        print(f"{loss:4} paired   {json.dumps(got)}", flush=True)
    drops = {
        loss: round(1 - results[f"{loss}/chunked"]["peak_above_start_mb"]
                    / results[f"{loss}/whole"]["peak_above_start_mb"], 3)
        for loss in ("sft", "dpo")
    }  # fmt: skip
    print(f"peak memory above the start, chunked vs whole: {drops}")
    slower = {loss: results[f"{loss}/paired_time"]["median"] for loss in ("sft", "dpo")}
    print(f"step time, chunked / whole (median of alternating steps): {slower}")
    save("loss_memory", {
        "model": {"layers": 2, "dim": 64, "heads": 4, "kv_heads": 2, "vocab": VOCAB,
                  "tied": True},
        "batch_size": args.rows, "max_seq_len": args.tokens, "dtype": "fp32",
        "prompt_tokens_per_row": 64, "steps": args.steps,
        "variants": results, "peak_drop": drops, "step_time_ratio": slower,
    })  # fmt: skip


if __name__ == "__main__":
    main()
