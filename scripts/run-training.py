#!/usr/bin/env python3
"""Fine-tune through a running llama-stack server: register a dataset, submit, follow, report.

    python scripts/run-training.py --model /tmp/tiny/hf                  # toy data, made here
    python scripts/run-training.py --model Llama3.2-1B-Instruct --data train.jsonl --epochs 1

Shows a live progress bar (step, epoch, loss, tokens/s, ETA) read from the job's status and
prints the checkpoints at the end. Exit status: 0 completed, 1 failed or cancelled.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
import uuid
from pathlib import Path

from llama_stack_client import LlamaStackClient
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from harness.demo_data import DEMO_LORA, instruct_rows
from llama_stack_provider_kfp.client import job_status, register_jsonl
from llama_stack_provider_kfp.core.data_uri import write_jsonl


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--base-url", default="http://127.0.0.1:8321")
    ap.add_argument("--model", required=True, help="descriptor, HF repo id, or model directory")
    ap.add_argument("--checkpoint-dir", help="where the base weights are (overrides lookup)")
    ap.add_argument("--data", type=Path, help="JSONL rows; default: generate the toy task")
    ap.add_argument("--rows", type=int, default=64, help="toy rows to generate (no --data)")
    ap.add_argument("--data-format", choices=["instruct", "dialog"], default="instruct")
    ap.add_argument("--validation-data", type=Path, help="JSONL rows for validation")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--max-steps-per-epoch", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--grad-accum", type=int, default=1)
    ap.add_argument("--lr", type=float, default=2e-2)
    ap.add_argument("--optimizer", choices=["adam", "adamw", "sgd"], default="adamw")
    ap.add_argument("--weight-decay", type=float, default=0.0)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--alpha", type=int, default=16)
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32")
    ap.add_argument("--job-id", default=None)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--plot", type=Path, help="loss curve PNG (default: <job id>-loss.png)")
    return ap.parse_args()


def save_loss_plot(history: list, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps, losses = zip(*history, strict=True)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, losses, marker=".", linewidth=1)
    ax.set(xlabel="optimizer step", ylabel="training loss", title=title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def main() -> int:
    args = parse_args()
    for noisy in ("httpx", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    console = Console(stderr=True)
    client = LlamaStackClient(base_url=args.base_url)
    job_id = args.job_id or f"sft-{uuid.uuid4().hex[:8]}"

    data = args.data
    if data is None:
        data = write_jsonl(
            instruct_rows(args.rows), Path(tempfile.mkdtemp(prefix="kfp-demo-")) / "train.jsonl"
        )
        console.print(f"toy dataset: {args.rows} rows in {data}")
    register_jsonl(client, f"{job_id}-train", str(data.resolve()))
    data_config = {
        "dataset_id": f"{job_id}-train",
        "batch_size": args.batch_size,
        "shuffle": True,
        "data_format": args.data_format,
    }
    if args.validation_data:
        register_jsonl(client, f"{job_id}-val", str(args.validation_data.resolve()))
        data_config["validation_dataset_id"] = f"{job_id}-val"

    started = time.monotonic()
    client.alpha.post_training.supervised_fine_tune(
        job_uuid=job_id,
        model=args.model,
        checkpoint_dir=args.checkpoint_dir,
        algorithm_config={**DEMO_LORA, "rank": args.rank, "alpha": args.alpha},
        training_config={
            "n_epochs": args.epochs,
            "max_steps_per_epoch": args.max_steps_per_epoch,
            "gradient_accumulation_steps": args.grad_accum,
            "dtype": args.dtype,
            "data_config": data_config,
            "optimizer_config": {
                "optimizer_type": args.optimizer,
                "lr": args.lr,
                "weight_decay": args.weight_decay,
                "num_warmup_steps": args.warmup,
            },
        },
        hyperparam_search_config={},
        logger_config={},
    )
    console.print(f"submitted job [bold]{job_id}[/bold]")

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("scheduled", total=None, info="")
        while True:
            status = job_status(client, job_id)
            res = status.get("resources_allocated") or {}
            p = res.get("progress") or {}
            if p.get("total_steps"):
                loss = f"loss {p['loss']:.4f}" if p.get("loss") is not None else ""
                tps = f"{p['tokens_per_second']:.0f} tok/s" if p.get("tokens_per_second") else ""
                eta = f"eta {p['eta_seconds']:.0f}s" if p.get("eta_seconds") is not None else ""
                bar.update(
                    task,
                    total=p["total_steps"],
                    completed=p.get("step", 0),
                    description=f"epoch {p.get('epoch', 0)}/{p.get('total_epochs')}",
                    info=" ".join(x for x in (loss, tps, eta) if x),
                )
            else:
                bar.update(task, description=status["status"])
            if status["status"] in ("completed", "failed", "cancelled"):
                break
            if time.monotonic() - started > args.timeout:
                console.print(f"gave up after {args.timeout:.0f}s; the job keeps running")
                return 1
            time.sleep(1.0)

    wall = time.monotonic() - started
    history = (status.get("resources_allocated") or {}).get("loss_history") or []
    if history:
        plot = args.plot or Path(f"{job_id}-loss.png")
        save_loss_plot(history, plot, job_id)
        console.print(f"loss curve: {plot}")
    console.print(f"job {job_id}: [bold]{status['status']}[/bold] after {wall:.1f}s")
    if status["status"] != "completed":
        err = (status.get("resources_allocated") or {}).get("error") or {}
        console.print(f"[red]{err.get('message', 'no reason recorded')}[/red]")
        for line in err.get("log_tail", [])[-15:]:
            console.print(f"  {line}", markup=False)
        return 1
    result = (status.get("resources_allocated") or {}).get("result") or {}
    for ckpt in status.get("checkpoints", []):
        m = ckpt.get("training_metrics") or {}
        extra = f"  val_loss {m['validation_loss']:.4f}" if m else ""
        print(f"checkpoint epoch {ckpt['epoch']}: {ckpt['path']}{extra}")
    print(
        json.dumps(
            {
                "job_uuid": job_id,
                "wall_seconds": round(wall, 2),
                "first_loss": result.get("first_loss"),
                "final_loss": result.get("final_loss"),
                "tokens_per_second": result.get("tokens_per_second"),
                "train_rows": result.get("train_rows"),
                "samples_seen": result.get("samples_seen"),
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
