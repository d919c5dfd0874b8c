#!/usr/bin/env python3
"""The load soak: many tiny jobs through one real server, with cancels and status pollers.

    python bench/soak.py [--jobs 100] [--pollers 20] [--out DIR]

Starts a real `llama stack run` (max_concurrent_jobs 2) on loopback and submits `--jobs` tiny
LoRA jobs (one optimizer step each, on a tiny Llama made here), cancelling every fifth one
right after its submit, while `--pollers` threads ask for random jobs' status back to back.
Checks that every job ends the way it should (completed, or cancelled) and samples the
server's open file descriptors, threads, RSS and child processes (zombies counted) after each
tenth of the jobs ended, to show they stay flat. Writes <out>/soak.json (default:
$BENCH_RESULTS, else bench/results/) with submit and status p50/p99 and the samples, and
prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
from common import RESULTS, machine

from harness.demo_data import DEMO_LORA, instruct_rows
from harness.server import ROOT, Server
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.client import cancel_job, job_status, register_jsonl


def _pct(values: list[float], q: int) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1]


def _resources(pid: int) -> dict:
    proc = psutil.Process(pid)
    children = proc.children(recursive=True)
    return {
        "fds": proc.num_fds(),
        "threads": proc.num_threads(),
        "rss_mb": round(proc.memory_info().rss / 2**20, 1),
        "children": len(children),
        "zombies": sum(1 for c in children if c.status() == psutil.STATUS_ZOMBIE),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--jobs", type=int, default=100)
    ap.add_argument("--pollers", type=int, default=20)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)

    tmp = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    tiny = [sys.executable, str(ROOT / "scripts" / "make-tiny-model.py"), "--out",
            str(tmp / "tiny"), "--layout", "hf"]  # fmt: skip
    subprocess.run(tiny, check=True, capture_output=True)
    (tmp / "srv").mkdir()
    server = Server(tmp / "srv", env={"KFP_MAX_CONCURRENT_JOBS": "2"}).start()
    assert server.proc is not None
    started = time.monotonic()
    try:
        client = server.client()
        register_jsonl(client, "soak", str(write_jsonl(instruct_rows(8), tmp / "rows.jsonl")))
        jobs = [f"soak-{i:03d}" for i in range(args.jobs)]
        cancelled = set(jobs[4::5])
        submitted: list[str] = []
        submit_s: list[float] = []
        status_s: list[float] = []
        stop = threading.Event()

        def poll() -> None:
            mine = server.client()
            while not stop.is_set():
                if not submitted:
                    time.sleep(0.05)
                    continue
                t = time.perf_counter()
                job_status(mine, random.choice(submitted))
                status_s.append(time.perf_counter() - t)

        pollers = [threading.Thread(target=poll, daemon=True) for _ in range(args.pollers)]
        for p in pollers:
            p.start()
        samples = [{"ended": 0, **_resources(server.proc.pid)}]
        for job in jobs:
            t = time.perf_counter()
            client.alpha.post_training.supervised_fine_tune(
                job_uuid=job, model=str(tmp / "tiny" / "hf"), hyperparam_search_config={},
                logger_config={}, algorithm_config=DEMO_LORA,
                training_config={"n_epochs": 1, "max_steps_per_epoch": 1, "dtype": "fp32",
                                 "data_config": {"dataset_id": "soak", "batch_size": 4,
                                                 "shuffle": False, "data_format": "instruct"}},
            )  # fmt: skip
            submit_s.append(time.perf_counter() - t)
            submitted.append(job)
            if job in cancelled:
                cancel_job(client, job)
        # Wait for every job to end; sample the server each tenth of the way.
        ended: dict[str, str] = {}
        step = max(args.jobs // 10, 1)
        while len(ended) < len(jobs):
            for job in jobs:
                if job not in ended:
                    state = job_status(client, job)["status"]
                    if state in ("completed", "failed", "cancelled"):
                        ended[job] = state
                        if len(ended) % step == 0:
                            samples.append({"ended": len(ended), **_resources(server.proc.pid)})
            time.sleep(0.5)
        stop.set()
        for p in pollers:
            p.join(5)
        wrong = {j: s for j, s in ended.items()
                 if s != ("cancelled" if j in cancelled else "completed")}  # fmt: skip
        result = {
            **machine(),
            "jobs": args.jobs,
            "cancelled": len(cancelled),
            "pollers": args.pollers,
            "seconds": round(time.monotonic() - started, 1),
            "wrong_endings": wrong,
            "submit_ms": {"p50": round(1000 * _pct(submit_s, 50), 1),
                          "p99": round(1000 * _pct(submit_s, 99), 1)},
            "status_ms": {"p50": round(1000 * _pct(status_s, 50), 1),
                          "p99": round(1000 * _pct(status_s, 99), 1), "calls": len(status_s)},
            "server": samples,
        }  # fmt: skip
    finally:
        server.cleanup()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(result, indent=2))
    print(f"{args.jobs} jobs ({len(cancelled)} cancelled), {args.pollers} pollers, "
          f"{result['seconds']} s; wrong endings: {wrong or 'none'}")  # fmt: skip
    print(f"submit p50/p99 {result['submit_ms']['p50']}/{result['submit_ms']['p99']} ms; status "
          f"p50/p99 {result['status_ms']['p50']}/{result['status_ms']['p99']} ms "
          f"({len(status_s)} calls)")  # fmt: skip
    print(
        "\n| jobs ended | fds | threads | RSS MB | children | zombies |\n|---|---|---|---|---|---|"
    )
    for s in samples:
        print(f"| {s['ended']} | {s['fds']} | {s['threads']} | {s['rss_mb']} | {s['children']} | "
              f"{s['zombies']} |")  # fmt: skip


if __name__ == "__main__":
    main()
