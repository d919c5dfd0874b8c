"""Request configs from the command line: inline JSON, `@file.json` / `@file.yaml`, then flags.

Flags override what a config states, field by field; nothing else is filled in except what the
API requires and a flag implies (see `training_config`), so a config given whole is sent as is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config the user gave cannot be read: the message says which and why."""


def load(text: str | None, what: str) -> dict[str, Any] | None:
    """`{"n_epochs": 1}` inline, or `@path` to a JSON or YAML file (by its suffix)."""
    if text is None:
        return None
    if text.startswith("@"):
        path = Path(text[1:]).expanduser()
        try:
            raw = path.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"{what}: cannot read {path} ({e.strerror or e})") from None
        is_json = path.suffix.lower() == ".json"
        source = str(path)
    else:
        raw, is_json, source = text, True, "the inline value"
    try:
        data = json.loads(raw) if is_json else yaml.safe_load(raw)
    except (ValueError, yaml.YAMLError) as e:
        kind = "JSON" if is_json else "YAML"
        hint = "" if text.startswith("@") else " (or give a file as @config.yaml)"
        raise ConfigError(f"{what}: {source} is not valid {kind}: {e}{hint}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what}: {source} must hold a mapping, not {type(data).__name__}")
    return data


def _set(target: dict[str, Any], **values: Any) -> dict[str, Any]:
    target.update({k: v for k, v in values.items() if v is not None})
    return target


# What a flag implies for the API's required fields when the config does not state them.
DATA_DEFAULTS = {"batch_size": 1, "shuffle": True}
OPTIMIZER_DEFAULTS = {"optimizer_type": "adamw", "weight_decay": 0.01, "num_warmup_steps": 0}
LORA_DEFAULTS = {
    "type": "LoRA",
    "lora_attn_modules": ["q_proj", "v_proj"],
    "apply_lora_to_mlp": True,
    "apply_lora_to_output": False,
}


def training_config(
    base: dict[str, Any] | None,
    *,
    epochs: int | None = None,
    max_steps_per_epoch: int | None = None,
    gradient_accumulation_steps: int | None = None,
    dtype: str | None = None,
    dataset_id: str | None = None,
    validation_dataset_id: str | None = None,
    data_format: str | None = None,
    default_data_format: str = "instruct",
    batch_size: int | None = None,
    lr: float | None = None,
    optimizer: str | None = None,
    weight_decay: float | None = None,
    warmup_steps: int | None = None,
) -> dict[str, Any]:
    """`base` with the flags applied. `n_epochs` is 1 when nothing says (the API requires it);
    a data or optimizer flag without a `data_config` / `optimizer_config` starts one from
    DATA_DEFAULTS / OPTIMIZER_DEFAULTS."""
    cfg = dict(base or {})
    _set(
        cfg,
        n_epochs=epochs,
        max_steps_per_epoch=max_steps_per_epoch,
        gradient_accumulation_steps=gradient_accumulation_steps,
        dtype=dtype,
    )
    cfg.setdefault("n_epochs", 1)
    data = {
        "dataset_id": dataset_id,
        "validation_dataset_id": validation_dataset_id,
        "data_format": data_format,
        "batch_size": batch_size,
    }
    if any(v is not None for v in data.values()) or cfg.get("data_config"):
        start = cfg.get("data_config") or {**DATA_DEFAULTS, "data_format": default_data_format}
        cfg["data_config"] = _set(dict(start), **data)
    optim = {
        "lr": lr,
        "optimizer_type": optimizer,
        "weight_decay": weight_decay,
        "num_warmup_steps": warmup_steps,
    }
    if any(v is not None for v in optim.values()):
        start = cfg.get("optimizer_config") or OPTIMIZER_DEFAULTS
        cfg["optimizer_config"] = _set(dict(start), **optim)
        if "lr" not in cfg["optimizer_config"]:
            raise ConfigError("optimizer: give --lr too (the API requires a learning rate)")
    return cfg


def lora_config(
    base: dict[str, Any] | None, *, rank: int | None = None, alpha: int | None = None
) -> dict[str, Any] | None:
    """`base` with --lora-rank / --lora-alpha applied; without either, `base` as it is (None:
    the provider trains every parameter). A rank alone starts LoRA from LORA_DEFAULTS with
    alpha = 2 x rank."""
    if rank is None and alpha is None:
        return base
    cfg = dict(base or LORA_DEFAULTS)
    if cfg.get("type", "LoRA") != "LoRA":
        raise ConfigError(f"--lora-rank/--lora-alpha need a LoRA algorithm config, not {cfg}")
    _set(cfg, rank=rank, alpha=alpha)
    if "rank" not in cfg:
        raise ConfigError("LoRA: give --lora-rank too (the API requires a rank)")
    cfg.setdefault("alpha", 2 * cfg["rank"])
    return cfg


def dpo_config(
    base: dict[str, Any] | None, *, beta: float | None = None, loss_type: str | None = None
) -> dict[str, Any]:
    """The DPO algorithm config; the API requires one: beta 0.1, sigmoid loss when unstated."""
    cfg = dict(base or {})
    _set(cfg, beta=beta, loss_type=loss_type)
    cfg.setdefault("beta", 0.1)
    cfg.setdefault("loss_type", "sigmoid")
    return cfg


def missing_data(cfg: dict[str, Any]) -> str | None:
    """What to add when the config names no dataset (the server would answer 400)."""
    if not (cfg.get("data_config") or {}).get("dataset_id"):
        return (
            "no dataset: pass --dataset-id ID (a registered dataset), --data FILE.jsonl, "
            "or a training config with data_config.dataset_id"
        )
    return None
