"""Find a model's weights on disk and read its architecture, without importing torch.

Accepts the two layouts users have: Meta (`params.json`, `consolidated.00.pth`,
`tokenizer.model`) and Hugging Face (`config.json`, `*.safetensors`,
`original/tokenizer.model`). Any Llama-3-architecture size works because the
dimensions come from the files, not from a table of known models.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..core import hub_errors
from ..core.errors import InvalidRequest
from ..core.locations import Location, is_hf_repo_id
from ..core.lora_targets import module_paths
from ..core.spec import ModelArch, ModelSpec
from . import s3_errors, storage

LLAMA3_VOCAB = 128256
# A Meta checkpoint's matrices, named as the Hugging Face layout names them (LoRA targets).
LLAMA_MODULES = [
    "embed_tokens", "lm_head", "mlp.down_proj", "mlp.gate_proj", "mlp.up_proj",
    "self_attn.k_proj", "self_attn.o_proj", "self_attn.q_proj", "self_attn.v_proj",
]  # fmt: skip


class ModelError(InvalidRequest):
    """A model that cannot be used; the message says what to change."""


def _meta_intermediate_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    # Same rule as Meta's reference model (and torchtune's scale_hidden_dim_for_mlp).
    hidden = int(8 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * math.ceil(hidden / multiple_of)


def arch_from_meta_params(params: dict) -> ModelArch:
    dim = int(params["dim"])
    use_scaled_rope = bool(params.get("use_scaled_rope", False))
    # params.json states neither tying nor the RoPE factor. Published Llama 3.2 1B/3B
    # (dim <= 3072) are tied with factor 32; Llama 3.1 8B+ untied with factor 8.
    # Optional explicit keys win, so converted or custom checkpoints can say so.
    tied = bool(params.get("tie_word_embeddings", use_scaled_rope and dim <= 3072))
    factor = params.get("rope_scale_factor")
    if factor is None and use_scaled_rope:
        factor = 32.0 if tied else 8.0
    return ModelArch(
        vocab_size=int(params["vocab_size"]),
        num_layers=int(params["n_layers"]),
        num_heads=int(params["n_heads"]),
        num_kv_heads=int(params.get("n_kv_heads") or params["n_heads"]),
        embed_dim=dim,
        intermediate_dim=int(params["hidden_dim"])
        if params.get("hidden_dim")
        else _meta_intermediate_dim(
            dim, int(params.get("multiple_of", 256)), params.get("ffn_dim_multiplier")
        ),
        norm_eps=float(params.get("norm_eps", 1e-5)),
        rope_base=float(params.get("rope_theta", 500000.0)),
        rope_scale_factor=float(factor) if factor is not None else None,
        tie_word_embeddings=tied,
    )


def arch_from_hf_config(cfg: dict) -> ModelArch:
    if cfg.get("model_type") != "llama":
        raise ModelError(
            f"config.json has model_type={cfg.get('model_type')!r}; only Llama-3-architecture "
            "models (model_type 'llama') are supported"
        )
    # transformers < 5 writes rope_theta + rope_scaling; 5.x writes rope_parameters.
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type not in ("default", "llama3"):
        raise ModelError(f"RoPE type {rope_type!r} is not supported (use 'default' or 'llama3')")
    factor = rope.get("factor") if rope_type == "llama3" else None
    rope_base = rope.get("rope_theta", cfg.get("rope_theta", 500000.0))
    heads = int(cfg["num_attention_heads"])
    return ModelArch(
        vocab_size=int(cfg["vocab_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=heads,
        num_kv_heads=int(cfg.get("num_key_value_heads") or heads),
        embed_dim=int(cfg["hidden_size"]),
        intermediate_dim=int(cfg["intermediate_size"]),
        norm_eps=float(cfg.get("rms_norm_eps", 1e-5)),
        rope_base=float(rope_base),
        rope_scale_factor=float(factor) if factor is not None else None,
        tie_word_embeddings=bool(cfg.get("tie_word_embeddings", False)),
    )


def _check_arch(arch: ModelArch, where: Path | str) -> None:
    if arch.embed_dim % arch.num_heads or arch.num_heads % arch.num_kv_heads:
        raise ModelError(
            f"{where}: hidden size {arch.embed_dim}, {arch.num_heads} heads and "
            f"{arch.num_kv_heads} KV heads do not divide evenly"
        )


@dataclass(frozen=True)
class _Reader:
    """How to look inside a model folder wherever it is (local, S3 prefix)."""

    load: Callable[[str], Any]  # a JSON file
    modules: Callable[[list[str]], list[str]]  # module paths of these weight files
    is_tiktoken: Callable[[str], bool]  # is this tokenizer.model a tiktoken file


_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/=]+ \d+\r?\n")


def _local_reader(path: Path) -> _Reader:
    def modules(files: list[str]) -> list[str]:
        names: list[str] = []
        shapes: dict[str, list[int]] = {}
        for f in files:
            header = _safetensors_header(path / f)
            names += [k for k in header if k != "__metadata__"]
            shapes.update({k: v.get("shape", []) for k, v in header.items() if k != "__metadata__"})
        return module_paths(names, shapes)

    def is_tiktoken(name: str) -> bool:
        with (path / name).open("rb") as fh:
            return bool(_TIKTOKEN_LINE.match(fh.read(256)))

    return _Reader(lambda n: _json(path / n, (path / n).read_bytes()), modules, is_tiktoken)


def _json(where: Path | str, body: bytes) -> Any:
    """A model file's JSON; a damaged one is the caller's to replace, named."""
    try:
        return json.loads(body)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise ModelError(f"{where} is damaged: not valid JSON ({e}); restore the file or name "
                         "another checkpoint") from None  # fmt: skip


def _safetensors_header(file: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (names, dtypes, shapes), read without torch; a
    file shorter than its header says (an interrupted copy) is named as truncated."""
    with file.open("rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        if not 0 < size < 100_000_000:
            raise ModelError(f"{file} is not a safetensors file")
        raw = fh.read(size)
    if len(raw) < size:
        raise ModelError(f"{file} is truncated: its header is cut off; copy it again")
    header = _json(file, raw)
    if not isinstance(header, dict):
        raise ModelError(f"{file} is not a safetensors file")
    ends = [v["data_offsets"][1] for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict) and "data_offsets" in v]  # fmt: skip
    need, have = 8 + size + max(ends, default=0), file.stat().st_size
    if have < need:
        raise ModelError(f"{file} is truncated: its header describes {need} bytes and the file "
                         f"holds {have}; copy it again")  # fmt: skip
    return header


