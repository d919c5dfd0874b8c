"""A Hugging Face cache holding a tiny model under a repo id, laid out as huggingface_hub
lays it out, so Hub code paths run offline (HF_HOME=<home>, HF_HUB_OFFLINE=1)."""

from __future__ import annotations

import shutil
from pathlib import Path


def make_hf_cache(home: Path, repo: str, model_dir: Path) -> dict[str, str]:
    entry = home / "hub" / f"models--{repo.replace('/', '--')}"
    revision = "0" * 40
    shutil.copytree(model_dir, entry / "snapshots" / revision)
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(revision)
    return {"HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
