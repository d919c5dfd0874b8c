"""core/ is pure: no file, S3 or network access, and none of the libraries that do it
(boundary/ holds that). The one exception is the process's own clock: core.phases reads this
process's start time from /proc/self/stat, as the kernel counts it."""

from __future__ import annotations

import ast
from pathlib import Path

import llama_stack_provider_kfp.core as core

# Parsing in memory (json, csv over io.StringIO, yaml, pyarrow over bytes) is pure.
IO_MODULES = {"os", "shutil", "tempfile", "tarfile", "socket", "subprocess", "glob",
              "urllib.request", "http", "boto3", "botocore", "httpx", "urllib3", "requests",
              "huggingface_hub", "psutil", "datasets", "fsspec", "mlflow"}  # fmt: skip
IO_CALLS = {"open", "read_text", "write_text", "read_bytes", "write_bytes", "mkdir", "unlink",
            "iterdir", "glob", "rglob", "exists", "is_file", "is_dir", "stat", "touch",
            "rename", "rmdir", "chmod"}  # fmt: skip
# The process's own start time: os.sysconf and open("/proc/self/stat").
ALLOWED = {("phases.py", "os"), ("phases.py", "open")}


def _found(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        elif isinstance(node, ast.Call):
            f = node.func
            name = getattr(f, "id", None) or getattr(f, "attr", "")
            if name in IO_CALLS:
                found.add(name)
            continue
        else:
            continue
        for name in names:
            if name in IO_MODULES or name.split(".")[0] in IO_MODULES - {"urllib"}:
                found.add(name.split(".")[0] if name.split(".")[0] != "urllib" else name)
    return found


def test_core_reads_and_writes_nothing():
    modules = sorted(Path(core.__file__).parent.glob("*.py"))
    assert len(modules) > 10
    offenders = {
        f"{path.name}: {what}"
        for path in modules
        for what in _found(path)
        if (path.name, what) not in ALLOWED
    }
    assert not offenders, "core/ must stay pure; move the I/O to boundary/"


def test_the_scan_sees_io():
    """The scan itself: it finds what boundary/ does (else the test above proves nothing)."""
    boundary = Path(core.__file__).parent.parent / "boundary"
    seen = set().union(*(_found(p) for p in boundary.glob("*.py")))
    assert {"open", "is_file", "os", "boto3", "socket"} <= seen
