"""Training throughput on one GPU: both engines on random-initialised models of published sizes.

    bash bench/gpu.sh                     # a GPU machine (see bench/gpu.sh for the wheels)
    bash bench/gpu.sh --dry-run           # anywhere: every configuration scaled down, on the CPU

What it measures is the training step, the code inside the pipeline's `train` component: each
run builds a JobSpec as the train step receives it and calls the engine through its entry
(`TrainingContext` + `training.engine.get_engine(name).train`), as `training.steps.train`
does; no kfp, no server, no tracking. Each run is a child process of its own (its peak CUDA
memory is its own; an OOM or a hang loses that row, killed with its process group at
--run-timeout), and the JSON is rewritten after every run, so a call cut short keeps what it
measured.

Models (`gpu_configs.MODELS`): the published config.json of Llama-3.2-1B, Llama-3.2-3B and
Qwen2.5-1.5B (Llama-3.1-8B, LoRA only, with `--models all`), random weights drawn on the
device and written once per call as bf16 safetensors to the scratch folder, shared by that
model's runs. The tokenizer is byte-level (every byte one token; the family's real
special-token ids and chat template), so the rows' token counts are known and both engines see
the same tokens (torchtune adds one end-of-text token a row).

Runs: each model x {LoRA, full} x {unpacked, packed} x each engine that trains it (torchtune:
Llama LoRA only), bf16, max_seq_len 2048, the batch size, LoRA rank/alpha/targets and
activation checkpointing of torchtune's own single-device config for that model
(`gpu_configs.RECIPES`), AdamW (lr as the config, weight decay 0.01), gradient accumulation 1.
Rows: chats whose lengths are spread over 1/8 .. 15/16 of max_seq_len, the same rows for every
run of a model.

Per run: `--warmup` optimizer steps, then `--steps` measured ones; the run stops after its
last measured step (the epoch's export is neither run nor timed). Reported:
- tokens_per_second: non-padding tokens fed to the model over the measured steps divided by
  their wall time (CUDA synchronised at each step's end);
- label_tokens_per_second: the engines' own per-step label-token figure, median of the
  measured steps (torchtune's `tokens_per_second_per_gpu`);
- train_peak_gib: torch.cuda.max_memory_allocated() at the last measured step (weights,
  optimizer state, activations; what torchtune's `log_peak_memory_stats` shows);
- mfu = k * N * tokens_per_second / peak dense bf16 FLOP/s of the GPU, N = the model's
  parameters (embeddings included, tied ones once), k = 6 for full fine-tuning and 4 for LoRA
  (the frozen base gets no weight gradients: forward 2N + input gradients 2N); attention's own
  FLOPs are not counted, so at 2048 tokens this understates MFU by roughly a tenth.

The markdown table (gpu_train.md beside the JSON) puts torchtune's published figures beside
ours: other GPUs (A100, A6000), torch.compile on; a reference, not a target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gpu_configs import DEFAULT_MODELS, MAX_SEQ_LEN, MODELS, model_config, plan_runs
from gpu_inputs import write_rows
from gpu_report import markdown, mfu, peak_flops, validate

ROOT = Path(__file__).resolve().parents[1]
# Nothing may reach the network (the GPU machine has none: a try would hang until a timeout).
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_HUB_DISABLE_TELEMETRY": "1", "PYTHONUNBUFFERED": "1",
           "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
NO_TRACKING = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "WANDB_PROJECT", "WANDB_ENTITY")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true",
                   help="CPU: every configuration scaled down (2 layers, width 64), short "
                        "rows, at most 2 a batch, 1 warm-up + 1 measured step, in two child "
                        "processes (one per engine); the JSON is validated")  # fmt: skip
    p.add_argument("--models", default=None,
                   help=f"comma-separated, or 'all' (default {','.join(DEFAULT_MODELS)}; "
                        f"have {','.join(MODELS)})")  # fmt: skip
    p.add_argument("--engines", default="huggingface,torchtune")
    p.add_argument("--algorithms", default="lora,full")
    p.add_argument("--packing", default="unpacked,packed")
    p.add_argument("--warmup", type=int, default=None, help="steps not measured (default 3)")
    p.add_argument("--steps", type=int, default=None, help="measured steps (default 8)")
    p.add_argument("--max-seq-len", type=int, default=None, help="default 2048; dry run 128")
    p.add_argument("--run-timeout", type=float, default=150.0, help="seconds per run")
    p.add_argument("--budget", type=float, default=240.0,
                   help="seconds for the whole call: runs not started by then are listed as "
                        "skipped, and a run in flight gets at most 50 s more (so the bench "
                        "ends within 5 minutes on one H200)")  # fmt: skip
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=None,
        help="the GPU's dense bf16 peak (default: from its name, e.g. H200 989)",
    )
    p.add_argument("--results", type=Path, default=None,
                   help="folder for gpu_train.json and gpu_train.md (default bench/results; "
                        "a new temporary folder for --dry-run)")  # fmt: skip
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new one)")
    p.add_argument("--hf-path", default="", help="PYTHONPATH entries for Hugging Face runs")
    p.add_argument("--torchtune-path", default="", help="PYTHONPATH entries for torchtune runs")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--parse-only", action="store_true", help=argparse.SUPPRESS)  # gpu.sh
    args = p.parse_args(argv)
    names = DEFAULT_MODELS if not args.models else (
        list(MODELS) if args.models == "all" else args.models.split(","))  # fmt: skip
    unknown = [m for m in names if m not in MODELS]
    if unknown:
        p.error(f"--models: unknown {unknown}; have {list(MODELS)}")
    args.models = names
    args.engines = _choices(p, "--engines", args.engines, ("huggingface", "torchtune"))
    args.algorithms = _choices(p, "--algorithms", args.algorithms, ("lora", "full"))
    args.packing = [v == "packed" for v in
                    _choices(p, "--packing", args.packing, ("unpacked", "packed"))]  # fmt: skip
    args.warmup = args.warmup if args.warmup is not None else (1 if args.dry_run else 3)
    args.steps = args.steps if args.steps is not None else (1 if args.dry_run else 8)
    args.max_seq_len = args.max_seq_len or (128 if args.dry_run else MAX_SEQ_LEN)
    if args.warmup < 1 or args.steps < 1:
        p.error("--warmup and --steps must be at least 1 (the first step carries one-off costs)")
    if args.max_seq_len < 64:
        p.error("--max-seq-len must be at least 64")
    return args


def _choices(p: argparse.ArgumentParser, flag: str, value: str, allowed: tuple) -> list[str]:
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    if not chosen or any(v not in allowed for v in chosen):
        p.error(f"{flag}: {value!r}; choose from {','.join(allowed)}")
    return chosen


# ---------------------------------------------------------------- children


def child_main(jobs_file: Path) -> int:
    """Jobs in order (make weights, or train one run), each result appended as a JSON line
    as soon as it is known: an OOM in one run is that run's error, not the process's end."""
    spec = json.loads(jobs_file.read_text())
    jobs, out = spec["jobs"], Path(spec["results"])
    for job in jobs:
        began = time.perf_counter()
        try:
            if job["kind"] == "make":
                from gpu_inputs import make_weights

                result = make_weights(job)
            else:
                from gpu_step import train_run

                result = train_run(job, one_job_process=len(jobs) == 1)
        except Exception as exc:  # the run's row carries it
            traceback.print_exc()
            result = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        with out.open("a") as fh:
            seconds = round(time.perf_counter() - began, 2)
            fh.write(json.dumps({"name": job["name"], "job_seconds": seconds, **result}) + "\n")
        if job["kind"] == "train" and job["device"] == "cuda":
            import torch

            torch.cuda.empty_cache()
    return 0


def run_children(name: str, jobs: list[dict], env_path: str, timeout: float, work: Path,
                 threads: int | None = None) -> list[dict]:  # fmt: skip
    """`jobs` in one child process, in its own process group, killed with it at `timeout`:
    one result per job, in order; a job left without one gets the child's failure."""
    jobs_file, out, log = (work / f"{name}.{x}" for x in ("jobs.json", "results.jsonl", "log"))
    out.unlink(missing_ok=True)
    jobs_file.write_text(json.dumps({"jobs": jobs, "results": str(out)}, indent=2))
    env = {k: v for k, v in os.environ.items() if k not in NO_TRACKING}
    env.update(OFFLINE)
    env["HF_DATASETS_CACHE"] = str(work / "hf-datasets-cache")  # torchtune's rows, not ~/.cache
    if threads:  # processes side by side (the dry run): one core each
        env["OMP_NUM_THREADS"] = str(threads)
    paths = [str(ROOT / "src"), str(ROOT), *[p for p in env_path.split(os.pathsep) if p]]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).strip(os.pathsep)
    # -S passes on: `bench/gpu.sh gather` runs without site-packages, on a restricted path.
    cmd = [sys.executable, *(["-S"] if sys.flags.no_site else []),
           str(Path(__file__).resolve()), "--child", str(jobs_file)]  # fmt: skip
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                cwd=str(work), start_new_session=True)  # fmt: skip
        try:
            code = proc.wait(timeout=timeout)
            failure = f"its process exited with status {code}" if code else None
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            failure = f"timed out after {timeout:.0f} s (process group killed)"
    wall = round(time.perf_counter() - start, 2)
    done = {}
    if out.is_file():
        for line in out.read_text().splitlines():
            row = json.loads(line)
            done[row.pop("name")] = row
    tail = log.read_text(errors="replace")[-3000:] if log.is_file() else ""
    results = []
    for job in jobs:
        row = done.get(job["name"]) or {"error": failure or "the process wrote no result"}
        if row.get("error"):
            row["log_tail"] = tail
        results.append({"wall_seconds": wall if len(jobs) == 1 else None, **row})
    return results


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL at once: on SIGTERM an engine would first write a checkpoint (training.stop)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    proc.wait()


