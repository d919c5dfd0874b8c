#!/usr/bin/env python3
"""Data scale: submit latency and the server's memory for URI datasets of growing size.

    python bench/data_scale.py [--sizes 1000,100000,1000000] [--repeats 3]

For each size a synthetic JSONL file is written, registered by URI, and submitted; the submit
call is timed (client side, HTTP round trip included) and the server's resident memory is read
(psutil, current RSS and peak VmHWM) before and after. Each job is cancelled right away: the
point is what submitting costs, not training. Targets: submit well under a second at every
size; server memory flat in dataset size.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import psutil
from common import make_tiny, save, summary

from harness.demo_data import DEMO_LORA
from harness.server import Server
from llama_stack_provider_kfp.client import cancel_job, register_jsonl


def write_rows(path: Path, n: int) -> Path:
    row = {"chat_completion_input": json.dumps([{"role": "user", "content": "Greet Ada."}]),
           "expected_answer": "Hello, Ada! Nice to meet you."}  # fmt: skip
    line = json.dumps(row) + "\n"
    with path.open("w") as fh:
        for _ in range(n):
            fh.write(line)
    return path


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="1000,100000,1000000")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    model = make_tiny(tmp / "tiny")
    (tmp / "srv").mkdir()
    server = Server(tmp / "srv").start()
    client = server.client()
    proc = psutil.Process(server.proc.pid)
    result = {"repeats": args.repeats, "sizes": {}}
    try:
        # One submit first so one-off imports are not charged to the smallest size.
        warm = write_rows(tmp / "warm.jsonl", 10)
        register_jsonl(client, "warm", str(warm))
        for n in [0, *sizes]:
            path = warm if n == 0 else write_rows(tmp / f"rows-{n}.jsonl", n)
            dataset = "warm" if n == 0 else f"rows-{n}"
            if n:
                register_jsonl(client, dataset, str(path))
            latencies = []
            for r in range(1 if n == 0 else args.repeats):
                job = f"scale-{n}-{r}"
                start = time.perf_counter()
                client.alpha.post_training.supervised_fine_tune(
                    job_uuid=job, model=str(model), algorithm_config=DEMO_LORA,
                    training_config={"n_epochs": 1, "max_steps_per_epoch": 1, "dtype": "fp32",
                                     "data_config": {"dataset_id": dataset, "batch_size": 4,
                                                     "shuffle": True, "data_format": "instruct"},
                                     "optimizer_config": {"optimizer_type": "adamw", "lr": 1e-3,
                                                          "weight_decay": 0.0,
                                                          "num_warmup_steps": 0}},
                    hyperparam_search_config={}, logger_config={},
                )  # fmt: skip
                latencies.append(time.perf_counter() - start)
                cancel_job(client, job)
            if n == 0:
                continue
            result["sizes"][str(n)] = {
                "file_mb": round(path.stat().st_size / 2**20, 1),
                "submit_seconds": summary(latencies),
                "server_rss_mb": round(proc.memory_info().rss / 2**20, 1),
                "server_peak_rss_mb": round(peak_rss_mb(proc.pid), 1),
            }
            print(f"{n:>9} rows: submit median {summary(latencies)['median'] * 1000:.0f} ms, "
                  f"server RSS {result['sizes'][str(n)]['server_rss_mb']} MB, peak "
                  f"{result['sizes'][str(n)]['server_peak_rss_mb']} MB")  # fmt: skip
    finally:
        server.stop()
    peaks = [v["server_peak_rss_mb"] for v in result["sizes"].values()]
    worst = max(v["submit_seconds"]["max"] for v in result["sizes"].values())
    result["targets"] = {
        "submit_under_1s_at_every_size": worst < 1.0,
        "server_peak_growth_mb": round(peaks[-1] - peaks[0], 1),
    }
    save("data_scale", result)


if __name__ == "__main__":
    main()
