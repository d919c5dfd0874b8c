#!/usr/bin/env python3
"""Orchestration overhead: the same LoRA fine-tune through the server + KFP, or called directly.

    python bench/overhead.py [--repeats 3] [--quick]

(a) through a real `llama stack run` with this provider in local mode: wall time from the
    submit call to the status call that first says `completed` (polled every 0.1 s);
(b) the same training code (prepare-data + train) called in a Python process that has
    already imported torch/torchtune, with no server and no KFP ("warm");
(c) the same in a fresh interpreter, imports included ("cold") -- what a script costs.
Same tiny model, data, steps and seed. Reported per job size: medians, the ratio (a)/(b), and
the fixed cost (a) - (b). Runs alternate to spread the machine's noise over all variants.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import job_spec, make_tiny, save, summary

from harness.demo_data import DEMO_LORA, instruct_rows
from harness.server import Server
from llama_stack_provider_kfp.client import job_status, register_jsonl
from llama_stack_provider_kfp.core.data_uri import write_jsonl

DIRECT = r"""
import sys, time
from pathlib import Path
t0 = time.perf_counter()
from llama_stack_provider_kfp.core.spec import JobSpec
from llama_stack_provider_kfp.training.prepare import prepare
from llama_stack_provider_kfp.training.steps import train_step
import llama_stack_provider_kfp.training.torchtune.recipe  # torch + torchtune
t1 = time.perf_counter()
for i, spec_json in enumerate(sys.argv[1:]):
    spec = JobSpec.model_validate_json(spec_json)
    work = Path(spec.output_uri).parent
    s = time.perf_counter()
    prepare(spec, str(work / "t.jsonl"), str(work / "v.jsonl"))
    train_step(spec_json, spec.model.path, spec.output_uri, str(work / "t.jsonl"),
                 str(work / "v.jsonl"))
    print("RUN", time.perf_counter() - s, t1 - t0 if i == 0 else 0.0)
"""

SIZES = {"short": (16, 1), "long": (64, 3)}  # rows, epochs (batch 4: 4 and 48 steps)


def server_run(client, model: Path, dataset: str, job: str, epochs: int) -> float:
    start = time.perf_counter()
    client.alpha.post_training.supervised_fine_tune(
        job_uuid=job, model=str(model), algorithm_config=DEMO_LORA,
        training_config={"n_epochs": epochs, "max_steps_per_epoch": 1000, "dtype": "fp32",
                         "data_config": {"dataset_id": dataset, "batch_size": 4, "shuffle": True,
                                         "data_format": "instruct"},
                         "optimizer_config": {"optimizer_type": "adamw", "lr": 2e-2,
                                              "weight_decay": 0.0, "num_warmup_steps": 2}},
        hyperparam_search_config={}, logger_config={},
    )  # fmt: skip
    while (status := job_status(client, job)["status"]) not in ("completed", "failed"):
        time.sleep(0.1)
    assert status == "completed", job_status(client, job)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2 repeats")
    args = ap.parse_args()
    repeats = 2 if args.quick else args.repeats
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    model = make_tiny(tmp / "tiny")
    (tmp / "srv").mkdir()
    server = Server(tmp / "srv").start()
    client = server.client()
    times: dict[str, dict[str, list[float]]] = {
        s: {"server": [], "direct_warm": [], "direct_cold": []} for s in SIZES
    }
    try:
        for name, (rows, epochs) in SIZES.items():
            data = write_jsonl(instruct_rows(rows), tmp / f"{name}.jsonl")
            register_jsonl(client, name, str(data))
            for r in range(repeats):
                t = server_run(client, model, name, f"{name}-{r}", epochs)
                times[name]["server"].append(t)
                # Warm: two runs in one process; the second has everything imported.
                specs = []
                for k in range(2):
                    work = tmp / f"direct-{name}-{r}-{k}"
                    work.mkdir()
                    specs.append(job_spec(model, data, work / "out", epochs).model_dump_json())
                start = time.perf_counter()
                out = subprocess.run([sys.executable, "-c", DIRECT, *specs], check=True,
                                     capture_output=True, text=True)  # fmt: skip
                wall = time.perf_counter() - start
                runs = [ln.split()[1:] for ln in out.stdout.splitlines() if ln.startswith("RUN")]
                second = float(runs[1][0])
                times[name]["direct_warm"].append(second)
                # Cold: interpreter start + imports + the first run.
                times[name]["direct_cold"].append(wall - second)
                print(f"{name} #{r}: server {t:.2f}s, direct warm {second:.2f}s, "
                      f"cold {wall - second:.2f}s")  # fmt: skip
    finally:
        server.stop()
    result = {"repeats": repeats, "sizes": {}}
    for name, (rows, epochs) in SIZES.items():
        s = {k: summary(v) for k, v in times[name].items()}
        warm, srv = s["direct_warm"]["median"], s["server"]["median"]
        result["sizes"][name] = {
            "rows": rows, "epochs": epochs, "steps": rows // 4 * epochs, **s,
            "ratio_server_over_direct_warm": round(srv / warm, 3),
            "fixed_cost_seconds": round(srv - warm, 3),
            "ratio_server_over_direct_cold": round(srv / s["direct_cold"]["median"], 3),
        }  # fmt: skip
    save("overhead", result)


if __name__ == "__main__":
    main()
