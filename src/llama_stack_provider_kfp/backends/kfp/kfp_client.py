"""The two things this provider needs from `kfp.Client` that kfp 2.17 offers no public way to
do; the only module that touches the client's private objects.

- A request timeout. `kfp.Client` takes none, its methods pass none to the generated
  `kfp_server_api` calls, and `kfp_server_api`'s REST client then hands `timeout=None` to
  urllib3 explicitly (overriding any pool default): a blackholed route would hang a status
  call or the scheduler forever. All of the client's APIs share one `ApiClient`, so one wrapped
  `rest_client.request` gives every call the default.
- The server's version. `get_kfp_healthz()`'s model drops `tag_name`; the raw answer keeps it.

Checked against kfp 2.17 / kfp-server-api 2.17 (pyproject pins kfp <2.18); the contract
tests and tests/e2e/test_remote.py (a blackholed route, an old server) fail if they change.
"""

from __future__ import annotations

from typing import Any


def set_timeout(client: Any, timeout: tuple[float, float]) -> None:
    """Give every call of this kfp.Client a (connect, read) timeout unless it sets its own."""
    rest = client._run_api.api_client.rest_client
    request = rest.request

    def with_timeout(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return request(*args, _request_timeout=_request_timeout or timeout, **kwargs)

    rest.request = with_timeout


def healthz(client: Any) -> bytes:
    """The body of the server's healthz answer, unparsed."""
    return client._healthz_api.healthz_service_get_healthz(_preload_content=False).data or b""
