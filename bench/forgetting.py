#!/usr/bin/env python3
"""Forgetting: does OSFT keep what a model knew better than full fine-tuning and LoRA?

    python bench/forgetting.py [--seeds 3] [--quick]

(the committed figures: --seeds 5, 2 min on 2 cores; --quick: 1 seed, fewer epochs, a smoke
run, not a result)

Per seed, on a tiny random model made on the fly (harness.tiny_families, SmolLM2's Llama
architecture, its published chat template, a byte-level tokenizer trained on a few sentences;
SIZES below), through the train step (`training.steps.train_step`, as the pipeline's step calls
it; no server):

  1. task A is taught by full fine-tuning (OSFT assumes the top singular subspace of each matrix
     holds what the model knows; a random model knows nothing), EPOCHS_A epochs at LR_A;
  2. from that model's merged weights, task B is trained by each method at each learning rate
     of one grid (LRS, the same for every method: none gets rates picked for it), EPOCHS_B
     epochs: full fine-tuning; LoRA rank 8 (alpha 16) on every attention and MLP projection;
     OSFT at unfreeze_rank_ratio 0.25 and 0.5 on the same matrices (the engine's defaults);
  3. every epoch's merged weights are scored on the held-out rows of both tasks, and the last
     epoch's are taken apart: A's loss of the A model given only B's change to the target
     matrices, only B's change to the embeddings (tied to the output projection in this family),
     only B's change to the norms (`forgetting_from`): where the forgetting sits.

The tasks share the alphabet and differ in their rule (deterministic, learnable, generated here):
  A  "Up 5 from Q"   -> "RSTUV"   the letters after the key, wrapping after Z
  B  "Down 5 from Q" -> "PONML"   the letters before it
with lengths 3..7 (105 training rows a task). The held-out rows (25 a task) are those whose key
is one of HELD_OUT: no training row of either task starts from those letters, so a held-out
loss measures the rule, not a memorized row. The rules conflict (A's Q -> R, B's Q -> P):
learning B pulls on what A put in the weights, which is where forgetting can show. (Tasks whose
answer must copy several prompt tokens by position, a letter-wise shift or reversing digits,
did not train at all in a few hundred steps on this model: their loss stayed at the uniform
guess. These two were picked for being learnable, before any OSFT run.)

Loss: mean negative log-likelihood per answer token (the answer and its end-of-turn tokens, as
the engine trains them), over all held-out rows of a task: the engine's validation loss,
computed here with the engine's tokenization (huggingface.data) and loss
(huggingface.logits.mean_nll) on each merged checkpoint, and checked against the validation loss
the B job itself reports on B's held-out rows. Forgetting = A's held-out loss after B minus
before B (the A model's). Per method, the last epochs of its learning-rate grid draw a curve of
forgetting against B's held-out loss; `matched` reads each seed's curve at one common B loss
(the largest of all curves' lowest B losses, so that every curve reaches it) on its Pareto
frontier (the least forgetting the grid's rates reach at that B loss or lower, linear between
frontier points) and reports mean and sd over seeds, and paired by seed minus full
fine-tuning's (`matched_minus_full`): forgetting at comparable B loss.
Writes $BENCH_RESULTS/forgetting.json and forgetting.png (default bench/results/): left, each
method's sweep (B loss, forgetting) in the order of its rates; right, A's loss increase against
B's loss epoch by epoch at each method's reference rate (the least mean forgetting among its
rates whose mean B loss is at the common level or below).

Model size: hidden 64, intermediate 128, 2 layers, 4 heads (2 KV), the tiny_families default.
It learns both rules (A's held-out loss 5.9 -> 0.3-0.7 in 224 steps), OSFT keeps 75% or 50%
of each matrix's singular directions frozen (ratio 0.25, 0.5: 576 or 384 of 768 in all), and a
job takes a second or two, so five seeds fit. A pilot at hidden 128 / intermediate 256 (1 seed,
shorter) gave the same picture.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import shutil
import statistics
import string
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from common import RESULTS, save
from matplotlib.ticker import NullFormatter

import harness.tiny_families as tiny
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
from llama_stack_provider_kfp.core.lora_targets import resolve
from llama_stack_provider_kfp.core.osft_targets import resolve_osft
from llama_stack_provider_kfp.core.rows import to_messages
from llama_stack_provider_kfp.core.spec import (
    DataSpec,
    EngineChoice,
    JobSpec,
    LoraSpec,
    OptimSpec,
    OSFTSpec,
    TrainSpec,
)
from llama_stack_provider_kfp.training.prepare import prepare
from llama_stack_provider_kfp.training.steps import train_step

FAMILY = "smollm2"
SIZES = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2}  # fmt: skip
LETTERS = string.ascii_uppercase
HELD_OUT = "DINSX"
LENGTHS = range(3, 8)
BATCH, SEQ_LEN, WARMUP = 8, 48, 5
EPOCHS_A, LR_A = 16, 3e-3
EPOCHS_B = 6
# One grid for every method (no method gets rates picked for it); the low end leaves B barely
# learned, the high end is past what full fine-tuning trains stably.
LRS = [1e-3, 3e-3, 1e-2, 3e-2]
# method -> (algorithm, unfreeze_rank_ratio, learning rates); "osft-frozen": OSFT with
# freeze_non_targets (embeddings, norms, biases frozen too).
METHODS = {
    "full": ("full", None, LRS),
    "lora r8": ("lora", None, LRS),
    "osft 0.25": ("osft", 0.25, LRS),
    "osft 0.5": ("osft", 0.5, LRS),
    "osft 0.25 frozen": ("osft-frozen", 0.25, LRS),
}
XTICKS = [0.3, 0.4, 0.5, 0.7, 1, 1.5, 2, 3, 4]
QUICK = {"seeds": 1, "epochs_a": 12, "epochs_b": 3}


def task_rows(task: str, held_out: bool) -> list[dict]:
    """Every row of task A ("up") or B ("down") whose key is (or is not) in HELD_OUT."""
    step, word = (1, "Up") if task == "A" else (-1, "Down")
    rows = []
    for key in LETTERS:
        if (key in HELD_OUT) != held_out:
            continue
        for n in LENGTHS:
            start = LETTERS.index(key)
            answer = "".join(LETTERS[(start + step * k) % 26] for k in range(1, n + 1))
            prompt = [{"role": "system", "content": "toy"},
                      {"role": "user", "content": f"{word} {n} from {key}"}]  # fmt: skip
            rows.append({"chat_completion_input": json.dumps(prompt), "expected_answer": answer})
    return rows


def make_model(dest: Path, seed: int) -> Path:
    family = copy.deepcopy(tiny.FAMILIES[FAMILY])
    family["keys"].update(SIZES)
    tiny.FAMILIES[f"{FAMILY}-bench"] = family
    try:
        return tiny.make(f"{FAMILY}-bench", dest, seed=seed)
    finally:
        del tiny.FAMILIES[f"{FAMILY}-bench"]


def job(model_dir: Path, work: Path, task: str, algo: str, ratio: float | None, lr: float,
        epochs: int, seed: int) -> tuple[dict, Path]:  # fmt: skip
    """Train `task` from `model_dir`; returns the train step's result and its output folder."""
    model = inspect_model_dir(model_dir.name, model_dir)
    targets = resolve_osft([], model.modules, model.is_tied).modules  # attention + MLP
    lora = osft = None
    if algo == "lora":
        peft = resolve(["q_proj", "k_proj", "v_proj", "o_proj"], True, False, model.modules,
                       model.is_tied).peft  # fmt: skip
        assert sorted(peft) == sorted(targets), (peft, targets)  # the matrices OSFT adapts
        lora = LoraSpec(rank=8, alpha=16, attn_modules=[], apply_to_mlp=True,
                        apply_to_output=False, target_modules=peft)  # fmt: skip
    elif algo.startswith("osft"):
        assert ratio is not None
        osft = OSFTSpec(unfreeze_rank_ratio=ratio, target_modules=targets,
                        freeze_non_targets=algo == "osft-frozen")  # fmt: skip
    work.mkdir(parents=True)
    train = write_jsonl(task_rows(task, held_out=False), work / "rows.jsonl")
    held = write_jsonl(task_rows(task, held_out=True), work / "held_out.jsonl")
    spec = JobSpec(
        job_uuid=work.name, engine=EngineChoice(name="huggingface", reason="bench"), model=model,
        data=DataSpec(uri=str(train), validation_uri=str(held), data_format="instruct"),
        train=TrainSpec(epochs=epochs, max_steps_per_epoch=None, gradient_accumulation_steps=1,
                        batch_size=BATCH, shuffle=True, train_on_input=False, dtype="fp32",
                        max_validation_steps=None, max_seq_len=SEQ_LEN, seed=seed, device="cpu"),
        lora=lora, osft=osft,
        optim=OptimSpec(type="adamw", lr=lr, weight_decay=0.0, warmup_steps=WARMUP),
        output_format="huggingface", output_uri=str(work / "out"),
    )  # fmt: skip
    t, v = str(work / "t.jsonl"), str(work / "v.jsonl")
    prepare(spec, t, v)
    result = train_step(spec.model_dump_json(), str(model_dir), str(work / "out"), t, v)
    return result, work / "out" / "checkpoints"