def inspect_model_dir(name: str, path: Path) -> ModelSpec:
    """Read a model directory in either layout; raise ModelError naming what is missing."""
    if not path.is_dir():
        raise ModelError(f"model directory {path} does not exist")
    names = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    return _inspect(name, str(path), names, _local_reader(path))


def _inspect(name: str, location: str, names: set[str], reader: _Reader) -> ModelSpec:
    """Recognize a layout from a folder's file names."""
    try:
        if "config.json" in names:
            return _inspect_hf(name, location, names, reader)
        if "params.json" in names:
            return _inspect_meta(name, location, names, reader.load("params.json"))
    except (KeyError, TypeError, ValueError, OSError) as e:
        if isinstance(e, ModelError):
            raise
        raise ModelError(f"{location}: unreadable model files ({e!r})") from e
    raise ModelError(
        f"{location} holds neither a Hugging Face model (config.json + *.safetensors) nor a "
        "Meta checkpoint (params.json + consolidated.00.pth)"
    )


def _inspect_meta(name: str, location: str, names: set[str], params: dict) -> ModelSpec:
    shards = sorted(n for n in names if re.fullmatch(r"consolidated\.\d+\.pth", n))
    if not shards:
        raise ModelError(f"{location}: params.json found but no consolidated.00.pth weights")
    if len(shards) > 1:
        raise ModelError(
            f"{location}: {len(shards)} model-parallel shards; only single-file Meta "
            "checkpoints are supported (use the Hugging Face layout for larger models)"
        )
    if "tokenizer.model" not in names:
        raise ModelError(f"{location}: tokenizer.model is missing")
    arch = arch_from_meta_params(params)
    _check_arch(arch, location)
    return ModelSpec(name=name, path=location, layout="meta", checkpoint_files=shards,
                     tokenizer_file="tokenizer.model", tied=arch.tie_word_embeddings,
                     modules=LLAMA_MODULES, arch=arch)  # fmt: skip


# When config.json does not say, the family's own default (transformers' config classes).
_TIED_BY_DEFAULT = frozenset({"gpt2", "gemma", "gemma2", "gemma3_text", "gpt_neo", "gptj", "opt"})
_HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")


