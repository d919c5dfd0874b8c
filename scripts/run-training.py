#!/usr/bin/env python3
"""Fine-tune through a running llama-stack server with the toy dataset: the demo's driver.

    python scripts/run-training.py --model /tmp/tiny/hf                  # toy data, made here
    python scripts/run-training.py --model Llama3.2-1B-Instruct --data train.jsonl --epochs 1

A thin wrapper over the `llama-stack-kfp` command line (llama_stack_provider_kfp.cli): it
makes the toy rows when no --data is given, then runs `post_training supervised_fine_tune`,
`watch` (live bar: epoch, step, loss, tokens/s, ETA; checkpoints at the end) and `plot`.
Exit status as `llama-stack-kfp post_training watch`: 0 completed, 1 failed, 2 cancelled,
3 still running at --timeout, 4 the server could not be reached or refused the request.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import uuid
from pathlib import Path

from harness.demo_data import DEMO_LORA, instruct_rows
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl
from llama_stack_provider_kfp.cli.main import main as cli


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
    ap.add_argument("--rank", type=int, default=DEMO_LORA["rank"])
    ap.add_argument("--alpha", type=int, default=DEMO_LORA["alpha"])
    ap.add_argument("--dtype", choices=["bf16", "fp32"], default="fp32")
    ap.add_argument("--job-id", default=None)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--plot", type=Path, help="loss curve PNG (default: <job id>-loss.png)")
    ap.add_argument(
        "--validation-fraction",
        type=float,
        default=0.1,
        help="held-out share of the rows (no --validation-data), evaluated after "
        "training on the base and the tuned model; 0: no evaluation",
    )
    ap.add_argument(
        "--register",
        metavar="MLFLOW_URI",
        help="register the tuned model in this MLflow registry (an http(s) tracking "
        "server, or sqlite:///<file> for a local store)",
    )
    return ap.parse_args()


def main() -> int:
    args = parse_args()
    job = args.job_id or f"sft-{uuid.uuid4().hex[:8]}"
    data = args.data
    if data is None:
        tmp = Path(tempfile.mkdtemp(prefix="kfp-demo-"))
        data = write_jsonl(instruct_rows(args.rows), tmp / "train.jsonl")
        print(f"toy dataset: {args.rows} rows in {data}", file=sys.stderr)
    server = ["--endpoint", args.base_url, "post_training"]
    submit = [
        *server, "supervised_fine_tune", "--job-uuid", job, "--model", args.model,
        "--data", str(data), "--data-format", args.data_format,
        "--epochs", str(args.epochs), "--max-steps-per-epoch", str(args.max_steps_per_epoch),
        "--batch-size", str(args.batch_size), "--grad-accum", str(args.grad_accum),
        "--lr", str(args.lr), "--optimizer", args.optimizer,
        "--weight-decay", str(args.weight_decay), "--warmup-steps", str(args.warmup),
        "--lora-rank", str(args.rank), "--lora-alpha", str(args.alpha), "--dtype", args.dtype,
    ]  # fmt: skip
    if args.checkpoint_dir:
        submit += ["--checkpoint-dir", args.checkpoint_dir]
    if args.validation_data:
        submit += ["--validation-data", str(args.validation_data)]
    elif args.validation_fraction:
        submit += ["--validation-fraction", str(args.validation_fraction)]
    if args.validation_data or args.validation_fraction:
        # Base and tuned on the held-out rows, side by side; a few answers of each to read.
        submit += ["--evaluate"]
    if args.register:
        submit += ["--register", "mlflow", "--registry-uri", args.register]
    if code := cli(submit):
        return code
    code = cli([*server, "watch", "--job-uuid", job, "--timeout", str(args.timeout)])
    if code == 0:
        cli([*server, "plot", "--job-uuid", job, "--out", str(args.plot or f"{job}-loss.png")])
    return code


if __name__ == "__main__":
    sys.exit(main())
