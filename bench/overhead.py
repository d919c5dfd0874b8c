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

For each server run the job's phases (core.phases: the worker's, prepare-data's and train's,
from the status's `resources_allocated.phases`) are laid on one time line from the submit
call, printed, and saved with the medians of each segment (`timeline` in the JSON): where the
fixed seconds go. A checkout from before the phases existed runs too (no timeline then), so
an older tree can be measured beside this one: `PYTHONPATH=<other checkout>/src:<other
checkout> python bench/overhead.py` (the server, its workers and the steps inherit it).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import job_spec, make_tiny, save, summary

from harness.demo_data import DEMO_LORA, instruct_rows
from harness.server import Server
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.client import job_status, register_jsonl

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


# The time line of a server run: (segment, phase it starts at, phase it ends at); a phase is
# "<process>.<mark>" (core.phases), "submit" or "completed" (the status first said so).
SEGMENTS = [
    ("submit -> worker process started", "submit", "worker.start"),
    ("worker: interpreter, imports, kfp.local set-up", "worker.start", "worker.pipeline_started"),
    ("kfp.local: start the prepare-data task", "worker.pipeline_started", "prepare-data.start"),
    ("prepare-data: interpreter + kfp executor + step import", "prepare-data.start",
     "prepare-data.step_entered"),
    ("prepare-data: check and write the rows", "prepare-data.step_entered", "prepare-data.done"),
    ("prepare-data exits, kfp.local starts train", "prepare-data.done", "train.start"),
    ("train: interpreter + kfp executor + step import", "train.start", "train.step_entered"),
    ("train: torch/torchtune imports", "train.step_entered", "train.imports_done"),
    ("train: model built and loaded", "train.imports_done", "train.model_loaded"),
    ("train: tokenizer, data, first optimizer step", "train.model_loaded", "train.first_step"),
    ("train: the other optimizer steps", "train.first_step", "train.training_done"),
    ("train: last epoch's export", "train.training_done", "train.exports_done"),
    ("train: result written", "train.exports_done", "train.done"),
    ("train exits, kfp.local ends the pipeline", "train.done", "worker.pipeline_done"),
    ("worker reports; the status sees it", "worker.pipeline_done", "completed"),
]  # fmt: skip


def timeline(phases: dict, submitted: float, completed: float) -> dict[str, float] | None:
    """Seconds per segment of one server run (SEGMENTS), from the job's phases; None when
    the tree measured records none (a checkout from before them)."""
    at = {"submit": submitted, "completed": completed}
    for process, marks in (phases or {}).items():
        start = marks.get("started_at")
        if start is None:
            continue
        at[f"{process}.start"] = start
        for mark, seconds in marks.items():
            if mark not in ("started_at", "export_seconds"):
                at[f"{process}.{mark}"] = start + seconds
    if not all(a in at and b in at for _, a, b in SEGMENTS):
        return None
    return {name: round(at[b] - at[a], 3) for name, a, b in SEGMENTS}


def server_run(client, model: Path, dataset: str, job: str, epochs: int) -> tuple[float, dict]:
    """Wall seconds from submit to the status that says `completed`, and that status's
    resources_allocated (phases included) with the Unix times of both ends."""
    start = time.perf_counter()
    submitted = time.time()
    client.alpha.post_training.supervised_fine_tune(
        job_uuid=job, model=str(model), algorithm_config=DEMO_LORA,
        training_config={"n_epochs": epochs, "max_steps_per_epoch": 1000, "dtype": "fp32",
                         "data_config": {"dataset_id": dataset, "batch_size": 4, "shuffle": True,
                                         "data_format": "instruct"},
                         "optimizer_config": {"optimizer_type": "adamw", "lr": 2e-2,
                                              "weight_decay": 0.0, "num_warmup_steps": 2}},
        hyperparam_search_config={}, logger_config={},
    )  # fmt: skip
    while (status := job_status(client, job))["status"] not in ("completed", "failed"):
        time.sleep(0.1)
    wall, completed = time.perf_counter() - start, time.time()
    assert status["status"] == "completed", status
    resources = status.get("resources_allocated") or {}
    return wall, {"submitted": submitted, "completed": completed, **resources}


def direct_run(model: Path, data: Path, work: Path, epochs: int, env: dict) -> tuple[float, float]:
    """(warm, cold) seconds of the training code called directly (see the docstring)."""
    # Warm: two runs in one process; the second has everything imported.
    specs = []
    for k in range(2):
        (work / str(k)).mkdir(parents=True)
        specs.append(job_spec(model, data, work / str(k) / "out", epochs).model_dump_json())
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", DIRECT, *specs], check=True,
                         capture_output=True, text=True, env=env)  # fmt: skip
    wall = time.perf_counter() - start
    runs = [ln.split()[1:] for ln in out.stdout.splitlines() if ln.startswith("RUN")]
    warm = float(runs[1][0])
    return warm, wall - warm  # cold: interpreter start + imports + the first run


