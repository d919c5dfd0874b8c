"""`llama-stack-kfp serve openai --config run.yaml [--host 127.0.0.1] [--port 8000]`: the
OpenAI face as its own server (uvicorn), configured by the run.yaml's kfp post_training
provider entry. SIGTERM (and Ctrl-C) stop it cleanly: requests in flight finish, the
scheduler stops; jobs keep running, as with `llama stack run`."""

from __future__ import annotations

import ipaddress
import logging
import socket
from pathlib import Path

from ..core.errors import InvalidRequest
from . import run_config
from .keys import Keys


def _loopback(host: str) -> bool:
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(i[4][0]).is_loopback for i in infos)


def serve(config_file: Path, host: str, port: int, provider_id: str | None = None) -> int:
    import uvicorn

    from .app import create_app

    config = run_config.load(config_file, provider_id)
    keys = Keys.load(config.openai.keys_file)
    if keys.single_user and not _loopback(host):
        raise InvalidRequest(
            f"--host {host} is reachable from other machines, and no openai.keys_file is "
            "configured: without keys this server serves one user and binds loopback only "
            "(set openai.keys_file, or KFP_OPENAI_KEYS_FILE, to serve several)"
        )
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    app = create_app(config, keys)
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=10)
    return 0