class Scorer:
    """Held-out loss of a merged checkpoint on a task: the engine's tokenization and loss."""

    def __init__(self, tokenizer_dir: Path) -> None:
        from llama_stack_provider_kfp.training.huggingface import data
        from llama_stack_provider_kfp.training.huggingface.engine import _load_tokenizer

        tok = _load_tokenizer(tokenizer_dir)
        self.batches = {}
        for task in ("A", "B"):
            samples = [data.encode(tok, to_messages(r, "instruct"), SEQ_LEN, False)
                       for r in task_rows(task, held_out=True)]  # fmt: skip
            self.batches[task] = data.collate(samples, tok.pad_token_id)

    @torch.no_grad()
    def __call__(self, model_dir: Path) -> dict[str, float]:
        from transformers import AutoModelForCausalLM

        from llama_stack_provider_kfp.training.huggingface.logits import mean_nll

        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
        return {task: float(mean_nll(model, b)) for task, b in self.batches.items()}

    @torch.no_grad()
    def split(self, a_dir: Path, b_dir: Path, targets: list[str]) -> dict[str, float]:
        """Task A's loss of the A model given one part of what B training changed, each part
        alone: the target matrices (the attention and MLP projections LoRA and OSFT adapt),
        the embeddings (tied to the output projection in this family), the norms."""
        from transformers import AutoModelForCausalLM

        from llama_stack_provider_kfp.training.huggingface.logits import mean_nll

        model = AutoModelForCausalLM.from_pretrained(a_dir, dtype=torch.float32).eval()
        a = {k: v.clone() for k, v in model.state_dict().items()}
        b = AutoModelForCausalLM.from_pretrained(b_dir, dtype=torch.float32).state_dict()

        def part(key: str) -> str:
            if any(key.endswith(f".{t}.weight") for t in targets):
                return "matrices"
            return "embeddings" if "embed_tokens" in key or "lm_head" in key else "norms"

        assert {part(k) for k in a} == {"matrices", "embeddings", "norms"}, sorted(a)
        out = {}
        for name in ("matrices", "embeddings", "norms"):
            model.load_state_dict({k: b[k] if part(k) == name else a[k] for k in a})
            out[name] = float(mean_nll(model, self.batches["A"]))
        return out


