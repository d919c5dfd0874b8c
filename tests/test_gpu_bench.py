"""bench/gpu.sh, the GPU benchmark, checked where CI runs: its dry run trains every configuration
scaled down on the CPU and validates what it writes; without CUDA the real run says so and
exits 0 (the benchmark itself needs a GPU machine: bench/gpu.sh's header says how)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from gpu_configs import plan_runs  # noqa: E402  (bench/ is not a package)
from gpu_report import validate  # noqa: E402


def _gpu_sh(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip


def test_dry_run_trains_every_configuration_and_validates_its_json(tmp_path):
    done = _gpu_sh("--dry-run", "--results", str(tmp_path / "r"), "--work",
                   str(tmp_path / "w"), cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "r" / "gpu_train.json").read_text())
    rows = results["runs"]
    planned = plan_runs(["llama-3.2-3b", "llama-3.2-1b", "qwen2.5-1.5b"], ["lora", "full"],
                        [False, True], ["huggingface", "torchtune"])  # fmt: skip
    assert [r["name"] for r in rows] == [r["name"] for r in planned]
    # Both engines, both algorithms, packed and unpacked; torchtune on Llama LoRA only.
    combos = {(r["engine"], r["algorithm"], r["packed"]) for r in rows}
    assert combos == {("huggingface", a, p) for a in ("lora", "full") for p in (False, True)} | {
        ("torchtune", "lora", p) for p in (False, True)
    }
    assert {r["model"] for r in rows if r["engine"] == "torchtune"} == {
        "llama-3.2-3b", "llama-3.2-1b"}  # fmt: skip
    for r in rows:
        assert r["tokens_per_second"] > 0 and r["label_tokens_per_second"] > 0, r
        assert len(r["losses"]) == 2 and all(loss > 0 for loss in r["losses"]), r
        assert "torch" in r["imported"] and "kfp" not in r["imported"], r
    assert validate(results) == []
    table = (tmp_path / "r" / "gpu_train.md").read_text()
    assert sum(line.startswith("| llama") or line.startswith("| qwen")
               for line in table.splitlines()) == len(rows) + 4  # + the engine pairs  # fmt: skip


def test_validate_names_what_is_wrong():
    row = {"name": "x", "model": "m", "algorithm": "lora", "engine": "huggingface",
           "packed": False, "batch_size": 1, "max_seq_len": 64,
           "activation_checkpointing": False, "steps_measured": 1, "tokens_per_second": 10.0,
           "label_tokens_per_second": 5.0, "train_peak_gib": None, "mfu": None,
           "parameters": 100, "losses": [2.0, 1.5], "imported": ["torch"]}  # fmt: skip
    good = {"runs": [row], "planned": 1, "warmup": 1, "steps": 1, "device": "cpu"}
    assert validate(good) == []
    assert validate({**good, "planned": 2}) == ["1 rows for 2 planned runs"]
    failed = {**good, "runs": [{"name": "x", "error": "CUDA out of memory"}]}
    assert validate(failed) == ["x: CUDA out of memory"]
    bad = {**good, "runs": [{**row, "tokens_per_second": 0, "imported": ["torch", "kfp"],
                             "losses": [2.0, float("nan")]}]}  # fmt: skip
    assert validate(bad) == [
        "x: tokens_per_second is 0, not a positive number",
        "x: a loss is not a positive number: [2.0, nan]",
        "x: the training step imported ['kfp']",
    ]
    assert validate({**good, "device": "cuda"}) == ["x: no peak GPU memory"]


def test_without_cuda_the_real_run_says_so_and_exits_0(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is here: bench/gpu.sh would run the benchmark itself")
    results = ROOT / "bench" / "results"
    before = sorted(results.rglob("*"))
    done = _gpu_sh(cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "no CUDA device here" in done.stdout
    assert sorted(results.rglob("*")) == before  # nothing written
