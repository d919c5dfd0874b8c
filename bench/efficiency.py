#!/usr/bin/env python3
"""Training efficiency: tokens/s of our train step vs torchtune's own LoRA recipe, unmodified.

    python bench/efficiency.py [--repeats 3] [--rows 96]

Both run the same tiny model, data, batch and steps (one epoch; the row count is a multiple
of the batch so torchtune's dropped last batch changes nothing), alternating, each in a fresh
process. The figure compared is torchtune's own per-step metric, label tokens per second
(`tokens_per_second_per_gpu`), median over steps 2..N (step 1 carries warm-up). Target: ratio
(ours / torchtune) >= 0.95.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from common import job_spec, make_tiny, paired_verdict, save, summary

from harness.demo_data import instruct_rows
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl

RUN = r"""
import json, re, sys, tempfile, time
from pathlib import Path
from omegaconf import OmegaConf
from llama_stack_provider_kfp.core.spec import JobSpec
from llama_stack_provider_kfp.training.prepare import prepare
from llama_stack_provider_kfp.training.steps import train_step
from llama_stack_provider_kfp.training.torchtune.engine import build_config
mode, spec_json, work = sys.argv[1], sys.argv[2], Path(sys.argv[3])
spec = JobSpec.model_validate_json(spec_json)
train, val = str(work / "train.jsonl"), str(work / "val.jsonl")
prepare(spec, train, val)
if mode == "ours":
    result = train_step(spec_json, spec.model.path, spec.output_uri, train, val)
    tps = result["trained_tokens_per_second"]
else:
    from llama_stack_provider_kfp.training.torchtune.recipe import LoRAFinetuneRecipeSingleDevice
    scratch = tempfile.mkdtemp()
    cfg = build_config(spec, spec.model.path, work, train, None, scratch)
    cfg["metric_logger"] = {"_component_": "torchtune.training.metric_logging.DiskLogger",
                            "log_dir": str(work), "filename": "bare.txt"}
    cfg = OmegaConf.create(cfg)
    recipe = LoRAFinetuneRecipeSingleDevice(cfg)
    recipe.setup(cfg)
    recipe.train()
    series = [float(m) for m in re.findall(r"tokens_per_second_per_gpu:([0-9.]+)",
                                           (work / "bare.txt").read_text())]
    window = sorted(series[1:])
    tps = window[len(window) // 2]
print(json.dumps(tps))
"""


TARGET = 0.95


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--rows", type=int, default=96)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-eff-"))
    model = make_tiny(tmp / "tiny")
    data = write_jsonl(instruct_rows(args.rows), tmp / "rows.jsonl")
    medians: dict[str, list[float]] = {"ours": [], "torchtune": []}
    paired: list[float] = []  # ours / torchtune within one repeat: the two ran back to back
    for r in range(args.repeats):
        for mode in ("torchtune", "ours") if r % 2 else ("ours", "torchtune"):
            work = tmp / f"{mode}-{r}"
            work.mkdir()
            spec = job_spec(model, data, work / "out", epochs=1)
            out = subprocess.run(
                [sys.executable, "-c", RUN, "ours" if mode == "ours" else "bare",
                 spec.model_dump_json(), str(work)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            medians[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"{mode:10s} run {r}: median {medians[mode][-1]:.0f} label tok/s")
        paired.append(medians["ours"][-1] / medians["torchtune"][-1])
    verdict = paired_verdict(paired, TARGET)
    save(
        "efficiency",
        {
            "what": "label tokens/s per step (torchtune's metric), median of steps 2..N",
            "rows": args.rows,
            "steps": args.rows // 4,
            "repeats": args.repeats,
            "ours_tokens_per_second": summary(medians["ours"]),
            "torchtune_tokens_per_second": summary(medians["torchtune"]),
            "paired_ratios": [round(p, 3) for p in paired],
            "ratio_ours_over_torchtune": summary(paired),
            "target": f">= {TARGET}",
            "verdict": verdict,
        },
    )
    print(f"paired ratios ours/torchtune: {[round(p, 3) for p in paired]}; {verdict}")


if __name__ == "__main__":
    main()