def run_seed(seed: int, root: Path, epochs_a: int, epochs_b: int, methods: dict) -> dict:
    base = make_model(root / "base", seed)
    score = Scorer(base)
    start = time.perf_counter()
    res_a, ckpt_a = job(base, root / "A", "A", "full", None, LR_A, epochs_a, seed)
    a_model = ckpt_a / f"epoch_{epochs_a}" / "merged"
    out = {"seed": seed, "random_model": score(base), "after_A": score(a_model),
           "A_job": {"seconds": round(time.perf_counter() - start, 1),
                     "validation_loss": [round(e["validation_loss"], 4)
                                         for e in res_a["epochs"]]},
           "runs": {}}  # fmt: skip
    before = out["after_A"]
    info = inspect_model_dir("a", a_model)
    targets = resolve_osft([], info.modules, info.is_tied).modules
    print(
        f"seed {seed}: random model A {out['random_model']['A']:.3f} B "
        f"{out['random_model']['B']:.3f}; after A: A {before['A']:.3f} B {before['B']:.3f}"
    )
    for name, (algo, ratio, lrs) in methods.items():
        for lr in lrs:
            start = time.perf_counter()
            work = root / f"B-{algo}-{ratio}-{lr:g}"
            res, ckpt = job(a_model, work, "B", algo, ratio, lr, epochs_b, seed)
            curve = [score(ckpt / f"epoch_{e}" / "merged") for e in range(1, epochs_b + 1)]
            last = ckpt / f"epoch_{epochs_b}" / "merged"
            parts = {k: v - before["A"] for k, v in score.split(a_model, last, targets).items()}
            engine_b = res["epochs"][-1]["validation_loss"]
            assert abs(engine_b - curve[-1]["B"]) < 1e-3, (engine_b, curve[-1])
            run = {"lr": lr, "epochs": [{"A": round(c["A"], 4), "B": round(c["B"], 4)}
                                        for c in curve],
                   "A_after": curve[-1]["A"], "B_after": curve[-1]["B"],
                   "forgetting": curve[-1]["A"] - before["A"],
                   "forgetting_from": parts, "engine_B_validation_loss": engine_b,
                   "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
            if algo.startswith("osft"):
                run["trainable_parameters"] = res["osft"]["trainable_parameters"]
                run["frozen_directions"] = res["osft"]["frozen_directions"]
                run["directions"] = res["osft"]["directions"]
            out["runs"].setdefault(name, []).append(run)
            shutil.rmtree(work)
            print(
                f"  {name:9s} lr {lr:g}: B {run['B_after']:.3f}, A {before['A']:.3f} -> "
                f"{run['A_after']:.3f} (forgetting {run['forgetting']:+.3f}), "
                f"{run['seconds']:.0f} s"
            )
    return out


def _ms(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4),
            "sd": round(statistics.stdev(values), 4) if len(values) > 1 else 0.0,
            "n": len(values)}  # fmt: skip