def _inspect_hf(name: str, location: str, names: set[str], reader: _Reader) -> ModelSpec:
    config = reader.load("config.json")
    files = sorted(n for n in names if "/" not in n and n.endswith(".safetensors"))
    if not files:
        raise ModelError(f"{location}: config.json found but no *.safetensors weights")
    family = str(config.get("model_type") or "")
    if not family:
        raise ModelError(f"{location}: config.json has no model_type")
    archs = config.get("architectures") or []
    if archs and not any(str(a).endswith(("ForCausalLM", "LMHeadModel")) for a in archs):
        raise ModelError(
            f"{location}: {archs} is not a causal language model; fine-tuning needs a model "
            "that AutoModelForCausalLM loads (architectures ending in ForCausalLM)"
        )
    tiktoken = next(
        (t for t in ("original/tokenizer.model", "tokenizer.model")
         if t in names and family == "llama" and reader.is_tiktoken(t)),
        "",
    )  # fmt: skip
    hf_tokenizer = any(t in names for t in _HF_TOKENIZER_FILES)
    if not tiktoken and not hf_tokenizer:
        raise ModelError(
            f"{location}: no tokenizer: expected tokenizer.json / tokenizer_config.json (or, for "
            "Llama 3, the tiktoken original/tokenizer.model)"
        )
    arch = None
    if family == "llama" and tiktoken:
        try:  # what torchtune can build; other Llama variants train on the HF engine
            arch = arch_from_hf_config(config)
            _check_arch(arch, location)
        except (ModelError, KeyError, TypeError, ValueError):
            arch = None
    tied = bool(config.get("tie_word_embeddings", family in _TIED_BY_DEFAULT))
    return ModelSpec(name=name, family=family, path=location, layout="huggingface",
                     checkpoint_files=files, tokenizer_file=tiktoken, hf_tokenizer=hf_tokenizer,
                     tied=tied, modules=reader.modules(files), arch=arch)  # fmt: skip


def inspect_s3_model(name: str, loc: Location, s3: Any = None) -> ModelSpec:
    """A model in S3: a prefix (listed) or a gzip tarball (its config read from the stream;
    the train step checks the files once extracted). Nothing there is the caller's ModelError;
    a denied or failed S3 call is Refused / Unavailable, never theirs."""
    try:
        if loc.key.endswith((".tar.gz", ".tgz")):
            return _inspect_s3_tarball(name, loc, s3)
        names = set(storage.list_keys(loc, s3))
    except s3_errors.NoSuchBucket:
        raise ModelError(f"{loc}: bucket {loc.root!r} does not exist") from None
    if not names:
        raise ModelError(f"nothing found under {loc}/")

    def load(n: str) -> Any:
        body = storage.read_bytes(loc.join(n), s3)
        if body is None:
            raise ModelError(f"{loc.join(n)} was listed but is gone")
        return _json(str(loc.join(n)), body)

    reader = _Reader(
        load,
        lambda _files: (
            _index_modules(load("model.safetensors.index.json"))
            if "model.safetensors.index.json" in names
            else []
        ),  # unknown until the step reads the weights
        lambda n: n == "original/tokenizer.model",  # Llama 3 repos ship tiktoken there
    )
    return _inspect(name, str(loc), names, reader)


def _index_modules(index: Any) -> list[str]:
    weight_map = index.get("weight_map", {}) if isinstance(index, dict) else {}
    return module_paths(list(weight_map))


def pvc_model(name: str, loc: Location) -> ModelSpec:
    """Weights on a PersistentVolumeClaim. The server cannot read the volume, so the layout
    and architecture are read by the train step once it is mounted."""
    return ModelSpec(
        name=name, path=str(loc), layout=None, checkpoint_files=[], tokenizer_file="", arch=None
    )


def hub_model(name: str, repo: str) -> ModelSpec:
    """A Hugging Face Hub repo, downloaded inside the pod (HF_TOKEN from a Secret). Its
    config.json is read here, from the local cache or the Hub (HF_TOKEN from this process's
    environment), so bad ids and unsupported architectures fail at submit."""
    if not is_hf_repo_id(repo):
        raise ModelError(
            f"model {name!r} is not an s3:// or pvc:// location nor a Hugging Face repo id"
        )
    try:
        from huggingface_hub import hf_hub_download

        path = hf_hub_download(repo, "config.json")
    except Exception as e:
        failed = hub_errors.upstream(e, f"reading config.json of {repo!r}")
        if failed is not None:  # the Hub down or refusing is not the caller's mistake
            raise failed from None
        raise ModelError(
            f"cannot read config.json of Hugging Face repo {repo!r} ({type(e).__name__}); "
            "check the id (private repos need HF_TOKEN), use a model in the server's Hugging "
            "Face cache when it is offline, or upload the weights to S3"
        ) from None
    try:
        config = json.loads(Path(path).read_text())
    except ValueError as e:
        raise ModelError(f"{repo}: unreadable config.json ({e!r})") from None
    return config_only_model(name, f"hf://{repo}", config)


