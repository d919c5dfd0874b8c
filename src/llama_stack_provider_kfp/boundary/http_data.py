"""Datasets at https:// and http:// URLs, read with urllib3 under the provider's policy.

The policy (core.http_policy's `HttpPolicy`, from the provider config's `data_sources`)
travels in the JobSpec, so the server (a bounded sample at submit) and the prepare-data step
(the whole file) apply the same rules:

- `allowed_hosts`: when set, only those hosts (exact names, or `*.example.com`); when empty,
  any host whose addresses are all public.
- Redirects are followed only to the same scheme, host and port (at most 5); a redirect to
  another host is refused.
- Errors name the URL (without its query) and the HTTP status, never the response body.
- A bearer token, read from the environment variable NAMED by `token_env` (never the value in
  a setting), is sent only to hosts on the allow-list (the config refuses `token_env` without
  one), so a caller cannot send it to a host of their choosing.
- Downloads stop at `max_bytes`.

Probing internal addresses: the server fetches from a URL a caller registered. Without an
allow-list it refuses, before any connection, a host that resolves to a loopback, private,
link-local (e.g. the cloud metadata address 169.254.169.254), shared, multicast or reserved
address, with one message whatever listens there; an administrator opts a host in by listing
it. The connection then goes to the address that was checked (the name is only the TLS SNI,
certificate check and Host header), so a DNS answer that changes between the check and the
connection (rebinding) cannot redirect it. What a caller can still learn is whether a public
host answered, and its HTTP status.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from ..core.data_formats import DataSourceError
from ..core.errors import Refused, Unavailable
from ..core.http_policy import HttpPolicy, public_url

_REDIRECTS = (301, 302, 303, 307, 308)
MAX_REDIRECTS = 5
_CHUNK = 1 << 20


def _listed(host: str, policy: HttpPolicy) -> bool:
    host = host.lower().rstrip(".")
    for entry in (h.lower().strip() for h in policy.allowed_hosts):
        if host == entry or (entry.startswith("*.") and host.endswith(entry[1:])):
            return True
    return False


def _address(url: str, policy: HttpPolicy) -> str:
    """The address to connect to for `url`'s host, after the policy's checks."""
    p = urlsplit(url)
    host = p.hostname or ""
    where = public_url(url)
    if p.scheme not in ("https", "http") or not host:
        raise DataSourceError(f"{where} is not an http(s)://<host>/<path> URL")
    listed = _listed(host, policy)
    if policy.allowed_hosts and not listed:
        raise DataSourceError(
            f"host {host!r} of {where} is not in the provider's data_sources.allowed_hosts "
            f"({', '.join(policy.allowed_hosts)}); use a listed host, or ask the administrator "
            "to add it"
        )
    try:
        infos = socket.getaddrinfo(host, p.port or (443 if p.scheme == "https" else 80),
                                   type=socket.SOCK_STREAM)  # fmt: skip
    except (socket.gaierror, UnicodeError) as e:
        raise Unavailable(f"cannot resolve host {host!r} of {where} ({e})") from None
    addresses = [str(info[4][0]) for info in infos]
    if not listed and not all(ipaddress.ip_address(a.split("%")[0]).is_global for a in addresses):
        raise DataSourceError(
            f"host {host!r} of {where} is not a public address; datasets are read from "
            "internal addresses only when the provider's data_sources.allowed_hosts lists them"
        )
    return addresses[0]


def _pool(url: str, address: str, policy: HttpPolicy) -> Any:
    import urllib3

    p = urlsplit(url)
    host = p.hostname or ""
    timeout = urllib3.Timeout(connect=min(5.0, policy.timeout_seconds),
                              read=policy.timeout_seconds)  # fmt: skip
    if p.scheme == "https":
        return urllib3.HTTPSConnectionPool(
            address, p.port or 443, timeout=timeout, retries=False, maxsize=1,
            cert_reqs="CERT_REQUIRED", ca_certs=policy.ca_bundle or None,
            server_hostname=host, assert_hostname=host,
        )  # fmt: skip
    return urllib3.HTTPConnectionPool(address, p.port or 80, timeout=timeout, retries=False,
                                      maxsize=1)  # fmt: skip


def _status_error(status: int, where: str, policy: HttpPolicy) -> Exception:
    if status in (404, 410):
        return DataSourceError(f"{where} does not exist (HTTP {status}); check the URL")
    if status in (401, 403):
        token = ""
        if policy.token_env:
            token = (
                f" with the token in {policy.token_env}"
                if os.environ.get(policy.token_env)
                else f" ({policy.token_env}, which holds the token, is not set)"
            )
        return Refused(f"{where} refused the read{token} (HTTP {status}); check the server's "
                       "access rights for it")  # fmt: skip
    if status in (408, 429) or status >= 500:
        return Unavailable(f"{where} answered HTTP {status}; retry later")
    return Refused(f"{where} answered HTTP {status}")


def open_url(url: str, policy: HttpPolicy, headers: dict[str, str] | None = None) -> Any:
    """A streaming urllib3 response (status 200 or 206) for `url`, after the policy's checks
    and same-host redirects; the caller reads it and calls release_conn()."""
    import urllib3

    current = url
    for _ in range(MAX_REDIRECTS + 1):
        where = public_url(current)
        p = urlsplit(current)
        pool = _pool(current, _address(current, policy), policy)
        sent = {"Host": p.netloc.rsplit("@", 1)[-1], **(headers or {})}
        if policy.token_env and _listed(p.hostname or "", policy):
            token = os.environ.get(policy.token_env)
            if token:
                sent["Authorization"] = f"Bearer {token}"
        target = p.path or "/"
        if p.query:
            target += "?" + p.query
        try:
            resp = pool.urlopen("GET", target, headers=sent, redirect=False,
                                preload_content=False, assert_same_host=False)  # fmt: skip
        except urllib3.exceptions.SSLError as e:
            raise Unavailable(f"TLS with {where} failed ({e.__class__.__name__}): set the "
                              "provider's data_sources.ca_bundle to the CA that signed its "
                              "certificate") from None  # fmt: skip
        except urllib3.exceptions.HTTPError as e:
            raise Unavailable(f"{where} could not be reached ({type(e).__name__})") from None
        if resp.status in (200, 206):
            return resp
        resp.drain_conn()
        resp.release_conn()
        if resp.status not in _REDIRECTS:
            raise _status_error(resp.status, where, policy)
        nxt = urljoin(current, resp.headers.get("Location", ""))
        q = urlsplit(nxt)
        if (q.scheme, q.hostname, q.port) != (p.scheme, p.hostname, p.port):
            # The target is not named: it is part of the answer, which is not echoed.
            raise DataSourceError(
                f"{where} redirects to another host, which is never followed; register the "
                "URL the data is served at"
            )
        current = nxt
    raise DataSourceError(f"{public_url(url)} redirects more than {MAX_REDIRECTS} times")


def _declared_size(resp: Any) -> int | None:
    ranged = resp.headers.get("Content-Range", "")
    if resp.status == 206 and "/" in ranged and not ranged.endswith("*"):
        return int(ranged.rsplit("/", 1)[1])
    length = resp.headers.get("Content-Length")
    return int(length) if resp.status == 200 and length and length.isdigit() else None


def _too_big(where: str, policy: HttpPolicy) -> DataSourceError:
    return DataSourceError(
        f"{where} is larger than the provider's data_sources.max_bytes ({policy.max_bytes} "
        "bytes); use a smaller file, or ask the administrator to raise the limit"
    )


def read_head(url: str, policy: HttpPolicy, n: int) -> tuple[bytes, bool]:
    """At most the first `n` bytes at `url`, and whether they are the whole file."""
    import urllib3

    resp = open_url(url, policy, {"Range": f"bytes=0-{n - 1}"})
    where = public_url(url)
    try:
        size = _declared_size(resp)
        if size is not None and size > policy.max_bytes:
            raise _too_big(where, policy)
        data = resp.read(n + 1) if resp.status == 200 else resp.read(n)
    except urllib3.exceptions.HTTPError as e:
        raise Unavailable(f"reading {where} failed ({type(e).__name__})") from None
    finally:
        resp.release_conn()
    complete = len(data) <= n if size is None else size <= n
    return data[:n], complete


def download(url: str, path: Path, policy: HttpPolicy) -> Path:
    """The file at `url`, streamed to `path`; refused beyond `max_bytes`."""
    import urllib3

    resp = open_url(url, policy)
    where = public_url(url)
    written = 0
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        size = _declared_size(resp)
        if size is not None and size > policy.max_bytes:
            raise _too_big(where, policy)
        with path.open("wb") as fh:
            for chunk in resp.stream(_CHUNK):
                written += len(chunk)
                if written > policy.max_bytes:
                    raise _too_big(where, policy)
                fh.write(chunk)
    except urllib3.exceptions.HTTPError as e:
        raise Unavailable(f"reading {where} failed ({type(e).__name__})") from None
    finally:
        resp.release_conn()
    return path
