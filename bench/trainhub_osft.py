"""Our OSFT against Training Hub's `osft()` on one GPU: the same model, rows, ratio, steps,
learning rate, effective batch size and max_seq_len; both loss curves, times and peak memory.

    python bench/trainhub_osft.py                         # a GPU machine: bench/gpu_trainhub.sh
    python bench/trainhub_osft.py --device cpu --steps 3  # smoke run: our side only, on CPU

The model is made on the fly (harness/tiny_families.py, SmolLM2's architecture and chat template;
on CUDA with SmolLM2-135M's published layer sizes, random weights, a few-hundred-token BPE
vocabulary), the rows too (harness/demo_data.py, the greeting task). Nothing is downloaded.

Each run is a child process of this one, so that its peak CUDA memory is its own, killed with its
whole process group when it outlives its timeout:
- ours: the train component's code, `training.steps.train_step`, on a JobSpec with
  `osft=OSFTSpec(...)` (as tests/test_osft.py builds it). It needs torch, transformers,
  safetensors, peft and pydantic only: no kfp, llama-stack, torchtune or datasets.
- trainhub: `training_hub.osft(...)` (backend mini-trainer) with `TESTING=true` (SDPA instead of
  flash-attn), on the rows converted to the `messages` JSONL it reads. It tokenizes them with
  instructlab-training's data processing, then launches `torchrun` (NCCL, CUDA, FSDP2); its loss
  per step and peak memory come from mini-trainer's `training_metrics_0.jsonl`.

What is matched: targets (every attention and MLP projection: both defaults for Llama),
unfreeze_rank_ratio, steps (one pass over steps x batch rows), AdamW (betas 0.9/0.999, eps 1e-8,
weight decay), cosine schedule without warmup over the run, batch size (Training Hub's
effective_batch_size, one micro-batch: max_tokens_per_gpu = batch x max_seq_len), max_seq_len,
seed, the tokens (both render the rows with the model's chat template: the same input_ids),
loss (the mean over the batch's answer tokens). What is not: the row order (each side shuffles
with its own sampler); the labels, by one token a row (both train on the answer and
`<|im_end|>`, ours also on the template's newline after it, checked on the CPU); gradient
clipping (mini-trainer clips at norm 1.0, we do not); and precision: ours keeps the weights in
--dtype (bf16: weights and AdamW state in bf16), mini-trainer keeps them in
--trainhub-train-dtype (its default float32) and computes in bf16 (FSDP2 mixed precision).
Our side therefore runs in bf16 and in fp32 by default.

Peak memory: mini-trainer resets the CUDA peak at each step, so its figure is the training
steps' (weights, optimizer state, activations), without its setup (load, SVD). Ours is recorded
the same way (`train_peak_mib`: the peak is reset once the SVD is done) and with the setup
(`setup_peak_mib`).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
FAMILY = "smollm2"
# HuggingFaceTB/SmolLM2-135M's published sizes (config.json), with the tiny BPE vocabulary.
SIZES = {
    "tiny": {},
    "smollm2-135m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30,
                     "num_attention_heads": 9, "num_key_value_heads": 3},
}  # fmt: skip
# Packages whose versions the results record, where a side can import them.
OUR_PACKAGES = ("torch", "transformers", "peft", "safetensors", "pydantic")
HUB_PACKAGES = ("training-hub", "rhai-innovation-mini-trainer", "instructlab-training",
                "datasets", "torch", "transformers")  # fmt: skip
# Nothing may reach the network (the GPU machine has none: a try would hang until a timeout).
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "WANDB_MODE": "disabled", "HF_HUB_DISABLE_TELEMETRY": "1",
           "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}  # fmt: skip
NO_TRACKING = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_RUN_NAME",
               "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_NAME")  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--steps", type=int, default=50, help="optimizer steps on each side")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-seq-len", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--ratio", type=float, default=0.25, help="unfreeze_rank_ratio")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument(
        "--size",
        choices=sorted(SIZES),
        default=None,
        help="model sizes (default: smollm2-135m on cuda, tiny on cpu)",
    )
    p.add_argument(
        "--dtypes",
        default=None,
        help="our side's dtypes, comma-separated (default: bf16,fp32 on cuda, fp32 on cpu)",
    )
    p.add_argument(
        "--trainhub-train-dtype",
        default="float32",
        help="mini-trainer's train_dtype (its default float32; it computes in bf16)",
    )
    p.add_argument("--skip-trainhub", action="store_true", help="run our side only")
    p.add_argument(
        "--ours-path",
        default="",
        help="extra PYTHONPATH entries for our side (the carried pydantic wheels)",
    )
    p.add_argument(
        "--trainhub-path",
        default="",
        help="extra PYTHONPATH entries for Training Hub's side (its carried wheels)",
    )
    p.add_argument("--ours-timeout", type=float, default=120.0, help="seconds per run of ours")
    p.add_argument("--trainhub-timeout", type=float, default=240.0, help="seconds")
    p.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new one)")
    p.add_argument(
        "--results",
        type=Path,
        default=None,
        help="JSON written here (default: bench/results/trainhub_osft.json on cuda, "
        "<work>/trainhub_osft.json on cpu)",
    )
    p.add_argument("--plot", type=Path, default=None, help="PNG (default: beside the JSON)")
    p.add_argument("--child", choices=["ours", "trainhub"], help=argparse.SUPPRESS)
    p.add_argument("--child-config", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        p.error("--steps and --batch-size must be at least 1")
    if not 0.0 < args.ratio <= 1.0:
        p.error("--ratio must be in (0, 1]")
    args.size = args.size or ("smollm2-135m" if args.device == "cuda" else "tiny")
    dtypes = args.dtypes or ("bf16,fp32" if args.device == "cuda" else "fp32")
    args.dtypes = [d.strip() for d in dtypes.split(",") if d.strip()]
    if not set(args.dtypes) <= {"bf16", "fp32", "fp16"}:
        p.error("--dtypes takes bf16, fp32, fp16")
    if args.device == "cpu" and not args.skip_trainhub:
        args.skip_trainhub = True  # mini-trainer needs CUDA and NCCL
        args.trainhub_skipped = "mini-trainer trains on CUDA only (NCCL, FSDP2)"
    else:
        args.trainhub_skipped = "--skip-trainhub" if args.skip_trainhub else None
    return args


# ---------------------------------------------------------------- inputs (this process, CPU)


def make_model(size: str, dest: Path, seed: int) -> Path:
    sys.path[:0] = [str(ROOT)]
    from harness import tiny_families

    family = FAMILY
    if SIZES[size]:  # the family with its sizes raised, under a name of its own
        family = f"{FAMILY}-{size}"
        spec = tiny_families.FAMILIES[FAMILY]
        tiny_families.FAMILIES[family] = {**spec, "keys": {**spec["keys"], **SIZES[size]}}
    return tiny_families.make(family, dest, seed=seed)


def write_rows(n: int, seed: int, work: Path) -> tuple[Path, Path]:
    """The instruct rows (ours reads them as a job's dataset) and the same rows as the
    `messages` JSONL Training Hub reads."""
    sys.path[:0] = [str(ROOT)]
    from harness.demo_data import instruct_rows

    rows = instruct_rows(n, seed=seed)
    instruct, messages = work / "rows.jsonl", work / "messages.jsonl"
    with instruct.open("w") as a, messages.open("w") as b:
        for row in rows:
            a.write(json.dumps(row) + "\n")
            chat = json.loads(row["chat_completion_input"])
            chat.append({"role": "assistant", "content": row["expected_answer"]})
            b.write(json.dumps({"messages": chat}) + "\n")
    return instruct, messages


def count_parameters(model_dir: Path) -> int:
    from safetensors import safe_open

    total = 0
    for f in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            for key in st.keys():  # noqa: SIM118 (no __iter__)
                n = 1
                for d in st.get_slice(key).get_shape():
                    n *= d
                total += n
    return total


# ---------------------------------------------------------------- children


def run_child(kind: str, config: dict, env_path: str, timeout: float, log: Path) -> dict:
    """One side in its own process group: its result, or why it has none."""
    work = Path(config["work"])
    cfg = work / f"{config['name']}.config.json"
    out = work / f"{config['name']}.result.json"
    config = {**config, "result": str(out)}
    cfg.write_text(json.dumps(config, indent=2))
    out.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in NO_TRACKING}
    env.update(OFFLINE)
    env["HF_DATASETS_CACHE"] = str(work / "hf-datasets-cache")
    paths = [p for p in env_path.split(os.pathsep) if p]
    if kind == "ours":
        paths = [str(ROOT / "src"), str(ROOT), *paths]
    else:
        env["TESTING"] = "true"  # mini-trainer: SDPA instead of flash-attn
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).strip(os.pathsep)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", kind,
           "--child-config", str(cfg)]  # fmt: skip
    print(f"[{config['name']}] starting (timeout {timeout:.0f} s, log {log})", flush=True)
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env,
                                cwd=str(work), start_new_session=True)  # fmt: skip
        try:
            code = proc.wait(timeout=timeout)
            error = None if code == 0 else f"exited with status {code}"
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            error = f"timed out after {timeout:.0f} s (process group killed)"
    wall = time.perf_counter() - start
    result: dict[str, Any] = {"name": config["name"], "wall_seconds": round(wall, 2)}
    if out.is_file():
        result.update(json.loads(out.read_text()))
    elif error is None:
        error = "exited without writing its result"
    if error:
        result["error"] = result.get("error") or error
        result["log_tail"] = _tail(log, 4000)
        print(f"[{config['name']}] FAILED: {error}\n--- last lines of {log} ---\n"
              f"{result['log_tail']}\n---", flush=True)  # fmt: skip
    else:
        losses = result.get("losses") or []
        print(f"[{config['name']}] done in {wall:.1f} s: {len(losses)} steps, loss "
              f"{losses[0][1] if losses else '?'} -> {losses[-1][1] if losses else '?'}",
              flush=True)  # fmt: skip
    return result


def _kill_group(proc: subprocess.Popen) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=15)
            # torchrun's workers may outlive it in the group: make sure of them too
            if sig == signal.SIGTERM:
                continue
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, chars: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:]


def _versions(names: tuple[str, ...]) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for n in names:
        try:
            found[n] = version(n)
        except PackageNotFoundError:
            found[n] = None
    return found


def _gpu() -> str | None:
    import torch

    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None


def child_ours(cfg: dict) -> dict:
    """Our OSFT through the train component's code (training.steps.train_step)."""
    import torch

    from llama_stack_provider_kfp.boundary.model_source import inspect_model_dir
    from llama_stack_provider_kfp.core.osft_targets import resolve_osft
    from llama_stack_provider_kfp.core.spec import (
        DataSpec,
        EngineChoice,
        JobSpec,
        OptimSpec,
        OSFTSpec,
        TrainSpec,
    )
    from llama_stack_provider_kfp.training.huggingface import osft
    from llama_stack_provider_kfp.training.prepare import prepare
    from llama_stack_provider_kfp.training.steps import train_step

    cuda = cfg["device"] == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("ours: --device cuda but torch.cuda.is_available() is False")
    work, model_dir = Path(cfg["work"]), Path(cfg["model_dir"])
    run = work / cfg["name"]
    model = inspect_model_dir("bench", model_dir)
    targets = resolve_osft([], model.modules, model.is_tied).modules
    spec = JobSpec(
        job_uuid=cfg["name"], engine=EngineChoice(name="huggingface", reason="bench"),
        model=model, data=DataSpec(uri=cfg["instruct"], data_format="instruct"),
        train=TrainSpec(epochs=1, max_steps_per_epoch=cfg["steps"],
                        gradient_accumulation_steps=1, batch_size=cfg["batch_size"],
                        shuffle=True, train_on_input=False, dtype=cfg["dtype"],
                        max_validation_steps=None, max_seq_len=cfg["max_seq_len"],
                        seed=cfg["seed"], device=cfg["device"]),
        lora=None,
        osft=OSFTSpec(unfreeze_rank_ratio=cfg["ratio"], target_modules=targets),
        optim=OptimSpec(type="adamw", lr=cfg["lr"], weight_decay=cfg["weight_decay"],
                        warmup_steps=0),
        output_format="huggingface", output_uri=str(run / "out"),
    )  # fmt: skip
    train, val = str(run / "train.jsonl"), str(run / "val.jsonl")
    run.mkdir(parents=True, exist_ok=True)
    prepare(spec, train, val)

    # The peak up to the end of the SVD, then the training steps' own (as mini-trainer's).
    setup_peak: list[float] = []
    apply = osft.apply

    def measured_apply(*a: Any, **kw: Any) -> Any:
        done = apply(*a, **kw)
        if cuda:
            torch.cuda.synchronize()
            setup_peak.append(torch.cuda.max_memory_allocated() / 2**20)
            torch.cuda.reset_peak_memory_stats()
        return done

    osft.apply = measured_apply  # type: ignore[assignment]
    start = time.perf_counter()
    result = train_step(spec.model_dump_json(), str(model_dir), spec.output_uri, train, val)
    seconds = time.perf_counter() - start
    progress = json.loads((run / "out" / "progress.json").read_text())
    losses = [[int(s), float(v)] for s, v in progress["loss_history"]]
    if len(losses) != cfg["steps"]:
        raise SystemExit(f"ours: {len(losses)} losses recorded for {cfg['steps']} steps")
    train_peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
    return {
        "side": "ours", "dtype": cfg["dtype"], "losses": losses,
        "train_step_seconds": round(seconds, 2),
        "train_loop_seconds": result.get("train_seconds"),
        "setup_peak_mib": round(setup_peak[0], 1) if setup_peak else None,
        "train_peak_mib": round(train_peak, 1) if train_peak is not None else None,
        "peak_memory_mib": round(max([*setup_peak, train_peak or 0.0]), 1) if cuda
        else result.get("peak_memory_mb"),
        "peak_memory_kind": "torch.cuda.max_memory_allocated" if cuda else "max RSS",
        "osft": result.get("osft"), "tokens_per_second": result.get("tokens_per_second"),
        "versions": _versions(OUR_PACKAGES), "gpu": _gpu(),
    }  # fmt: skip


def child_trainhub(cfg: dict) -> dict:
    """Training Hub's osft() (mini-trainer backend), as its users call it."""
    if os.environ.get("TESTING", "").lower() != "true":
        raise SystemExit("trainhub: TESTING=true must be set (flash-attn is not installed)")
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("trainhub: mini-trainer needs CUDA; torch.cuda.is_available() is False")
    try:
        from training_hub import osft
    except ImportError as exc:
        raise SystemExit(
            f"trainhub: training_hub does not import ({exc!r}): are its wheels on PYTHONPATH "
            "(bench/gpu_trainhub.sh gather, then --trainhub-path)?"
        ) from exc
    work = Path(cfg["work"])
    ckpt = work / cfg["name"] / "ckpt"
    start = time.perf_counter()
    failure = None
    try:
        run_trainhub(osft, cfg, work, ckpt)
    except Exception as exc:  # keep the steps it logged before failing
        failure = f"osft() raised {exc!r}"
    seconds = time.perf_counter() - start
    steps, source = trainhub_steps(ckpt)
    if not steps:
        raise SystemExit(f"trainhub: {failure or 'osft() returned'}; no step metrics in {ckpt}")
    peaks = [float(r["peak_memory_usage_GB"]) * 1e9 / 2**20 for r in steps]
    return {
        "side": "trainhub", "train_dtype": cfg["trainhub_train_dtype"],
        "loss_source": source,
        "missing_steps": sorted(set(range(1, cfg["steps"] + 1)) - {int(r["step"]) for r in steps}),
        "losses": [[int(r["step"]), float(r["loss"])] for r in steps],
        "osft_seconds": round(seconds, 2),
        "train_loop_seconds": round(sum(float(r["time_per_batch"]) for r in steps), 2),
        "first_step_seconds": round(float(steps[0]["time_per_batch"]), 3),
        "train_peak_mib": round(max(peaks), 1), "peak_memory_mib": round(max(peaks), 1),
        "peak_memory_kind": "max over steps of mini-trainer's peak_memory_usage_GB "
                            "(torch.cuda.max_memory_allocated, reset each step)",
        "loss_counted_tokens": [int(r["num_loss_counted_tokens"]) for r in steps],
        "grad_norms": [round(float(r["grad_norm"]), 4) for r in steps],
        "versions": _versions(HUB_PACKAGES), "gpu": _gpu(),
        **({"error": failure} if failure else {}),
    }  # fmt: skip


def run_trainhub(osft: Any, cfg: dict, work: Path, ckpt: Path) -> None:
    osft(
        model_path=cfg["model_dir"], data_path=cfg["messages"], ckpt_output_dir=str(ckpt),
        data_output_dir=str(work / cfg["name"] / "data"),
        unfreeze_rank_ratio=float(cfg["ratio"]), effective_batch_size=cfg["batch_size"],
        # one micro-batch a step: every row fits (rows longer than max_seq_len are dropped)
        max_tokens_per_gpu=cfg["batch_size"] * cfg["max_seq_len"],
        max_seq_len=cfg["max_seq_len"], learning_rate=float(cfg["lr"]), seed=cfg["seed"],
        lr_scheduler="cosine", warmup_steps=0, beta1=0.9, beta2=0.999, eps=1e-8,
        weight_decay=float(cfg["weight_decay"]), use_liger=False, nproc_per_node=1,
        checkpoint_at_epoch=False, save_final_checkpoint=True,
        # mini-trainer's TrainingArgs, passed through **kwargs
        training_mode="step", max_steps=cfg["steps"], train_dtype=cfg["trainhub_train_dtype"],
    )  # fmt: skip


ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def trainhub_steps(ckpt: Path) -> tuple[list[dict], str]:
    """mini-trainer's per-step records: its metrics file (written from a daemon thread, so the
    last lines could be missing), completed from the JSON it prints to its log."""
    found: dict[int, dict] = {}
    metrics = ckpt / "training_metrics_0.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict) and "loss" in rec and "step" in rec:
                found[int(rec["step"])] = rec
    source = metrics.name
    log = ckpt / "training_log_node0.log"
    if log.is_file():
        block: list[str] | None = None
        added = 0
        for line in ANSI.sub("", log.read_text(errors="replace")).splitlines():
            if line.rstrip() == "{":
                block = [line]
            elif block is not None:
                block.append(line)
                if line.rstrip() == "}":
                    try:
                        rec = json.loads("\n".join(block))
                    except ValueError:
                        rec = {}
                    block = None
                    if "loss" in rec and "step" in rec and int(rec["step"]) not in found:
                        found[int(rec["step"])] = rec
                        added += 1
        if added:
            source += f" + {added} steps from {log.name}"
    return [found[k] for k in sorted(found)], source


def child_main(kind: str, cfg_path: Path) -> int:
    cfg = json.loads(cfg_path.read_text())
    result = child_ours(cfg) if kind == "ours" else child_trainhub(cfg)
    Path(cfg["result"]).write_text(json.dumps(result, indent=2))
    return 1 if result.get("error") else 0


# ---------------------------------------------------------------- report


def plot(results: dict, path: Path) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"no plot: {exc}"
    runs = [r for r in results["runs"] if r.get("losses")]
    if not runs:
        return "no plot: no run has a loss curve"
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4.2), width_ratios=[3, 2])
    for r in runs:
        ax.plot(*zip(*r["losses"], strict=True), label=_label(r), linewidth=1.4)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss (mean over answer tokens)")
    j = results["job"]
    ax.set_title(f"OSFT, unfreeze_rank_ratio {j['ratio']}, {j['parameters'] / 1e6:.1f}M params, "
                 f"batch {j['batch_size']}, lr {j['lr']}", fontsize=9)  # fmt: skip
    ax.legend(fontsize=8)
    names = [_label(r) for r in runs]
    peaks = [(r.get("train_peak_mib") or 0) / 1024 for r in runs]
    loops = [r.get("train_loop_seconds") or 0 for r in runs]
    ys = range(len(runs))
    bx.barh(ys, peaks, color="tab:blue")
    bx.set_yticks(list(ys), names, fontsize=8)
    bx.set_xlabel("peak GPU memory in the training steps (GiB)")
    for y, (p, s) in enumerate(zip(peaks, loops, strict=True)):
        bx.text(p, y, f" {p:.2f} GiB, {s:.1f} s loop", va="center", fontsize=8)
    bx.set_xlim(0, max([*peaks, 0.1]) * 1.8)
    fig.suptitle(results["machine"].get("gpu") or results["machine"]["platform"], fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return None


def _label(r: dict) -> str:
    if r.get("side") == "trainhub":
        return f"Training Hub osft ({r.get('train_dtype')} weights, bf16 compute)"
    return f"ours ({r.get('dtype')})"


def summary_lines(results: dict) -> list[str]:
    lines = ["| run | first loss | last loss | train loop s | wall s | peak (train) MiB |",
             "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in results["runs"]:
        if r.get("error"):
            lines.append(f"| {r['name']} | failed: {r['error']} | | | | |")
            continue
        losses = r["losses"]
        lines.append(f"| {_label(r)} | {losses[0][1]:.4f} | {losses[-1][1]:.4f} | "
                     f"{r.get('train_loop_seconds')} | {r['wall_seconds']} | "
                     f"{r.get('train_peak_mib') or r.get('peak_memory_mib')} |")  # fmt: skip
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args.child, args.child_config)

    work = args.work or Path(tempfile.mkdtemp(prefix="trainhub-osft-"))
    work.mkdir(parents=True, exist_ok=True)
    (work / "logs").mkdir(exist_ok=True)
    results_path = args.results or (
        RESULTS / "trainhub_osft.json" if args.device == "cuda" else work / "trainhub_osft.json"
    )
    plot_path = args.plot or results_path.with_suffix(".png")

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device here (use --device cpu for the smoke run)",
              file=sys.stderr)  # fmt: skip
        return 2
    print(f"work folder {work}", flush=True)
    start = time.perf_counter()
    model_dir = make_model(args.size, work / "model", args.seed)
    rows = args.steps * args.batch_size  # one pass: each row once on each side
    instruct, messages = write_rows(rows, args.seed, work)
    params = count_parameters(model_dir)
    print(f"model {model_dir} ({args.size}, {params / 1e6:.1f}M parameters), {rows} rows, "
          f"{time.perf_counter() - start:.1f} s", flush=True)  # fmt: skip

    base = {"work": str(work), "model_dir": str(model_dir), "instruct": str(instruct),
            "messages": str(messages), "device": args.device, "steps": args.steps,
            "batch_size": args.batch_size, "max_seq_len": args.max_seq_len, "lr": args.lr,
            "weight_decay": args.weight_decay, "ratio": args.ratio, "seed": args.seed}  # fmt: skip
    gpu = torch.cuda.get_device_name(0) if args.device == "cuda" else None
    runs: list[dict] = []
    results = {
        "what": "our OSFT (training.steps.train_step) against Training Hub's osft() "
                "(mini-trainer), same model, rows, ratio, steps, lr, batch, max_seq_len",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {"platform": f"{platform.machine()}, {os.cpu_count()} cores", "gpu": gpu,
                    "python": platform.python_version()},
        "job": {"model": f"{FAMILY} architecture, sizes {args.size}", "parameters": params,
                "vocab": "tiny BPE (harness/tiny_families.py)", "rows": rows,
                "task": "harness/demo_data.py greetings", "steps": args.steps,
                "batch_size": args.batch_size, "max_seq_len": args.max_seq_len, "lr": args.lr,
                "schedule": "cosine, no warmup", "adamw": "betas 0.9/0.999, eps 1e-8",
                "weight_decay": args.weight_decay, "ratio": args.ratio, "seed": args.seed,
                "device": args.device},
        "trainhub_skipped": args.trainhub_skipped,
        "runs": runs,
    }  # fmt: skip
    results_path.parent.mkdir(parents=True, exist_ok=True)

    # Our first dtype, Training Hub, then our other dtypes; the JSON is rewritten after each,
    # so a run cut short still leaves what finished.
    plan: list[tuple[str, dict, str, float, Path]] = []
    for dtype in args.dtypes:
        name = f"ours-{dtype}"
        plan.append(("ours", {**base, "name": name, "dtype": dtype}, args.ours_path,
                     args.ours_timeout, work / "logs" / f"{name}.log"))  # fmt: skip
    if not args.skip_trainhub:
        cfg = {**base, "name": "trainhub", "trainhub_train_dtype": args.trainhub_train_dtype}
        plan.insert(1, ("trainhub", cfg, args.trainhub_path, args.trainhub_timeout,
                        work / "logs" / "trainhub.log"))  # fmt: skip
    for kind, cfg, path, timeout, log in plan:
        runs.append(run_child(kind, cfg, path, timeout, log))
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    note = plot(results, plot_path)
    print("\n".join(summary_lines(results)))
    print(f"results: {results_path}" + (f"; {note}" if note else f", plot: {plot_path}"))
    if args.trainhub_skipped:
        print(f"Training Hub side skipped: {args.trainhub_skipped}")
    failed = [r["name"] for r in runs if r.get("error")]
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