def _frontier_at(points: list[tuple[float, float]], level: float) -> float | None:
    """The least forgetting a method's grid reaches at B loss `level`: on the Pareto frontier
    of its (B loss, forgetting) points (the runs no other run beats on both), linear between
    neighbours; None when no run gets B's loss down to `level`. A rate past what trains
    stably (B loss back up) falls off the frontier instead of bending the curve."""
    front: list[tuple[float, float]] = []
    for b, f in sorted(points):
        if not front or f < front[-1][1]:
            front.append((b, f))
    if level < front[0][0]:
        return None
    for (b0, f0), (b1, f1) in itertools.pairwise(front):
        if b0 <= level <= b1:
            return f0 + (f1 - f0) * (level - b0) / (b1 - b0)
    return front[-1][1]


def aggregate(seeds: list[dict], methods: dict) -> dict:
    a_before = [s["after_A"]["A"] for s in seeds]
    out: dict = {"A_before": _ms(a_before), "B_before": _ms([s["after_A"]["B"] for s in seeds]),
                 "random_model": {t: _ms([s["random_model"][t] for s in seeds]) for t in "AB"},
                 "methods": {}}  # fmt: skip
    for name, (_, ratio, lrs) in methods.items():
        per_lr = []
        for i, lr in enumerate(lrs):
            runs = [s["runs"][name][i] for s in seeds]
            per_lr.append({"lr": lr, "A_after": _ms([r["A_after"] for r in runs]),
                           "forgetting": _ms([r["forgetting"] for r in runs]),
                           "B_after": _ms([r["B_after"] for r in runs]),
                           "forgetting_from": {k: _ms([r["forgetting_from"][k] for r in runs])
                                               for k in runs[0]["forgetting_from"]}})  # fmt: skip
        out["methods"][name] = {"unfreeze_rank_ratio": ratio, "per_lr": per_lr}
    # One B loss every seed's grid of every method reaches: the largest of their lowest.
    level = max(min(r["B_after"] for r in s["runs"][name]) for s in seeds for name in methods)
    out["matched_B_loss"] = round(level, 4)
    for name, m in out["methods"].items():
        values = [_frontier_at([(r["B_after"], r["forgetting"]) for r in s["runs"][name]], level)
                  for s in seeds]  # fmt: skip
        assert None not in values  # every grid reaches the level, by its choice
        reached = [v for v in values if v is not None]
        m["matched"] = {**_ms(reached), "per_seed": [round(v, 4) for v in reached]}
        # For the short table: the rate with the least mean forgetting among those whose mean
        # B loss is at the level or below (else the one with the lowest mean B loss).
        if name != "full":  # paired by seed: the same A model, data order and level
            full = out["methods"]["full"]["matched"]["per_seed"]
            diff = [round(v - f, 4) for v, f in zip(m["matched"]["per_seed"], full, strict=True)]
            m["matched_minus_full"] = {**_ms(diff), "per_seed": diff}
        reach = [p for p in m["per_lr"] if p["B_after"]["mean"] <= level]
        m["reference"] = (min(reach, key=lambda p: p["forgetting"]["mean"]) if reach
                          else min(m["per_lr"], key=lambda p: p["B_after"]["mean"]))  # fmt: skip
    # The same comparison at the lowest B loss the methods that train every parameter of their
    # kind reach (a constrained variant that learns B less well raises the level above).
    free = [n for n in methods if "frozen" not in n]
    low = max(min(r["B_after"] for r in s["runs"][n]) for s in seeds for n in free)
    out["at_lowest_common_B_loss"] = {"B_loss": round(low, 4), "methods": {}}
    for name in methods:
        values = [_frontier_at([(r["B_after"], r["forgetting"]) for r in s["runs"][name]], low)
                  for s in seeds]  # fmt: skip
        if None in values:  # this method's grid does not get B that low
            out["at_lowest_common_B_loss"]["methods"][name] = None
            continue
        full = [_frontier_at([(r["B_after"], r["forgetting"]) for r in s["runs"]["full"]], low)
                for s in seeds]  # fmt: skip
        diff = [v - f for v, f in zip(values, full, strict=True)]  # type: ignore[operator]
        out["at_lowest_common_B_loss"]["methods"][name] = {
            "forgetting": _ms(values),
            "minus_full": _ms(diff),
        }  # type: ignore[arg-type]
    return out


