"""Several ranks on one machine or pod: torchrun launches them, this module tells a rank who it
is and sums what the ranks need to agree on.

The train step stays one process when a job has one device. With N > 1 it starts
`torchrun --standalone --nproc_per_node N` on `training.rank_main`; every rank trains on its
share of each batch (DDP averages the gradients; FSDP also shards the model:
training/huggingface/sharding.py), and rank 0 alone writes progress, metrics,
checkpoints and the result, exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .context import RankJob


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, device: str) -> torch.device:
        """This rank's device: its own GPU, or the CPU every rank shares."""
        if device == "cuda" and self.world > 1:
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return torch.device(device)

    def share(self, items: list[Any]) -> tuple[list[Any], bool]:
        """This rank's rows of a global batch (every world-th), and whether they count. A rank
        left without rows (a short last batch) runs one row weighted zero: DDP and FSDP need
        every rank in every backward."""
        mine = items[self.rank :: self.world]
        return (mine, True) if mine else (items[:1], False)

    def sum(self, *values: float) -> list[float]:
        """Each value summed over the ranks (the values themselves with one rank)."""
        if self.world == 1:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def _collective_device() -> torch.device:
    """NCCL reduces only tensors on this rank's GPU; gloo CPU tensors."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def join_ranks() -> Ranks:
    """Join the process group of the ranks torchrun started (gloo on CPU, NCCL on GPUs) and
    say which one this process is; one rank without torchrun. The only reader of torchrun's
    environment (WORLD_SIZE, RANK, LOCAL_RANK): everything else gets the Ranks it returns."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def launch(ranks: int, job: RankJob, nodes: int = 1) -> dict[str, Any]:
    """Run training.rank_main on `ranks` local ranks; rank 0's result, or the reason the
    first failing rank gave. With `nodes` > 1 this machine is one node of a TrainJob:
    torchrun reads the node count, this node's rank and the master's address from the PET_*
    variables Kubeflow Trainer's torch runtime sets, and nodes other than the first return
    no result."""
    with tempfile.TemporaryDirectory(prefix="ranks-") as tmp:
        job_file = Path(tmp) / "job.json"
        job_file.write_text(job.model_copy(update={"exchange": tmp}).model_dump_json())
        where = ["--standalone"] if nodes == 1 else []
        cmd = [sys.executable, "-m", "torch.distributed.run", *where,
               f"--nproc_per_node={ranks}", "-m", "llama_stack_provider_kfp.training.rank_main",
               str(job_file)]  # fmt: skip
        print(f"train: {ranks} ranks: {' '.join(cmd[1:])}", flush=True)
        code = subprocess.run(cmd, check=False).returncode
        result = Path(tmp) / "result.json"
        if code == 0 and result.is_file():
            return json.loads(result.read_text())
        if code == 0 and nodes > 1:
            return {}  # another node's rank 0 wrote the result
        failures = sorted(Path(tmp).glob("error-rank*.txt"))
        why = failures[0].read_text() if failures else f"torchrun exited with code {code}"
        raise RuntimeError(why)
