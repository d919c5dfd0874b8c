"""A checkpoint or base model as a model transformers loads: where it is, in what layout.

Hugging Face layout is read where it is. A Meta checkpoint (consolidated.00.pth + params.json)
is converted once into a Hugging Face folder in scratch space (torchtune's meta_to_tune and
tune_to_hf, the config the torchtune engine writes for its own Hugging Face exports). The
tokenizer comes from training.evaluation.tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ...boundary import storage
from ...boundary.model_source import arch_from_meta_params
from ...core.locations import parse
from ...core.outputs import ADAPTER, MERGED
from ..io import fetch_model


@dataclass(frozen=True)
class ModelFiles:
    """A model transformers can load: `weights` (config.json + safetensors) and the folder
    its tokenizer files are in (the original folder: converted ones are made later)."""

    weights: Path
    tokenizer: Path
    vocab_size: int | None


def is_meta(folder: Path) -> bool:
    return (folder / "params.json").is_file() and not (folder / "config.json").is_file()


def as_hf(folder: Path, scratch: Path) -> ModelFiles:
    """`folder` in Hugging Face layout: as it is, or converted from Meta layout into scratch."""
    if not is_meta(folder):
        vocab = json.loads((folder / "config.json").read_text()).get("vocab_size")
        return ModelFiles(folder, folder, int(vocab) if vocab else None)
    import torch
    from safetensors.torch import save_file
    from torchtune.models import convert_weights

    from ..torchtune.export import hf_config

    arch = arch_from_meta_params(json.loads((folder / "params.json").read_text()))
    state = torch.load(folder / "consolidated.00.pth", map_location="cpu", weights_only=True)
    if arch.tie_word_embeddings:  # Meta checkpoints of tied models still store it
        state.pop("output.weight", None)
    hf = convert_weights.tune_to_hf(
        convert_weights.meta_to_tune(state),
        num_heads=arch.num_heads,
        num_kv_heads=arch.num_kv_heads,
        dim=arch.embed_dim,
        head_dim=arch.head_dim,
    )
    out = scratch / "hf"
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in hf.items()}, out / "model.safetensors")
    (out / "config.json").write_text(json.dumps(hf_config(arch, "float32"), indent=2))
    return ModelFiles(out, folder, arch.vocab_size)


@dataclass(frozen=True)
class Checkpoint:
    """One epoch folder of the job, fetched: its merged weights and (LoRA) its adapter."""

    location: str
    folder: Path
    epoch: int | None

    @property
    def merged(self) -> Path | None:
        path = self.folder / MERGED
        return path if path.is_dir() and any(path.iterdir()) else None

    @property
    def adapter(self) -> Path | None:
        path = self.folder / ADAPTER
        return path if (path / "adapter_config.json").is_file() else None


def fetch_checkpoint(location: str, scratch: Path) -> Checkpoint:
    """An epoch_<N> folder (local path or s3:// prefix) as a local folder."""
    loc = parse(location)
    name = Path(str(loc.path) if loc.is_local else loc.key.rstrip("/")).name
    folder = loc.path if loc.is_local else storage.download_prefix(loc, scratch / name)
    epoch = int(name.split("_", 1)[1]) if name.startswith("epoch_") and name[6:].isdigit() else None
    return Checkpoint(location, folder, epoch)


def fetch_base(uri: str, scratch: Path) -> Path:
    """The job's base model as a local folder (training.io.fetch_model)."""
    return fetch_model(uri, scratch)