def plot(seeds: list[dict], agg: dict, path: Path) -> None:
    fig, (ax, tr) = plt.subplots(1, 2, figsize=(11, 4.4), dpi=110)
    colors = [c["color"] for c in plt.rcParams["axes.prop_cycle"]]
    for (name, m), color in zip(agg["methods"].items(), colors, strict=False):
        for s in seeds:  # each seed's own sweep, faint, in the order of the rates
            pts = [(r["B_after"], r["forgetting"]) for r in s["runs"][name]]
            ax.plot(*zip(*pts, strict=True), color=color, alpha=0.2, lw=0.8)
        per = m["per_lr"]
        ax.errorbar([p["B_after"]["mean"] for p in per], [p["forgetting"]["mean"] for p in per],
                    xerr=[p["B_after"]["sd"] for p in per],
                    yerr=[p["forgetting"]["sd"] for p in per], color=color, marker="o", ms=4,
                    capsize=2, label=name)  # fmt: skip
        for p in per:
            ax.annotate(
                f"{p['lr']:g}",
                (p["B_after"]["mean"], p["forgetting"]["mean"]),
                fontsize=6,
                xytext=(3, 3),
                textcoords="offset points",
                color=color,
            )
        # Right: the epochs of the reference rate's runs (see aggregate), seed mean.
        i = m["per_lr"].index(m["reference"])
        curves = [s["runs"][name][i]["epochs"] for s in seeds]
        xs = [statistics.fmean(c[e]["B"] for c in curves) for e in range(len(curves[0]))]
        ys = [statistics.fmean(c[e]["A"] for c in curves) - agg["A_before"]["mean"]
              for e in range(len(curves[0]))]  # fmt: skip
        b0 = agg["B_before"]["mean"]
        tr.plot(
            [b0, *xs],
            [0.0, *ys],
            color=color,
            marker=".",
            label=f"{name}, lr {m['reference']['lr']:g}",
        )
    for a in (ax, tr):
        a.axvline(agg["matched_B_loss"], color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xticks(XTICKS, [f"{x:g}" for x in XTICKS])
    ax.set(xlabel="task B held-out loss after B (lower: learned more; log scale)",
           ylabel="task A held-out loss increase (forgetting)",
           title=f"After {len(seeds)} seed(s) x lr sweep (labels: lr)")  # fmt: skip
    tr.set(xlabel="task B held-out loss", ylabel="task A held-out loss increase",
           title="During B training, per epoch (seed mean)")  # fmt: skip
    tr.invert_xaxis()
    ax.legend(fontsize=8)
    tr.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)


def _pm(s: dict | None, sign: str = "") -> str:
    return "-" if s is None else f"{s['mean']:{sign}.3f} ± {s['sd']:.3f}"


