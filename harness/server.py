"""Start a real `llama stack run` with this provider on a free loopback port.

Used by the end-to-end tests, the benchmarks and the demo; run.yaml is found at the root of
the repository this file lives in.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]  # harness/ -> repo root
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(
        self, root: Path, env: dict[str, str] | None = None, config: str = "run.yaml"
    ) -> None:
        self.root = root
        self.config = config
        self.work_dir = root / "jobs"
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log = root / "server.log"
        # The caller's own KFP_* settings (a developer's remote cluster, say) never leak into
        # the server under test: only what `env` says.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("KFP_")}
        self.env = {
            **inherited,
            "KFP_WORK_DIR": str(self.work_dir),
            "KFP_STATE_DIR": str(root / "state"),
            "KFP_DEVICE": "cpu",
            **(env or {}),
        }
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [str(BIN / "llama"), "stack", "run", str(ROOT / self.config), "--port",
                str(self.port)]  # fmt: skip

    def start(self) -> Server:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=ROOT,  # run-external-dir.yaml names ./providers.d relative to the cwd
            )
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.base_url}/v1/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"server did not come up:\n{self.log.read_text()[-3000:]}")

    @property
    def jobs_dir(self) -> Path:
        return self.work_dir / "jobs"

    def kill9(self) -> None:
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> Server:
        """Start again on the same work and state directories (on a new port)."""
        self.stop()
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        return self.start()

    def client(self):
        from llama_stack_client import LlamaStackClient

        return LlamaStackClient(base_url=self.base_url, max_retries=0, timeout=120)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def cleanup(self) -> None:
        """Stop the server and every job worker it left (they run in their own sessions, so
        stopping the server alone leaves them training)."""
        self.stop()
        kill_job_workers(self.jobs_dir)


class OpenAIServer(Server):
    """`llama-stack-kfp serve openai --config run.yaml` on a free loopback port."""

    def command(self) -> list[str]:
        return [str(BIN / "llama-stack-kfp"), "serve", "openai", "--config",
                str(ROOT / self.config), "--port", str(self.port)]  # fmt: skip

    def openai(self, api_key: str = "unused"):
        from openai import OpenAI

        return OpenAI(base_url=f"{self.base_url}/v1", api_key=api_key, max_retries=0,
                      timeout=120, _strict_response_validation=True)  # fmt: skip


def kill_job_workers(jobs_dir: Path) -> None:
    """SIGKILL the process group of every worker recorded under `jobs_dir`."""
    if not jobs_dir.is_dir():
        return
    for record in jobs_dir.glob("*/job.json"):
        try:
            handle = json.loads(record.read_text()).get("runner") or {}
            proc = psutil.Process(handle["pid"])
            if abs(proc.create_time() - handle["create_time"]) > 0.5:
                continue  # pid recycled: not ours
            os.killpg(handle["pid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError, TypeError, psutil.Error):
            continue


def job_processes(server: Server, job_uuid: str) -> set[int]:
    """Pids of a job's worker and every process under it (kfp.local tasks included)."""
    record = json.loads((server.jobs_dir / job_uuid / "job.json").read_text())
    pid = record["runner"]["pid"]
    return {pid} | {c.pid for c in psutil.Process(pid).children(recursive=True)}


def any_alive(pids: set[int]) -> bool:
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            pass
    return False
