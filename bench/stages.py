#!/usr/bin/env python3
"""What each pipeline stage costs on the demo job: prepare-data -> train -> evaluate -> register.

    python bench/stages.py [--repeats 3] [--quick]

The demo's job (scripts/run-training.py's defaults: the tiny model of scripts/make-tiny-model.py,
HF layout; 64 toy rows of harness.demo_data, DEMO_LORA, 3 epochs, batch 4, lr 2e-2, 2 warm-up
steps, fp32), through a real `llama stack run` with this provider in local mode, five ways:

  a  train only
  b  + evaluate on the held-out rows only (3 samples answered by base and tuned, greedy)
  c  + a custom lm-eval task (tests/eval_task.py's tiny_mc, 6 questions)
  d  + register into MLflow through a real `mlflow server` (SQLite store, local artifacts),
     started by this script: its start-up seconds are reported on their own
  e  + register into a local `sqlite:///` MLflow store (no server; a fresh file per job, as a
     fresh demo would have)

One change from the demo: every variant, (a) included, holds out 10% of the rows
(validation_fraction 0.1; the split's row counts and the optimizer steps are saved as `rows` and
`optimizer_steps`), so that the train stage is the same job in all five (it also computes the
validation loss each epoch) and the differences are the later stages.

Per job: wall seconds from the submit call to the status that first says `completed` (polled every
0.1 s); each stage's seconds (`resources_allocated.stages`: finished_at - started_at, which the step
itself writes, so a step's interpreter start and kfp.local's hand-over between steps fall outside
them) and its span (from the end of the stage before, or the submit call, to its own end: what the
job pays for it); the evaluate step's phases (`evaluation.phases`); and each stage's peak memory: a
thread polls the job's process tree (the worker, from job.json, and every process under it) every 50
ms and keeps each process's high-water mark (VmHWM in /proc/<pid>/status, the kernel's own peak RSS,
so a peak between two polls is not missed; only the last < 50 ms of a process's life are). A step
process is attributed to its stage by the function kfp.local runs in it (`--function_to_execute` on
its command line); processes a step starts (lm-eval runs torch's collect_env: pip list, lscpu, ...)
count as that step's and are listed in `helper_processes`. The job's overall peak is the largest sum
of the tree's RSS seen at one poll. Each repeat runs a..e in turn (rotated, to spread the machine's
noise); medians (min-max) over repeats. What each addition adds to the job is paired per repeat
(`adds_seconds`, see increments()): the demo's decision figure is its two register rows.
Writes $BENCH_RESULTS/stages.json (default bench/results/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import psutil
from common import make_tiny, save, summary

from harness.demo_data import DEMO_LORA, instruct_rows, training_config
from harness.server import ROOT, Server
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.client import job_status, register_jsonl

sys.path.insert(0, str(ROOT / "tests"))
from eval_task import write_task
from mlflow_server import MLflowServer

STAGES = ("prepare-data", "train", "evaluate", "register")
STEP_FUNCTIONS = {"prepare_data": "prepare-data", "train": "train", "evaluate": "evaluate",
                  "register": "register"}  # fmt: skip
VARIANTS = {
    "a": "train only",
    "b": "+ evaluate, held-out rows (3 samples)",
    "c": "+ lm-eval task tiny_mc",
    "d": "+ register, MLflow server",
    "e": "+ register, sqlite:/// store",
}
ROWS, EPOCHS, VALIDATION_FRACTION = 64, 3, 0.1


def stages_config(variant: str, task: Path, mlflow_url: str, sqlite_uri: str) -> dict:
    kfp: dict = {"validation_fraction": VALIDATION_FRACTION}
    if variant >= "b":
        kfp["evaluation"] = {"enabled": True, "samples": 3}
    if variant >= "c":
        kfp["evaluation"]["task_files"] = [str(task)]
    if variant == "d":
        kfp["registry"] = {"kind": "mlflow", "uri": mlflow_url}
    if variant == "e":
        kfp["registry"] = {"kind": "mlflow", "uri": sqlite_uri}
    return {"kfp": kfp}


def _hwm_kb(pid: int) -> tuple[int, int] | None:
    """(VmHWM, VmRSS) in kB of a live process, None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        if line.startswith(("VmHWM:", "VmRSS:")):
            key, value = line.split(":", 1)
            values[key] = int(value.split()[0])
    if "VmHWM" not in values:
        return None  # a zombie
    return values["VmHWM"], values["VmRSS"]