def print_table(agg: dict) -> None:
    before = agg["A_before"]["mean"]
    print(
        f"\nA held-out loss after A: {_pm(agg['A_before'])} (random model "
        f"{agg['random_model']['A']['mean']:.3f}); B held-out loss then: "
        f"{_pm(agg['B_before'])}; matched B loss {agg['matched_B_loss']}"
    )
    print(
        "\nevery run (mean ± sd over seeds)\n\n| method | lr | A loss before -> after | "
        "forgetting | B loss |\n|---|---|---|---|---|"
    )
    for name, m in agg["methods"].items():
        for p in m["per_lr"]:
            print(
                f"| {name} | {p['lr']:g} | {before:.3f} -> {p['A_after']['mean']:.3f} | "
                f"{_pm(p['forgetting'], '+')} | {_pm(p['B_after'])} |"
            )
    level = agg["matched_B_loss"]
    print(
        f"\nat comparable B loss\n\n| method | forgetting at B loss {level} (frontier) | "
        "minus full's, paired by seed | reference lr: A loss before -> after, forgetting, "
        "B loss | its forgetting from B's change to the matrices / embeddings / norms alone |"
        "\n|---|---|---|---|---|"
    )
    for name, m in agg["methods"].items():
        c, parts = m["reference"], m["reference"]["forgetting_from"]
        print(
            f"| {name} | {_pm(m['matched'], '+')} | {_pm(m.get('matched_minus_full'), '+')} | "
            f"{c['lr']:g}: {before:.3f} -> {c['A_after']['mean']:.3f}, "
            f"{_pm(c['forgetting'], '+')}, {_pm(c['B_after'])} | "
            + " / ".join(f"{parts[p]['mean']:+.3f}" for p in ("matrices", "embeddings", "norms"))
            + " |"
        )
    low = agg["at_lowest_common_B_loss"]
    print(f"\nat the lowest B loss the unconstrained methods reach ({low['B_loss']})\n")
    print("| method | forgetting | minus full's, paired by seed |\n|---|---|---|")
    for name, m in low["methods"].items():
        if m is None:
            print(f"| {name} | does not reach it | |")
        else:
            print(f"| {name} | {_pm(m['forgetting'], '+')} | {_pm(m['minus_full'], '+')} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument(
        "--quick", action="store_true", help="1 seed, fewer epochs (a smoke run, not a result)"
    )
    args = ap.parse_args()
    # One thread: the model is tiny (per-op overhead, not arithmetic) and on a 2-core machine
    # shared with other work two threads waiting on each other made steps 10x slower.
    torch.set_num_threads(1)
    seeds = QUICK["seeds"] if args.quick else args.seeds
    epochs_a = QUICK["epochs_a"] if args.quick else EPOCHS_A
    epochs_b = QUICK["epochs_b"] if args.quick else EPOCHS_B
    tmp = Path(tempfile.mkdtemp(prefix="bench-forgetting-"))
    started, load = time.perf_counter(), [os.getloadavg()[0]]
    results = []
    for seed in range(seeds):
        results.append(run_seed(seed, tmp / f"seed{seed}", epochs_a, epochs_b, METHODS))
        load.append(os.getloadavg()[0])
    shutil.rmtree(tmp, ignore_errors=True)
    agg = aggregate(results, METHODS)
    RESULTS.mkdir(parents=True, exist_ok=True)
    plot(results, agg, RESULTS / "forgetting.png")
    save("forgetting", {
        "what": "task A held-out loss before and after training task B, per method and lr; "
                "mean NLL per answer token",
        "model": {"family": FAMILY, **SIZES}, "batch_size": BATCH, "max_seq_len": SEQ_LEN,
        "tasks": {"A": "Up <n> from <key> -> the n letters after key",
                  "B": "Down <n> from <key> -> the n letters before key",
                  "held_out_keys": HELD_OUT, "lengths": list(LENGTHS),
                  "train_rows": len(task_rows("A", False)),
                  "held_out_rows": len(task_rows("A", True))},
        "A_job": {"epochs": epochs_a, "lr": LR_A, "method": "full"},
        "B_jobs": {"epochs": epochs_b, "warmup_steps": WARMUP, "optimizer": "adamw, cosine",
                   "methods": {n: {"algorithm": a, "unfreeze_rank_ratio": r, "lrs": lrs}
                               for n, (a, r, lrs) in METHODS.items()}},
        "seeds": seeds, "quick": args.quick,
        "seconds": round(time.perf_counter() - started, 1),
        "load_average_1min": load,
        **agg,
        "per_seed": results,
    })  # fmt: skip
    print_table(agg)
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
