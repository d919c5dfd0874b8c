"""Which server to talk to, and the client's failures as messages that say what to check.

The endpoint and API key are found as llama-stack-client's own CLI finds them: `--endpoint`
/ `--api-key`, else `--config FILE`, else `~/.llama/client/config.yaml` (keys `endpoint`,
`api_key`; written by `llama-stack-client configure`), else http://localhost:8321.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from llama_stack_client import APIConnectionError, APIStatusError, LlamaStackClient

DEFAULT_ENDPOINT = "http://localhost:8321"


def default_config_file() -> Path:
    return Path("~/.llama/client/config.yaml").expanduser()


@dataclass
class Target:
    endpoint: str
    api_key: str | None
    source: str  # where the endpoint came from, for messages


def resolve(endpoint: str | None, api_key: str | None, config: str | None) -> Target:
    path = Path(config).expanduser() if config else default_config_file()
    settings: dict[str, Any] = {}
    if config or path.is_file():
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as e:
            raise CommandError(f"cannot read the client config {path}: {e}") from None
        settings = loaded if isinstance(loaded, dict) else {}
    if endpoint:
        return Target(endpoint, api_key or settings.get("api_key"), "--endpoint")
    if settings.get("endpoint"):
        return Target(str(settings["endpoint"]), api_key or settings.get("api_key"), str(path))
    return Target(DEFAULT_ENDPOINT, api_key or settings.get("api_key"), "the default")


def make_client(target: Target) -> LlamaStackClient:
    # A bounded timeout: a status call answers in milliseconds, a submit in well under this.
    return LlamaStackClient(base_url=target.endpoint, api_key=target.api_key, timeout=60)


class CommandError(Exception):
    """A failure to report as one message (no traceback) with a non-zero exit."""


def explain(e: Exception, target: Target, job_uuid: str | None = None) -> CommandError:
    """The client's exception as what happened and what to check."""
    if isinstance(e, APIConnectionError):
        return CommandError(
            f"cannot reach the llama-stack server at {target.endpoint} (from {target.source}): "
            f"{e.__cause__ or e}. Check that the server is running (llama stack run run.yaml "
            "--port PORT) and that the endpoint is right: --endpoint URL, or "
            f"'endpoint:' in {default_config_file()}."
        )
    if isinstance(e, APIStatusError):
        detail = _detail(e)
        if e.status_code == 404 and job_uuid is not None:
            return CommandError(
                f"no training job {job_uuid!r} on {target.endpoint} ({detail}); "
                "`llama-stack-kfp post_training list` shows the jobs there"
            )
        if e.status_code == 404:
            return CommandError(
                f"{target.endpoint} does not serve the post-training API ({detail}): is it a "
                "llama-stack 0.6.x server with a post_training provider?"
            )
        if e.status_code in (401, 403):
            return CommandError(
                f"{target.endpoint} refused the credentials (HTTP {e.status_code}: {detail}); "
                "check --api-key or 'api_key:' in the client config"
            )
        return CommandError(f"the server answered HTTP {e.status_code}: {detail}")
    return CommandError(f"{type(e).__name__}: {e}")


def _detail(e: APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict):
        for key in ("detail", "error", "message"):
            value = body.get(key)
            if isinstance(value, dict):
                value = value.get("detail") or value.get("message")
            if value:
                return str(value)
    return e.message
