#!/usr/bin/env python3
"""Job-tracking figures: status-call latency while 2 jobs train, and cancel-to-last-process.

    python bench/tracking.py [--calls 400] [--out DIR]

Starts a real `llama stack run` (max_concurrent_jobs=2) on loopback, submits two LoRA jobs on
a tiny model, and once both train:
  - times `--calls` status calls (alternating jobs, back to back, bounded), reports p50/p99;
  - cancels each job and times (a) the cancel call and (b) from sending it until no process
    of the job (worker + kfp.local tasks, found by pid beforehand) is left.
Writes <out>/tracking.json (default: $BENCH_RESULTS, else bench/results/, as every benchmark
here: `bash bench/run.sh --quick` sets it to bench/results/quick/) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from common import RESULTS

from harness.demo_data import DEMO_LORA, instruct_rows
from harness.server import ROOT, Server, any_alive, job_processes
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.client import cancel_job, job_status, register_jsonl


def _pct(values: list[float], q: float) -> float:
    return (
        statistics.quantiles(values, n=100, method="inclusive")[q - 1]
        if len(values) > 1
        else values[0]
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--calls", type=int, default=400)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)

    tmp = Path(tempfile.mkdtemp(prefix="bench-tracking-"))
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "make-tiny-model.py"),
            "--out",
            str(tmp / "tiny"),
            "--layout",
            "hf",
        ],
        check=True,
        capture_output=True,
    )
    (tmp / "srv").mkdir()
    server = Server(tmp / "srv", env={"KFP_MAX_CONCURRENT_JOBS": "2"}).start()
    try:
        client = server.client()
        data = write_jsonl(instruct_rows(64), tmp / "rows.jsonl")
        register_jsonl(client, "bench", str(data))
        jobs = [f"bench-{i}" for i in range(2)]
        for job in jobs:
            client.alpha.post_training.supervised_fine_tune(
                job_uuid=job,
                model=str(tmp / "tiny" / "hf"),
                hyperparam_search_config={},
                logger_config={},
                algorithm_config=DEMO_LORA,
                training_config={
                    "n_epochs": 50,
                    "max_steps_per_epoch": 1000,
                    "dtype": "fp32",
                    "data_config": {
                        "dataset_id": "bench",
                        "batch_size": 4,
                        "shuffle": True,
                        "data_format": "instruct",
                    },
                    "optimizer_config": {
                        "optimizer_type": "adamw",
                        "lr": 1e-3,
                        "weight_decay": 0.0,
                        "num_warmup_steps": 0,
                    },
                },
            )
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            steps = [
                (
                    (job_status(client, j).get("resources_allocated") or {}).get("progress") or {}
                ).get("step", 0)
                for j in jobs
            ]
            if all(s >= 2 for s in steps):
                break
            time.sleep(0.5)
        else:
            raise SystemExit("jobs did not start training")

        latencies = []
        for i in range(args.calls):
            t0 = time.perf_counter()
            st = job_status(client, jobs[i % 2])
            latencies.append((time.perf_counter() - t0) * 1000)
            assert st["status"] == "in_progress", st["status"]
        step_after = [
            job_status(client, j)["resources_allocated"]["progress"]["step"] for j in jobs
        ]

        cancels = []
        for job in jobs:
            pids = job_processes(server, job)
            gone_at: list[float] = []

            def watch(pids=pids, gone_at=gone_at):
                while any_alive(pids):
                    time.sleep(0.005)
                gone_at.append(time.perf_counter())

            t0 = time.perf_counter()
            watcher = threading.Thread(target=watch)
            watcher.start()
            cancel_job(client, job)
            call_ms = (time.perf_counter() - t0) * 1000
            watcher.join(30)
            cancels.append(
                {
                    "job": job,
                    "processes": len(pids),
                    "cancel_call_ms": round(call_ms, 1),
                    "to_last_process_gone_ms": round((gone_at[0] - t0) * 1000, 1),
                    "status_after": job_status(client, job)["status"],
                }
            )
    finally:
        server.stop()

    result = {
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, "
        f"{psutil.virtual_memory().total / 2**30:.0f} GiB",
        "python": platform.python_version(),
        "status_calls": args.calls,
        "status_p50_ms": round(_pct(latencies, 50), 2),
        "status_p99_ms": round(_pct(latencies, 99), 2),
        "status_max_ms": round(max(latencies), 2),
        "training_steps_reached": step_after,
        "cancel": cancels,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "tracking.json").write_text(json.dumps(result, indent=2))
    print("| measure | value |\n|---|---|")
    print(
        f"| status latency p50 / p99 / max ({args.calls} calls, 2 jobs training) | "
        f"{result['status_p50_ms']} / {result['status_p99_ms']} / {result['status_max_ms']} ms |"
    )
    for c in cancels:
        print(
            f"| cancel {c['job']}: call / until last of {c['processes']} processes gone | "
            f"{c['cancel_call_ms']} / {c['to_last_process_gone_ms']} ms ({c['status_after']}) |"
        )
    print(f"\n{result['machine']}; written to {args.out / 'tracking.json'}")


if __name__ == "__main__":
    main()
