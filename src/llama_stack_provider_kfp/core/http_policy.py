"""How https:// and http:// datasets may be read (boundary.http_data reads them): the policy
travels in the JobSpec, so the server and the prepare-data step apply the same rules."""

from __future__ import annotations

from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field


class HttpPolicy(BaseModel):
    """How https:// and http:// datasets are read (the provider's data_sources settings)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allowed_hosts: list[str] = []
    ca_bundle: str | None = None
    max_bytes: int = Field(default=10 * 2**30, ge=1)
    token_env: str | None = None
    timeout_seconds: float = Field(default=30.0, gt=0)


def public_url(url: str) -> str:
    """The URL without its query and fragment (a presigned URL's signature stays out)."""
    p = urlsplit(url)
    return f"{p.scheme}://{p.netloc}{p.path}"
