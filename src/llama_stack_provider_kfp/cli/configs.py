"""Request configs from the command line: inline JSON, `@file.json` / `@file.yaml`, then flags.

Flags override what a config states, field by field; nothing else is filled in except what the
API requires and a flag implies (see `training_config`), so a config given whole is sent as is.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from ..core.mappings import deep_merge


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


# hyperparam_search_config["kfp"]: the provider-config settings a request overrides for its
# own job (DESIGN.md "Per-request extensions"); the server refuses other keys.
EXTENSION = "kfp"
EXTENSION_KEYS = ("evaluation", "registry", "validation_fraction", "max_rows", "stages",
                  "algorithm", "osft", "max_grad_norm")  # fmt: skip
STAGES = ("train", "evaluate", "register")


def name_list(text: str | None) -> list[str] | None:
    """`--osft-modules q_proj,v_proj` as a list; None when not given."""
    if text is None:
        return None
    return [part.strip() for part in text.split(",") if part.strip()]


def stage_list(text: str | None) -> list[str] | None:
    """`--stages train,evaluate,register` as the list the request sends (in the order given;
    the server runs them in pipeline order)."""
    if text is None:
        return None
    names = [part.strip() for part in text.split(",") if part.strip()]
    if not names:
        raise ConfigError(f"--stages: name one or more of {', '.join(STAGES)}")
    for name in names:
        if name == "prepare-data":
            raise ConfigError("--stages: prepare-data always runs; name the stages after it")
        if name not in STAGES:
            raise ConfigError(f"--stages: unknown stage {name!r}; the stages are "
                              f"{', '.join(STAGES)}")  # fmt: skip
    return names


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a mapping, not {type(value).__name__} ({value!r})")
    return value


def hyperparam_search_config(
    base: dict[str, Any] | None,
    *,
    evaluation: dict[str, Any] | None = None,
    evaluate: bool | None = None,
    eval_tasks: Sequence[str] = (),
    eval_task_files: Sequence[str] = (),
    registry: dict[str, Any] | None = None,
    register: str | None = None,
    registry_uri: str | None = None,
    validation_fraction: float | None = None,
    max_rows: int | None = None,
    stages: list[str] | None = None,
    algorithm: str | None = None,
    osft_ratio: float | None = None,
    osft_modules: list[str] | None = None,
    max_grad_norm: float | None = None,
) -> dict[str, Any]:
    """The request's `hyperparam_search_config`: `base` (--hyperparam-search-config) with the
    flags merged into its "kfp" extension, field by field: --evaluation / --registry over the
    extension's own evaluation / registry, then the shorthands over those (--evaluate,
    --eval-task, --eval-task-file; --register, --registry-uri), then --validation-fraction,
    --max-rows, --stages, --max-grad-norm, --algorithm; --osft-ratio / --osft-modules into its
    osft (and algorithm osft unless one is named). --eval-task / --eval-task-file replace the task
    lists, and turn the evaluation on unless --no-evaluate or a config states `enabled`.
    Without flags: `base` as it is ({} when none); the "kfp" key only when something is set
    in it."""
    cfg = dict(base or {})
    misplaced = sorted(set(cfg) & set(EXTENSION_KEYS))
    if misplaced:
        raise ConfigError(
            f"--hyperparam-search-config: {', '.join(misplaced)} belong(s) under "
            f'"{EXTENSION}" (e.g. {{"{EXTENSION}": {{"{misplaced[0]}": ...}}}}); the server '
            f'reads only hyperparam_search_config["{EXTENSION}"]'
        )
    ext = dict(_mapping(cfg.get(EXTENSION), f'--hyperparam-search-config: "{EXTENSION}"'))
    where = f'--hyperparam-search-config: "{EXTENSION}".'
    if evaluation is not None or evaluate is not None or eval_tasks or eval_task_files:
        ev = deep_merge(_mapping(ext.get("evaluation"), f"{where}evaluation"), evaluation or {})
        if eval_tasks:
            ev["tasks"] = list(eval_tasks)
        if eval_task_files:
            ev["task_files"] = list(eval_task_files)
        if evaluate is not None:
            ev["enabled"] = evaluate
        elif (eval_tasks or eval_task_files) and "enabled" not in ev:
            ev["enabled"] = True
        ext["evaluation"] = ev
    if registry is not None or register is not None or registry_uri is not None:
        reg = deep_merge(_mapping(ext.get("registry"), f"{where}registry"), registry or {})
        _set(reg, kind=register, uri=registry_uri)
        ext["registry"] = reg
    _set(
        ext,
        validation_fraction=validation_fraction,
        max_rows=max_rows,
        stages=stages,
        max_grad_norm=max_grad_norm,
    )
    if osft_ratio is not None or osft_modules:
        osft = dict(_mapping(ext.get("osft"), f"{where}osft"))
        _set(osft, unfreeze_rank_ratio=osft_ratio, target_modules=osft_modules or None)
        ext["osft"] = osft
        ext.setdefault("algorithm", "osft")
    _set(ext, algorithm=algorithm)
    if ext:
        cfg[EXTENSION] = ext
    return cfg