# ---------------------------------------------------------------- the call


def _row_head(run: dict, args: argparse.Namespace) -> dict[str, Any]:
    return {"name": run["name"], "model": run["model"], "algorithm": run["algorithm"],
            "engine": run["engine"], "packed": run["packed"], "batch_size": run["batch"],
            "max_seq_len": args.max_seq_len, "activation_checkpointing": run["ckpt"],
            "steps_measured": args.steps}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.parse_only:  # bad options fail before gpu.sh installs anything
        return 0
    if args.child:
        return child_main(args.child)
    import torch

    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.sh: no CUDA device here, nothing measured (bench/gpu.sh --dry-run "
              "checks every configuration scaled down on the CPU)")  # fmt: skip
        return 0
    started = time.perf_counter()
    work = args.work or Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    out_dir = args.results or (work if args.dry_run else ROOT / "bench" / "results")
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "gpu_train.json", out_dir / "gpu_train.md"
    runs = plan_runs(args.models, args.algorithms, args.packing, args.engines)
    if args.dry_run:  # the vocabulary-wide logits dominate a CPU step: 2 rows a batch at most
        runs = [{**r, "batch": min(r["batch"], 2)} for r in runs]
    rows: list[dict] = []
    results: dict[str, Any] = {
        "what": "training-step throughput on one GPU: both engines through their entry "
                "(TrainingContext + ENGINE.train), random weights of published configs",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "device": device,
        "dry_run": args.dry_run,
        "machine": {"platform": f"{platform.machine()}, {os.cpu_count()} cores", "gpu": None,
                    "python": platform.python_version()},
        "versions": {}, "max_seq_len": args.max_seq_len, "warmup": args.warmup,
        "steps": args.steps, "peak_flops": None,
        "tokens_per_second": "non-padding tokens fed / wall seconds of the measured steps",
        "mfu": "k x parameters x tokens_per_second / peak_flops; k = 6 full, 4 LoRA "
               "(attention FLOPs not counted)",
        "planned": len(runs), "models": {}, "runs": rows,
    }  # fmt: skip

    def save() -> None:
        json_path.write_text(json.dumps(results, indent=2) + "\n")
        md_path.write_text(markdown(results))

    # Jobs: each model's weights (once), then its runs. On the GPU each job is a process of
    # its own; the dry run puts them all in one (the imports dominate its time).
    # Models whose (scaled-down) configs are equal share one set of weights.
    jobs: list[dict] = []
    owners: dict[str, str] = {}
    for model in dict.fromkeys(r["model"] for r in runs):
        config = model_config(model, args.dry_run)
        owner = owners.setdefault(json.dumps(config, sort_keys=True), model)
        rows_path = work / f"{model}.rows.jsonl"
        write_rows(rows_path, 10 * (args.warmup + args.steps) + 8, args.max_seq_len, 0)
        if owner == model:
            jobs.append({"kind": "make", "name": f"make-{model}", "model": model,
                         "dest": str(work / model), "config": config, "device": device,
                         "seed": 0})  # fmt: skip
        for run in runs:
            if run["model"] == model:
                jobs.append({"kind": "train", **run, "model_dir": str(work / owner),
                             "weights_of": owner, "rows": str(rows_path), "work": str(work),
                             "device": device, "warmup": args.warmup, "steps": args.steps,
                             "max_seq_len": args.max_seq_len})  # fmt: skip
    # Stages, one after the other; the groups of a stage run side by side, each in a process of
    # its own with its engine's PYTHONPATH. On the GPU every job is a stage of its own; the dry
    # run makes the weights, then trains the Hugging Face and torchtune runs side by side (the
    # CPU's two cores; imports dominate its time).
    stages = [[[j]] for j in jobs]
    if args.dry_run:
        tt = [j for j in jobs if j.get("engine") == "torchtune"]
        make = [j for j in jobs if j["kind"] == "make"]
        hf = [j for j in jobs if j not in tt and j not in make]
        stages = [[make], [g for g in (hf, tt) if g]]
    print(f"{len(runs)} runs; work folder {work}; results {json_path}", flush=True)
    made: dict[str, dict] = {}

    def run_group(group: list[dict]) -> list[dict]:
        got: dict[str, dict] = {}
        for job in group:  # runs whose weights were not made are not started
            weights = made.get(job.get("weights_of", ""), {})
            if job["kind"] == "train" and weights.get("error"):
                got[job["name"]] = {"error": f"weights not made: {weights['error']}"}
            elif job["kind"] == "train" and weights.get("skipped"):
                got[job["name"]] = {"skipped": weights["skipped"]}
        todo = [j for j in group if j["name"] not in got]
        if todo and time.perf_counter() - started > args.budget:
            spent = f"not started: the time budget ({args.budget:.0f} s) was spent"
            got.update((j["name"], {"skipped": spent}) for j in todo)
        elif todo:
            tt = any(j.get("engine") == "torchtune" for j in todo)
            path = args.torchtune_path if tt else args.hf_path
            left = args.budget + 50 - (time.perf_counter() - started)
            timeout = min(args.run_timeout * len(todo), max(left, 30.0))
            threads = 1 if args.dry_run else None
            ran = run_children(todo[0]["name"], todo, path, timeout, work, threads)
            got.update((j["name"], r) for j, r in zip(todo, ran, strict=True))
        return [got[j["name"]] for j in group]

    def record(group: list[dict], got: list[dict]) -> None:
        for job, result in zip(group, got, strict=True):
            if job["kind"] == "make":
                made[job["model"]] = result
                results["models"][job["model"]] = {k: v for k, v in result.items()
                                                   if k != "log_tail"}  # fmt: skip
                print(f"[{job['name']}] {results['models'][job['model']]}", flush=True)
                continue
            weights = made[job["weights_of"]]
            if job["weights_of"] != job["model"]:
                results["models"][job["model"]] = {"weights_of": job["weights_of"]}
            row = {**_row_head(job, args), "parameters": weights.get("parameters"), **result}
            results["machine"]["gpu"] = results["machine"]["gpu"] or row.get("gpu")
            for name, v in (row.get("versions") or {}).items():  # the runs' own, sites included
                results["versions"][name] = results["versions"].get(name) or v
            results["peak_flops"] = peak_flops(results["machine"]["gpu"], args.peak_tflops)
            row["mfu"] = mfu(row, results["peak_flops"])
            rows.append(row)
            status = row.get("error") or row.get("skipped") or (
                f"{row['tokens_per_second']:,.0f} tok/s, peak {row['train_peak_gib']} GiB, "
                f"MFU {row['mfu']}")  # fmt: skip
            print(f"[{job['name']}] {status}", flush=True)
        save()

    for stage in stages:
        with ThreadPoolExecutor(len(stage)) as pool:
            done = list(zip(stage, pool.map(run_group, stage), strict=True))
        for group, got in done:
            record(group, got)
    order = [r["name"] for r in runs]
    rows.sort(key=lambda r: order.index(r["name"]))
    for row in rows:  # rows measured before the GPU's name was known
        row["mfu"] = mfu(row, results["peak_flops"])
    results["seconds"] = round(time.perf_counter() - started, 1)
    save()
    print(markdown(results))
    problems = validate(results)
    for problem in problems:
        print(f"PROBLEM: {problem}", file=sys.stderr)
    print(f"wrote {json_path} and {md_path} in {results['seconds']} s", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