def tree_env(tree: Path) -> dict[str, str]:
    """The environment that runs `tree`'s code (server, workers, steps, direct calls),
    whichever checkout the virtualenv's editable install points at."""
    return {**os.environ, "PYTHONPATH": f"{tree}/src:{tree}"}


def commit_of(tree: Path) -> str:
    out = subprocess.run(["git", "-C", str(tree), "log", "-1", "--format=%h %s"],
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout.strip()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="2 repeats")
    ap.add_argument("--baseline", type=Path, metavar="CHECKOUT",
                    help="also measure another checkout of this repository (e.g. `git worktree "
                         "add /tmp/before main`), alternating with this one in every repeat; "
                         "saved under `baseline`")  # fmt: skip
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES),
                    help="job sizes to run (default: all)")  # fmt: skip
    args = ap.parse_args()
    repeats = 2 if args.quick else args.repeats
    for name in set(SIZES) - set(args.sizes):
        del SIZES[name]
    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    model = make_tiny(tmp / "tiny")
    here = Path(__file__).resolve().parents[1]
    variants = {"this": here}
    if args.baseline is not None:
        variants = {"baseline": args.baseline.resolve(), **variants}
    servers, clients = {}, {}
    times = {v: {s: {"server": [], "direct_warm": [], "direct_cold": []} for s in SIZES}
             for v in variants}  # fmt: skip
    lines: dict[str, dict[str, list[dict[str, float]]]] = {
        v: {s: [] for s in SIZES} for v in variants
    }
    loads = [os.getloadavg()[0]]
    try:
        for v, tree in variants.items():
            (tmp / v).mkdir()
            servers[v] = Server(tmp / v, env={"PYTHONPATH": tree_env(tree)["PYTHONPATH"]}).start()
            clients[v] = servers[v].client()
        for name, (rows, epochs) in SIZES.items():
            data = write_jsonl(instruct_rows(rows), tmp / f"{name}.jsonl")
            for v in variants:
                register_jsonl(clients[v], name, str(data))
            for r in range(repeats):
                for v, tree in variants.items():
                    env = tree_env(tree)
                    t, seen = server_run(clients[v], model, name, f"{name}-{r}", epochs)
                    times[v][name]["server"].append(t)
                    line = timeline(seen.get("phases"), seen["submitted"], seen["completed"])
                    if line is not None:
                        lines[v][name].append(line)
                        print(f"{v}, {name} #{r}: the server run's time line (s):")
                        for segment, seconds in line.items():
                            print(f"  {seconds:6.2f}  {segment}")
                    warm, cold = direct_run(model, data, tmp / f"direct-{v}-{name}-{r}",
                                            epochs, env)  # fmt: skip
                    times[v][name]["direct_warm"].append(warm)
                    times[v][name]["direct_cold"].append(cold)
                    loads.append(os.getloadavg()[0])
                    print(f"{v}, {name} #{r}: server {t:.2f}s, direct warm {warm:.2f}s, "
                          f"cold {cold:.2f}s, fixed cost {t - warm:.2f}s "
                          f"(load {loads[-1]:.2f})")  # fmt: skip
    finally:
        for server in servers.values():
            server.stop()
    result = {"repeats": repeats, "load_average_1min": summary(loads),
              **sizes(times["this"], lines["this"])}  # fmt: skip
    if "baseline" in variants:
        result["baseline"] = {"checkout": commit_of(variants["baseline"]),
                              **sizes(times["baseline"], lines["baseline"])}  # fmt: skip
        result["commit"] = commit_of(here)
    save("overhead", result)


def sizes(times: dict[str, dict[str, list[float]]], lines: dict[str, list[dict]]) -> dict:
    out: dict = {"sizes": {}}
    for name, (rows, epochs) in SIZES.items():
        s = {k: summary(v) for k, v in times[name].items()}
        warm, srv = s["direct_warm"]["median"], s["server"]["median"]
        fixed = [a - b for a, b in zip(times[name]["server"], times[name]["direct_warm"],
                                       strict=True)]  # fmt: skip
        out["sizes"][name] = {
            "rows": rows, "epochs": epochs, "steps": rows // 4 * epochs, **s,
            "ratio_server_over_direct_warm": round(srv / warm, 3),
            "fixed_cost_seconds": round(srv - warm, 3),
            "fixed_cost_per_repeat": summary(fixed),
            "ratio_server_over_direct_cold": round(srv / s["direct_cold"]["median"], 3),
        }  # fmt: skip
        if lines[name]:
            out["sizes"][name]["timeline"] = {
                seg: summary([ln[seg] for ln in lines[name]]) for seg in lines[name][0]
            }
    return out


if __name__ == "__main__":
    main()
