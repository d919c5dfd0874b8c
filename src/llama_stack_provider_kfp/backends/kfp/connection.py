"""The server's connection to KFP: one kfp.Client, its token, and reconnecting, shared by the
scheduler's thread and the request threads.

A `Session` is an immutable snapshot of one connection (client, URL, namespace, the Kubernetes
API found beside it). `Connection` holds the current one under a lock, connects when there is
none, and drops a session after a failure, so the next call connects again. Connecting runs
outside the lock: threads that find no session each connect (each bounded by the request
timeout) and the first to finish is kept, instead of queueing behind one that hangs.

The token goes through kfp's public credentials hook (`kfp.Client(credentials=...)`, a
`TokenCredentialsBase` that kfp asks before every request). When KFP refuses it, it is read
again (token_env, token_file, the kubeconfig or the service account's token) and the call is
retried once on the same client: a rotated or expired token costs one retry, not a reconnection.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from kfp.client.token_credentials_base import TokenCredentialsBase

from ...config import RemoteConfig
from ...core.errors import Refused, Unavailable, Upstream
from ...kube.client import Kube
from .discovery import find_endpoint, request_timeout
from .kfp_client import healthz, set_timeout

T = TypeVar("T")

# SDK 2.17's IR needs a 2.5+ API server: 2.2-2.3 reject its resource fields, the 2.4 driver
# kfp-kubernetes' secretNameParameter.
MIN_BACKEND = (2, 5)


def check_backend_version(tag: str | None, url: str) -> None:
    """Refuse a KFP API server older than MIN_BACKEND (its healthz `tag_name`)."""
    if not tag:
        return  # not reported: nothing to check
    parts = []
    for piece in tag.lstrip("v").split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    if tuple(parts) < MIN_BACKEND:
        raise Refused(
            f"KFP at {url} is version {tag}; this provider needs a KFP API server >= "
            f"{'.'.join(map(str, MIN_BACKEND))} (Red Hat OpenShift AI / DSPO with KFP 2.5+): "
            "older servers reject the pipelines the kfp 2.17 SDK compiles"
        )


def _configured_token(cfg: RemoteConfig) -> str | None:
    if os.environ.get(cfg.token_env):
        return os.environ[cfg.token_env]
    if cfg.token_file and cfg.token_file.is_file():
        return cfg.token_file.read_text().strip()
    return None


class BearerToken(TokenCredentialsBase):
    """The token kfp sends with every request; `reread()` reads it again from where it came
    from (a value found no more keeps the last one)."""

    def __init__(self, cfg: RemoteConfig, kube: Kube | None) -> None:
        self._cfg, self._kube = cfg, kube
        self._lock = threading.Lock()
        self._token = _configured_token(cfg) or (kube.token if kube else None)

    @property
    def found(self) -> bool:
        return self._token is not None

    def refresh_api_key_hook(self, config: Any) -> None:
        config.api_key["authorization"] = self._token

    def reread(self) -> None:
        with self._lock:
            kube = self._kube.read_token() if self._kube else None
            self._token = _configured_token(self._cfg) or kube or self._token


@dataclass(frozen=True)
class Session:
    client: Any  # kfp.Client
    url: str
    namespace: str
    kube: Kube | None  # None: the Kubernetes API is not reachable from here
    token: BearerToken | None  # None: no token was found; requests go without one


class Connection:
    def __init__(self, cfg: RemoteConfig) -> None:
        self.cfg = cfg
        self._lock = threading.Lock()  # guards the two fields; never held over a call
        self._session: Session | None = None
        self._url = cfg.url or "(discovered)"

    @property
    def url(self) -> str:
        """The KFP URL as last known (for messages)."""
        with self._lock:
            return self._url

    def session(self) -> Session:
        """The current session, connecting first when there is none."""
        with self._lock:
            if self._session is not None:
                return self._session
        fresh = self._connect()
        with self._lock:
            if self._session is None:
                self._session = fresh
            return self._session

    def drop(self, session: Session | None = None) -> None:
        """Forget `session` (the current one when None) if it is still the current one; a
        thread that failed on an old session never drops the one another thread built."""
        with self._lock:
            if session is None or self._session is session:
                self._session = None

    def call(self, fn: Callable[[Session], T]) -> T:
        """fn(session), once more when KFP refused the token: read again, or, with none to
        read, on a new connection."""
        session = self.session()
        try:
            return fn(session)
        except Exception as e:
            if getattr(e, "status", None) not in (401, 403):
                raise
        if session.token is not None:
            session.token.reread()
        else:
            self.drop(session)
        return fn(self.session())

    def failed(self, e: Exception, reconnect: bool = False) -> Upstream:
        """The error to raise for a failed KFP call. A refusal (an expired or revoked token,
        a login page), or any failure when `reconnect`, drops the session: the next call
        connects again and reads the token again."""
        err = explain(e, self.url)
        if reconnect or isinstance(err, Refused):
            self.drop()
        return err

    def _connect(self) -> Session:
        import kfp

        found = find_endpoint(self.cfg)
        with self._lock:
            self._url = found.url
        token = BearerToken(self.cfg, found.kube)
        try:
            # namespace= skips kfp's own healthz retry loop; check it ourselves.
            client = kfp.Client(
                host=found.url,
                namespace=found.namespace,
                credentials=token if token.found else None,
                ssl_ca_cert=found.ca_bundle,
                verify_ssl=self.cfg.verify_ssl,
            )
            set_timeout(client, request_timeout(self.cfg))
            raw = healthz(client)
        except Exception as e:
            raise explain(e, found.url) from None
        try:
            health = json.loads(raw or b"{}")
        except ValueError:
            raise login_page(found.url, "its health check with a page, not JSON") from None
        # kfp_server_api's model drops tag_name: read it from the raw answer.
        check_backend_version(health.get("tag_name") if isinstance(health, dict) else None,
                              found.url)  # fmt: skip
        return Session(client, found.url, found.namespace, found.kube,
                       token if token.found else None)  # fmt: skip


def login_page(url: str, answered: str) -> Refused:
    """What an OAuth proxy's redirect to its login page looks like through kfp: no error, an
    answer without content."""
    return Refused(
        f"KFP at {url} answered {answered}: probably a login page (an OAuth proxy redirect); "
        "the token is missing or expired"
    )


def explain(e: Exception, url: str) -> Upstream:
    """An error talking to KFP, as Refused (it answered no) or Unavailable (no answer)."""
    if isinstance(e, Upstream):
        return e  # explained already (discovery, the login page)
    status = getattr(e, "status", None)
    if status in (401, 403):
        return Refused(
            f"KFP at {url} refused the token (HTTP {status}); set a valid bearer token in the "
            "token_env variable or token_file (e.g. `oc whoami -t`), with rights on the namespace"
        )
    text = str(e)
    if "timeout" in text.lower() or "timed out" in text.lower() or isinstance(e, TimeoutError):
        return Unavailable(
            f"KFP at {url} timed out: no answer within remote.request_timeout_seconds; the "
            "route or the API server is stuck"
        )
    if "certificate" in text.lower() or "SSL" in text:
        return Unavailable(f"TLS to {url} failed ({text}); set remote.ca_bundle or verify_ssl")
    if status is None:
        return Unavailable(f"KFP endpoint {url} is unreachable ({type(e).__name__}: {text[:200]})")
    if status >= 500:  # the API server or its route is down or overloaded: no answer to act on
        return Unavailable(f"KFP at {url} answered HTTP {status}: {text[:300]}")
    return Refused(f"KFP at {url} answered HTTP {status}: {text[:300]}")