def _step_of(cmdline: list[str]) -> str | None:
    if "--function_to_execute" in cmdline:
        i = cmdline.index("--function_to_execute")
        if i + 1 < len(cmdline):
            return STEP_FUNCTIONS.get(cmdline[i + 1], cmdline[i + 1])
    return None


class TreeWatch(threading.Thread):
    """Polls a job's process tree: each process's peak (VmHWM) and the tree's largest RSS sum."""

    def __init__(self, job_dir: Path, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.job_dir, self.interval = job_dir, interval
        self.done = threading.Event()
        self.procs: dict[int, dict] = {}  # pid -> {"step", "hwm_kb"}
        self.worker: int | None = None
        self.tree_peak_kb = 0
        self.tree_peak_parts: list[tuple[str, float]] = []
        self.helpers: dict[str, list[str]] = {}  # step -> commands its process started

    def run(self) -> None:
        while not self.done.is_set():
            self.poll()
            time.sleep(self.interval)
        self.poll()

    def poll(self) -> None:
        if self.worker is None:
            try:
                record = json.loads((self.job_dir / "job.json").read_text())
                self.worker = record["runner"]["pid"]
            except (OSError, ValueError, KeyError, TypeError):
                return
        try:
            root = psutil.Process(self.worker)
            tree = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total, parts = 0, []
        for p in tree:
            mem = _hwm_kb(p.pid)
            if mem is None:
                continue
            seen = self.procs.get(p.pid) or self._new(p)
            if seen is None:
                continue
            total += mem[1]
            parts.append((seen["step"], round(mem[1] / 1024, 1)))
            seen["hwm_kb"] = max(seen["hwm_kb"], mem[0])
        if total > self.tree_peak_kb:
            self.tree_peak_kb, self.tree_peak_parts = total, parts

    def _new(self, p: psutil.Process) -> dict | None:
        """A process seen for the first time: its step (the worker; a step by the function
        kfp.local runs in it; a helper under a step counts as that step's, and is named)."""
        try:
            cmdline = p.cmdline()
            ancestors = p.parents()
        except psutil.Error:
            return None
        step = "worker" if p.pid == self.worker else _step_of(cmdline)
        helper = None
        if step is None:
            step = next((self.procs[a.pid]["step"] for a in ancestors
                         if a.pid in self.procs and a.pid != self.worker), "other")  # fmt: skip
            helper = " ".join(Path(c).name if i == 0 else c for i, c in enumerate(cmdline[:4]))
            self.helpers.setdefault(step, []).append(helper)
        self.procs[p.pid] = {"step": step, "hwm_kb": 0, "helper": helper}
        return self.procs[p.pid]

    def peaks_mb(self) -> dict[str, float]:
        """Peak RSS per step (the largest of its processes') and of the worker, in MB."""
        out: dict[str, float] = {}
        for p in self.procs.values():
            out[p["step"]] = max(out.get(p["step"], 0.0), round(p["hwm_kb"] / 1024, 1))
        return out


def _t(stamp: str | float) -> float:
    return stamp if isinstance(stamp, float | int) else datetime.fromisoformat(stamp).timestamp()


def run_job(client, server: Server, job: str, model: Path, dataset: str, ext: dict) -> dict:
    watch = TreeWatch(server.jobs_dir / job)
    watch.start()
    start, submitted = time.perf_counter(), time.time()
    client.alpha.post_training.supervised_fine_tune(
        job_uuid=job, model=str(model), algorithm_config=DEMO_LORA,
        training_config=training_config(dataset, n_epochs=EPOCHS),
        hyperparam_search_config=ext, logger_config={},
    )  # fmt: skip
    while (status := job_status(client, job))["status"] not in ("completed", "failed"):
        time.sleep(0.1)
    wall, completed = time.perf_counter() - start, time.time()
    watch.done.set()
    watch.join(5)
    res = status.get("resources_allocated") or {}
    assert status["status"] == "completed", res.get("error")
    stages, spans, before = {}, {}, submitted
    for s in res.get("stages") or []:
        start_at, end_at = _t(s["started_at"]), _t(s["finished_at"])
        stages[s["name"]] = round(end_at - start_at, 3)
        # The stage as the job pays it: from the end of the one before (the submit call for
        # the first) to its own end: kfp.local's hand-over and the step's interpreter included.
        spans[s["name"]] = round(end_at - before, 3)
        before = end_at
    spans["status sees the end"] = round(completed - before, 3)
    evaluation = res.get("evaluation") or {}
    registry = res.get("registry") or {}
    if "d" <= job[0] <= "e":
        assert registry.get("registered"), registry
    return {
        "wall_seconds": round(wall, 3),
        "stage_seconds": stages,
        "stage_span_seconds": spans,
        "evaluate_phases": evaluation.get("phases") or {},
        "peak_rss_mb": watch.peaks_mb(),
        "job_tree_peak_rss_mb": round(watch.tree_peak_kb / 1024, 1),
        "job_tree_peak_parts_mb": watch.tree_peak_parts,
        "helper_processes": watch.helpers,
        "steps": (res.get("progress") or {}).get("total_steps"),
        "rows": res.get("rows"),
        "train_reported_peak_mb": (res.get("result") or {}).get("peak_memory_mb"),
        "registry": {k: registry.get(k) for k in ("name", "version", "registered")},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="1 repeat")
    args = ap.parse_args()
    repeats = 1 if args.quick else args.repeats
    tmp = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    model = make_tiny(tmp / "tiny")
    task = write_task(tmp) / "tiny_mc.yaml"
    data = write_jsonl(instruct_rows(ROWS), tmp / "rows.jsonl")
    (tmp / "srv").mkdir()
    (tmp / "mlflow").mkdir()
    (tmp / "sqlite").mkdir()
    loads = [os.getloadavg()[0]]
    runs: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    mlflow_startup: list[float] = []
    server = Server(tmp / "srv").start()
    mlflow = None
    try:
        start = time.perf_counter()
        mlflow = MLflowServer(tmp / "mlflow")
        mlflow.wait_ready()
        mlflow_startup.append(time.perf_counter() - start)
        print(f"mlflow server ready in {mlflow_startup[0]:.2f} s")
        client = server.client()
        register_jsonl(client, "demo", str(data))
        order = list(VARIANTS)
        for r in range(repeats):
            for v in order[r % len(order) :] + order[: r % len(order)]:
                sqlite_uri = f"sqlite:///{tmp / 'sqlite' / f'{v}-{r}.db'}"
                ext = stages_config(v, task, mlflow.url, sqlite_uri)
                m = run_job(client, server, f"{v}-{r}", model, "demo", ext)
                runs[v].append(m)
                loads.append(os.getloadavg()[0])
                print(f"{v} #{r} ({VARIANTS[v]}): {m['wall_seconds']:.2f} s; stages "
                      + ", ".join(f"{k} {s:.2f}" for k, s in m["stage_seconds"].items())
                      + f"; peak MB {m['peak_rss_mb']}; load {loads[-1]:.2f}")  # fmt: skip
    finally:
        server.stop()
        if mlflow is not None:
            mlflow.stop()
    result = {"repeats": repeats, "rows": ROWS, "epochs": EPOCHS,
              "validation_fraction": VALIDATION_FRACTION,
              "load_average_1min": summary(loads),
              "mlflow_server_startup_seconds": summary(mlflow_startup),
              "variants": {v: aggregate(VARIANTS[v], runs[v]) for v in VARIANTS}}  # fmt: skip
    result["adds_seconds"] = increments(runs)
    save("stages", result)
    print_table(result)


def _med(values: list[float]) -> dict | None:
    return summary(values) if values else None


def aggregate(label: str, runs: list[dict]) -> dict:
    stage_names = [s for s in STAGES if any(s in m["stage_seconds"] for m in runs)]
    phases = sorted({p for m in runs for p in m["evaluate_phases"]})
    steps = sorted({p for m in runs for p in m["peak_rss_mb"]})
    return {
        "label": label,
        "wall_seconds": summary([m["wall_seconds"] for m in runs]),
        "stage_seconds": {s: _med([m["stage_seconds"][s] for m in runs if s in m["stage_seconds"]])
                          for s in stage_names},
        "stage_span_seconds": {s: _med([m["stage_span_seconds"][s] for m in runs
                                        if s in m["stage_span_seconds"]])
                               for s in [*stage_names, "status sees the end"]},
        "outside_stages_seconds": summary(
            [m["wall_seconds"] - sum(m["stage_seconds"].values()) for m in runs]),
        "evaluate_phases": {p: _med([m["evaluate_phases"][p] for m in runs
                                     if p in m["evaluate_phases"]]) for p in phases},
        "peak_rss_mb": {s: _med([m["peak_rss_mb"][s] for m in runs if s in m["peak_rss_mb"]])
                        for s in steps},
        "job_tree_peak_rss_mb": summary([m["job_tree_peak_rss_mb"] for m in runs]),
        "train_reported_peak_mb": _med([m["train_reported_peak_mb"] for m in runs
                                        if m["train_reported_peak_mb"] is not None]),
        "optimizer_steps": runs[0]["steps"],
        "rows": runs[0]["rows"],
        "runs": runs,
    }  # fmt: skip


# name: (with, without, what is compared): the seconds after the stage named (the spans of
# the stages after it and the status seeing the end), or None: the wall outside train's span.
INCREMENTS = {
    "evaluate, held-out rows": ("b", "a", "train"),
    "lm-eval task (its check in prepare-data included)": ("c", "b", None),
    "register, MLflow server": ("d", "c", "evaluate"),
    "register, sqlite store": ("e", "c", "evaluate"),
}


def _outside(m: dict, after: str | None) -> float:
    spans = m["stage_span_seconds"]
    if after is None:
        return m["wall_seconds"] - spans["train"]
    names = list(spans)
    return sum(spans[s] for s in names[names.index(after) + 1 :])


def increments(runs: dict[str, list[dict]]) -> dict:
    """What each addition costs the job, paired per repeat: the difference of the two
    variants' seconds after the last stage they share (or, for the lm-eval task, which also
    costs prepare-data its check, of their wall seconds outside the train stage), so that the
    noise of the stages both run (training above all, on a shared machine) stays out. The
    demo's decision figure is the two register rows (and the server's start-up for d)."""
    out = {}
    for name, (x, y, after) in INCREMENTS.items():
        paired = [
            _outside(mx, after) - _outside(my, after)
            for mx, my in zip(runs[x], runs[y], strict=True)
        ]
        out[name] = {"variants": f"{x} - {y}", "after": after, **summary(paired)}
    return out


def print_table(result: dict) -> None:
    def f(s: dict | None) -> str:
        return "-" if s is None else f"{s['median']:.2f}"

    print(
        "\nmedians; a stage: its own seconds / its span (from the end of the stage before: "
        "kfp.local's hand-over and the step's interpreter start included)"
    )
    print(
        "\n| variant | wall s | "
        + " | ".join(f"{s} s" for s in STAGES)
        + " | evaluate phases s | peak RSS MB per step | job tree peak MB |"
    )
    print("|---" * (5 + len(STAGES)) + "|")
    for v, a in result["variants"].items():
        phases = ", ".join(f"{p} {s['median']:.2f}" for p, s in a["evaluate_phases"].items())
        peak = a["peak_rss_mb"]
        peaks = ", ".join(
            f"{p} {peak[p]['median']:.0f}" for p in ("worker", *STAGES) if peak.get(p)
        )
        print(
            f"| {v}: {a['label']} | {f(a['wall_seconds'])} | "
            + " | ".join(
                f"{f(a['stage_seconds'].get(s))} / {f(a['stage_span_seconds'].get(s))}"
                if s in a["stage_seconds"]
                else "-"
                for s in STAGES
            )
            + f" | {phases or '-'} | {peaks} | {a['job_tree_peak_rss_mb']['median']:.0f} |"
        )
    print("\n| what it adds to the job (paired, outside the train stage) | seconds |\n|---|---|")
    for name, d in result["adds_seconds"].items():
        print(f"| {name} ({d['variants']}) | {d['median']:.2f} ({d['min']:.2f}-{d['max']:.2f}) |")
    load, start = result["load_average_1min"], result["mlflow_server_startup_seconds"]
    print(
        f"| MLflow server start-up (once) | {start['median']:.2f} |"
        f"\n\nload average {load['median']:.2f} ({load['min']:.2f}-{load['max']:.2f})"
    )


if __name__ == "__main__":
    main()
