"""API keys: a file of `<key> <owner>` lines named in the config (openai.keys_file). The file
must not be readable by group or others; keys are compared in constant time and never logged
or echoed. Without a file the server serves one user (`local`) and binds loopback only."""

from __future__ import annotations

import hmac
import stat
from pathlib import Path

from ..core.errors import InvalidRequest
from ..jobs.record import Owner

SINGLE_USER = "local"


class Keys:
    def __init__(self, entries: list[tuple[str, str]] | None) -> None:
        self._entries = entries  # None: no keys file, one user

    @classmethod
    def load(cls, path: Path | None) -> Keys:
        if path is None:
            return cls(None)
        path = path.expanduser()
        try:
            mode = path.stat().st_mode
            text = path.read_text()
        except OSError as e:
            raise InvalidRequest(
                f"openai.keys_file {path}: cannot read it ({e.strerror})"
            ) from None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise InvalidRequest(
                f"openai.keys_file {path} is readable by group or others: chmod 600 it"
            )
        entries = []
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) != 2:
                raise InvalidRequest(
                    f"openai.keys_file {path} line {n}: expected `<key> <owner>` "
                    f"({len(parts)} fields)"
                )
            entries.append((parts[0], parts[1]))
        if not entries:
            raise InvalidRequest(f"openai.keys_file {path} has no keys")
        return cls(entries)

    @property
    def single_user(self) -> bool:
        return self._entries is None

    def owner(self, key: str | None) -> Owner | None:
        """The owner of `key`; None when no key matches (a 401). Every entry is compared, in
        constant time, so the time taken says nothing about the keys."""
        if self._entries is None:
            return Owner(principal=SINGLE_USER)
        given = (key or "").encode()
        found = None
        for candidate, owner in self._entries:
            if hmac.compare_digest(candidate.encode(), given) and found is None:
                found = owner
        return Owner(principal=found) if found is not None else None