def config_only_model(name: str, location: str, config: dict) -> ModelSpec:
    """A Hugging Face model known by its config.json alone (Hub repo, S3 tarball): its files
    are read by the train step. A Llama with Llama 3's 128256-token vocabulary is taken to ship
    the tiktoken original/tokenizer.model, as Meta's repositories do."""
    family = str(config.get("model_type") or "")
    if not family:
        raise ModelError(f"{location}: config.json has no model_type")
    arch = None
    if family == "llama" and config.get("vocab_size") == LLAMA3_VOCAB:
        try:
            arch = arch_from_hf_config(config)
            _check_arch(arch, location)
        except (ModelError, KeyError, TypeError, ValueError):
            arch = None
    return ModelSpec(name=name, family=family, path=location, layout="huggingface",
                     checkpoint_files=[], tokenizer_file="original/tokenizer.model" if arch else "",
                     hf_tokenizer=True,
                     tied=bool(config.get("tie_word_embeddings", family in _TIED_BY_DEFAULT)),
                     arch=arch)  # fmt: skip


def _inspect_s3_tarball(name: str, loc: Location, s3: Any = None) -> ModelSpec:
    import tarfile

    uri = str(loc)
    body = storage.stream(loc, s3)
    if body is None:
        raise ModelError(f"no object {uri}; upload the weights with scripts/upload-model.py")
    try:
        with contextlib.closing(body), tarfile.open(fileobj=body, mode="r|gz") as tar:
            for member in tar:  # upload-model.py puts the config first
                extracted = tar.extractfile(member)
                if member.name in ("config.json", "params.json") and extracted is not None:
                    config = json.load(extracted)
                    break
            else:
                raise ModelError(f"{uri}: no config.json or params.json in the archive")
    except ModelError:
        raise
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:  # S3 failures are none of these
        raise ModelError(f"{uri} is not a gzip tarball of a model ({e!r})") from None
    if member.name == "config.json":
        return config_only_model(name, uri, config)
    arch = arch_from_meta_params(config)
    _check_arch(arch, uri)
    return ModelSpec(name=name, path=uri, layout="meta", checkpoint_files=[],  # once extracted
                     tokenizer_file="tokenizer.model", tied=arch.tie_word_embeddings,
                     modules=LLAMA_MODULES, arch=arch)  # fmt: skip


def _hf_cache_dir(repo_id: str) -> Path | None:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import LocalEntryNotFoundError
    except ImportError:  # pragma: no cover - huggingface_hub comes with datasets
        return None
    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        return None


def resolve_model(
    model: str, checkpoint_dir: str | None, model_dirs: list[Path], hf_repo: str | None = None
) -> ModelSpec:
    """Turn a request's `model` + `checkpoint_dir` into a ModelSpec.

    Order: checkpoint_dir; `model` as a local directory; `<model_dirs>/<model>`; the local
    Hugging Face cache (for a repo id, or the repo a llama-stack descriptor maps to).
    """
    if checkpoint_dir:
        return inspect_model_dir(model, Path(checkpoint_dir).expanduser())
    as_path = Path(model).expanduser()
    if as_path.is_absolute() or model.startswith("."):
        return inspect_model_dir(model, as_path)
    tried: list[str] = []
    if "/" not in model:
        for d in model_dirs:
            candidate = d / model
            tried.append(str(candidate))
            if candidate.is_dir():
                return inspect_model_dir(model, candidate)
    # The repo a descriptor maps to first, then the name itself as a repo id.
    for repo in dict.fromkeys(r for r in (hf_repo, model) if r and is_hf_repo_id(r)):
        tried.append(f"Hugging Face cache for {repo}")
        cached = _hf_cache_dir(repo)
        if cached is not None:
            return inspect_model_dir(model, cached)
    if not tried:
        raise ModelError(
            f"model {model!r} is not a directory, a llama-stack descriptor or a Hugging Face "
            "repo id"
        )
    raise ModelError(
        f"weights for model {model!r} not found (looked in: {', '.join(tried)}). Pass "
        "checkpoint_dir=<directory with the weights>, or download them first "
        "(`llama model download` or `hf download <repo>`)"
    )
