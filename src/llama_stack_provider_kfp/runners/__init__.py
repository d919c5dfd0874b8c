"""Runners execute the one pipeline definition: `local` (kfp.local) or `remote` (KFP v2).

Both offer start / handle / observe / kill / forget over a job record; the scheduler and the
adapter use only that.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..job_store import Status


@dataclass
class Observed:
    status: Status
    started_at: datetime | None = None
    completed_at: datetime | None = None
    error: dict | None = None
    # Runner facts for the status response (e.g. the KFP run id and state).
    note: dict | None = None
    # True when the runner lost the job (its worker vanished without an outcome).
    lost: bool = False
