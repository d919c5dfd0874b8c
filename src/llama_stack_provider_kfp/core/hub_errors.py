"""Hugging Face Hub failures by cause, for the model source and the dataset reader.

huggingface_hub and datasets wrap the cause (LocalEntryNotFoundError from a ConnectError, a
builtin ConnectionError from a 5xx, ...): the chain is walked for it.
"""

from __future__ import annotations

from collections.abc import Iterator

from .errors import Refused, Unavailable, Upstream

_NETWORK_MODULES = ("httpx", "httpx2", "httpcore", "httpcore2", "urllib3", "requests")


def _chain(e: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    cause: BaseException | None = e
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        yield cause
        cause = cause.__cause__ or cause.__context__


def _status(e: BaseException) -> int | None:
    status = getattr(getattr(e, "response", None), "status_code", None)
    return status if isinstance(status, int) else None


def _network(e: BaseException) -> bool:
    module = type(e).__module__.split(".")[0]
    return isinstance(e, ConnectionError | TimeoutError) or module in _NETWORK_MODULES


def upstream(e: BaseException, doing: str) -> Upstream | None:
    """Unavailable (network, timeouts, 408/429/5xx) or Refused (gated repo, token refused,
    another 4xx) for a Hub failure while `doing`; None when the Hub said there is no such
    repo, revision or file, or the server is offline by setting (HF_HUB_OFFLINE): those are
    the caller's to fix (another id, a cached model, weights in S3)."""
    chain = list(_chain(e))
    if any("OfflineModeIsEnabled" in f"{type(c).__name__} {c}" for c in chain):
        return None
    for c in chain:
        status = _status(c)
        if status is None:
            continue
        name = type(c).__name__
        if name == "GatedRepoError":
            return Refused(f"the Hugging Face Hub refused {doing}: the repo is gated; set "
                           "HF_TOKEN to a token of an account that was granted access")  # fmt: skip
        if name.endswith("NotFoundError") or status == 404:
            return None
        if status in (408, 429) or status >= 500:
            return Unavailable(f"the Hugging Face Hub answered HTTP {status} to {doing}; "
                               "retry later")  # fmt: skip
        return Refused(f"the Hugging Face Hub refused {doing} (HTTP {status}); check HF_TOKEN")
    for c in chain:
        if _network(c):
            return Unavailable(
                f"the Hugging Face Hub could not be reached for {doing} "
                f"({type(c).__name__}: {str(c)[:200]})"
            )
    return None
