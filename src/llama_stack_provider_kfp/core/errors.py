"""Errors by cause. The front end turns each into its HTTP status; nothing below it knows HTTP.

Lower tiers raise these; a plain exception anywhere (ValueError from a library included) is a
bug and reaches the caller as a 500, never as their fault.
"""

from __future__ import annotations


class InvalidRequest(ValueError):
    """The caller sent something that cannot work; the message says what to change (400)."""


class Unsupported(NotImplementedError):
    """A feature this provider does not offer yet; the message names what would work (501)."""


class Forbidden(PermissionError):
    """The caller is known but may not do this (403); said only where saying it reveals
    nothing the caller may not know."""


class LimitReached(Exception):
    """The caller has as many jobs queued or running as a setting allows (429)."""


class JobNotFound(LookupError):
    """No job with this id (404)."""

    def __init__(self, job_uuid: str) -> None:
        super().__init__(job_uuid)
        self.job_uuid = job_uuid


# Neither is an OSError (nor a ValueError): the `except OSError` / `except ValueError` that
# turn unreadable files into a caller's 400 must not catch a storage or cluster failure.
class Upstream(Exception):
    """A service the provider depends on (cluster, object storage, the Hub) failed a call."""


class Unavailable(Upstream):
    """It cannot be reached: network, DNS, TLS, timeouts, 5xx (503)."""


class Refused(Upstream):
    """It answered but refused: bad token, no rights, odd reply (502)."""
