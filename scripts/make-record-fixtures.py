"""Write the job folders of the release checked out here as test fixtures.

    python scripts/make-record-fixtures.py --out tests/fixtures/records/<release> --prefix <release>

Runs a real server on a tiny model and leaves one completed (with a validation split, so its
checkpoints carry metrics), one failed (a bad row found by prepare-data) and one cancelled
job. Their folders are copied without weights or the kfp.local pipeline root, so a later
release's tests can check that it still lists them with their endings, checkpoints and metrics
(tests/test_record_compat.py). Run it from a checkout of the release whose format changes,
before changing it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from harness.demo_data import DEMO_LORA, instruct_rows, training_config  # noqa: E402
from harness.server import Server  # noqa: E402
from llama_stack_provider_kfp.boundary.data_uri import write_jsonl  # noqa: E402
from llama_stack_provider_kfp.client import cancel_job, job_status, register_jsonl  # noqa: E402

WEIGHTS = {".safetensors", ".pt", ".bin", ".pth", ".model", ".tar", ".gz"}


def _wait(client, job_uuid: str, until: tuple[str, ...], timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = job_status(client, job_uuid)
        if status["status"] in until:
            return status
        time.sleep(0.5)
    raise SystemExit(f"job {job_uuid} did not reach {until}")


def _copy(job_dir: Path, dest: Path) -> None:
    def ignore(folder: str, names: list[str]) -> set[str]:
        drop = {n for n in names if Path(n).suffix in WEIGHTS or n == "kfp"}
        return drop | {n for n in names if n.startswith(".") and n.endswith(".tmp")}

    shutil.copytree(job_dir, dest, ignore=ignore)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    # Job ids are global in a work dir: each release's fixtures get ids of their own.
    ap.add_argument("--prefix", required=True)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="record-fixtures-"))
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make-tiny-model.py"), "--out",
                    str(tmp / "tiny")], check=True, capture_output=True)  # fmt: skip
    model = str(tmp / "tiny" / "hf")
    (tmp / "server").mkdir()
    server = Server(tmp / "server", env={"KFP_VALIDATION_FRACTION": "0.25"}).start()
    try:
        client = server.client()
        good = write_jsonl(instruct_rows(16), tmp / "good.jsonl")
        register_jsonl(client, "good", str(good))
        # A bad row past the submit sample: only prepare-data finds it, and the job fails.
        rows = [*instruct_rows(300), {"chat_completion_input": "not json", "expected_answer": 1}]
        register_jsonl(client, "bad", str(write_jsonl(rows, tmp / "bad.jsonl")))
        sft = client.alpha.post_training.supervised_fine_tune
        common = {"algorithm_config": DEMO_LORA, "hyperparam_search_config": {},
                  "logger_config": {}}  # fmt: skip
        done, failed, cancelled = (f"{args.prefix}-{n}-job" for n in ("completed", "failed",
                                                                       "cancelled"))  # fmt: skip
        short = training_config("good", max_steps_per_epoch=2)
        sft(job_uuid=done, model=model, training_config=short, **common)
        _wait(client, done, ("completed", "failed"))
        sft(
            job_uuid=failed,
            model=model,
            training_config=training_config("bad", n_epochs=1, max_steps_per_epoch=2),
            **common,
        )
        _wait(client, failed, ("completed", "failed"))
        sft(job_uuid=cancelled, model=model, training_config=training_config("good", n_epochs=50),
            **common)  # fmt: skip
        _wait(client, cancelled, ("in_progress",))
        cancel_job(client, cancelled)
        _wait(client, cancelled, ("cancelled",))
        expected = {}
        for job in (done, failed, cancelled):
            status = job_status(client, job)
            expected[job] = {
                "status": status["status"],
                "checkpoints": [c["identifier"] for c in status.get("checkpoints") or []],
                "metrics": [c.get("training_metrics") for c in status.get("checkpoints") or []],
                "error": (status["resources_allocated"].get("error") or {}).get("message"),
            }
            _copy(server.jobs_dir / job, args.out / job)
        (args.out / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
        print(json.dumps(expected, indent=1))
    finally:
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
