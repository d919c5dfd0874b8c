"""The kfp post_training provider's config from a llama-stack run.yaml, with its
`${env.NAME}`, `${env.NAME:=default}` and `${env.NAME:+value}` values expanded as llama-stack
0.6.1 expands them (llama_stack.core.stack.replace_env_vars: the same pattern, "~" expanded in
substituted values, a substituted string typed as null/bool/int/float), so one run.yaml
configures both faces the same way."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml

from ..config import KFPPostTrainingConfig
from ..core.errors import InvalidRequest

_PATTERN = re.compile(r"\${env\.([A-Z0-9_]+)(?::([=+])([^}]*))?}")
MODULE = "llama_stack_provider_kfp"


def expand(value: Any, path: str = "") -> Any:
    if isinstance(value, dict):
        return {k: expand(v, f"{path}.{k}" if path else k) for k, v in value.items()}
    if isinstance(value, list):
        return [expand(v, f"{path}[{i}]") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match[str]) -> str:
        name, operator, given = match.group(1), match.group(2), match.group(3)
        env = os.environ.get(name)
        if operator == "=":
            if env:
                return os.path.expanduser(env)
            return os.path.expanduser(given) if given else ""
        if operator == "+":
            return os.path.expanduser(given) if env and given else ""
        if not env:
            raise InvalidRequest(f"{path}: environment variable {name} is not set")
        return os.path.expanduser(env)

    result = _PATTERN.sub(substitute, value)
    return _typed(result) if result != value else result


def _typed(value: str) -> Any:
    if value == "":
        return None
    if value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def load(run_yaml: Path, provider_id: str | None = None) -> KFPPostTrainingConfig:
    """The config of the run.yaml's post_training provider of this package (the one named
    `provider_id` when there are several)."""
    try:
        data = yaml.safe_load(run_yaml.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise InvalidRequest(f"{run_yaml}: cannot read it as YAML ({e})") from None
    entries = ((data or {}).get("providers") or {}).get("post_training") or []
    ours = [e for e in entries if isinstance(e, dict) and (e.get("module") == MODULE
            or str(e.get("provider_type", "")).endswith("::kfp"))]  # fmt: skip
    if provider_id is not None:
        ours = [e for e in ours if e.get("provider_id") == provider_id]
    if len(ours) != 1:
        found = ", ".join(str(e.get("provider_id")) for e in ours) or "none"
        raise InvalidRequest(
            f"{run_yaml}: expected one post_training provider with module {MODULE} "
            f"(found: {found}); name one with --provider-id"
        )
    return KFPPostTrainingConfig.model_validate(expand(ours[0].get("config") or {}))
