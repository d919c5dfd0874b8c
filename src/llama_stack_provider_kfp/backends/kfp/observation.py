"""Where a KFP run stands, as the provider's `Observed`: the run's state from the KFP API, the
failed step's error from the job's outputs, and, when the Kubernetes API is reachable, why
the run's pods wait or died; a run that cannot start within the pending limit fails here.

The last state seen of each run answers while KFP does not (the status keeps answering with a
warning) and tells kill() whether the run has ended; one lock guards it, never held over a call.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from ...boundary.job_outputs import JobOutputs
from ...config import RemoteConfig
from ...core.errors import Upstream
from ...core.outputs import StepError
from ...jobs.backend import Observed
from ...jobs.record import JobRecord, Status
from .connection import Connection, login_page
from .discovery import request_timeout
from .pods import PodTrouble, diagnose, stuck

# V2beta1RuntimeState -> the provider's job status
STATE_MAP: dict[str, Status] = {
    "PENDING": "scheduled",
    "RUNTIME_STATE_UNSPECIFIED": "scheduled",
    "RUNNING": "in_progress",
    "PAUSED": "in_progress",
    "CANCELING": "in_progress",
    "SUCCEEDED": "completed",
    "SKIPPED": "failed",
    "FAILED": "failed",
    "CANCELED": "cancelled",
}
TERMINAL_STATES = ("SUCCEEDED", "SKIPPED", "FAILED", "CANCELED")


def _finished_at(run: Any) -> Any:
    """KFP reports 1970-01-01 for runs that have not finished: that is no completion time."""
    finished = getattr(run, "finished_at", None)
    if finished is None or getattr(finished, "year", 1970) <= 1970:
        return None
    return finished


def failed_tasks(run: Any) -> list[dict[str, Any]]:
    """The run's failed tasks with KFP's reason (run_details.task_details[].error/state)."""
    details = getattr(getattr(run, "run_details", None), "task_details", None) or []
    found = []
    for task in details:
        state = getattr(task, "state", None)
        state = str(getattr(state, "value", state))
        message = getattr(getattr(task, "error", None), "message", None)
        if state == "FAILED" or message:
            found.append({"task": task.display_name, "state": state, "message": message})
    return found


class Observer:
    def __init__(
        self,
        cfg: RemoteConfig,
        connection: Connection,
        outputs: Callable[[JobRecord], JobOutputs],
    ) -> None:
        self.cfg, self.connection, self.outputs = cfg, connection, outputs
        self._lock = threading.Lock()
        self._last_state: dict[str, str] = {}  # run id -> the KFP state seen last

    def last_state(self, run_id: str) -> str | None:
        with self._lock:
            return self._last_state.get(run_id)

    def forget(self, run_id: str) -> None:
        with self._lock:
            self._last_state.pop(run_id, None)

    def observe(self, record: JobRecord) -> Observed:
        if record.runner is None or record.runner.run_id is None:
            return Observed("cancelled" if record.cancelled_at else "scheduled")
        if record.lost is not None:  # failed here (e.g. pending too long), whatever KFP says now
            return Observed("failed", completed_at=record.lost_at, error=record.lost)
        run_id = record.runner.run_id
        try:
            # The run and, from the same session, the Kubernetes API and namespace beside it.
            run, kube, namespace = self.connection.call(
                lambda s: (s.client.get_run(run_id), s.kube, s.namespace)
            )
            raw_state = getattr(run, "state", None)
            if raw_state is None and getattr(run, "run_id", None) is None:
                raise login_page(self.connection.url, "with an empty run")
        except Exception as e:
            err = self.connection.failed(e, reconnect=True)  # the token read again, too
            last = self.last_state(run_id) or "RUNNING"
            status = "cancelled" if record.cancelled_at else STATE_MAP.get(last, "in_progress")
            return Observed(status, note={"run_id": run_id, "state": last, "warning": str(err)})
        state = str(getattr(raw_state, "value", raw_state))
        with self._lock:
            self._last_state[run_id] = state
        status = STATE_MAP.get(state, "in_progress")
        note: dict[str, Any] = {"run_id": run_id, "state": state}
        step_error = self._step_error(record, note) if status == "failed" else None
        # The pods say why a run waits, or why it failed when the step could not say it.
        looking = state in ("PENDING", "RUNNING") or (status == "failed" and step_error is None)
        inspect = kube if looking and self.cfg.inspect_pods else None
        troubles = self._pods(inspect, namespace, run_id, note) if inspect is not None else []
        if troubles and status != "failed":
            note["pods"] = [t.as_dict() for t in troubles]
        gave_up = self._pending_too_long(run, state, troubles) if status != "failed" else None
        if gave_up is not None and record.cancelled_at is None:
            return Observed("failed", getattr(run, "created_at", None), lost=True, note=note,
                            error=StepError.model_validate(gave_up))  # fmt: skip
        if record.cancelled_at is not None and status != "completed":
            status = "cancelled"
        error: dict[str, Any] | None = None
        if status == "failed":
            error = step_error.model_dump(exclude_none=True) if step_error else {}
            tasks = failed_tasks(run)
            if tasks:
                error["tasks"] = tasks
            if troubles:
                error["pods"] = [t.as_dict() for t in troubles]
            # No error.json: the step never reached Python, or was killed (OOMKilled, image
            # pull, evicted): KFP's task details and the pods say why.
            first = next((t for t in tasks if t.get("message")), None)
            why = (
                f": task {first['task']} failed: {first['message']}" if first
                else f": {troubles[0].text()}" if troubles else ""
            )  # fmt: skip
            error.setdefault("message", f"the KFP run ended {state}{why}")
            if getattr(run, "error", None) is not None:
                error["kfp_error"] = getattr(run.error, "message", str(run.error))
        return Observed(
            status,
            started_at=getattr(run, "created_at", None),
            completed_at=_finished_at(run)
            if status in ("completed", "failed", "cancelled")
            else None,
            error=StepError.model_validate(error) if error is not None else None,
            note=note,
        )

    def _step_error(self, record: JobRecord, note: dict[str, Any]) -> StepError | None:
        """The failed step's error.json; a note when storage denies or fails the read (the
        job still settles as failed, with KFP's own reason)."""
        try:
            return self.outputs(record).error()
        except Upstream as e:
            note["storage_warning"] = str(e)
            return None

    def _pods(
        self, kube: Any, namespace: str, run_id: str, note: dict[str, Any]
    ) -> list[PodTrouble]:
        """The run's pod troubles (a note says why when the Kubernetes API refused)."""
        from kubernetes import client as k8s

        try:
            return diagnose(k8s.CoreV1Api(kube.api), namespace, run_id,
                            request_timeout(self.cfg))  # fmt: skip
        except Exception as e:
            status = getattr(e, "status", None)
            note["pods_warning"] = (
                f"cannot read the run's pods ({status or type(e).__name__} "
                f"{getattr(e, 'reason', '') or str(e)[:120]}); grant get/list on pods and "
                "events in the namespace, or set remote.inspect_pods: false"
            )
            return []

    def _pending_too_long(
        self, run: Any, state: str, troubles: list[PodTrouble]
    ) -> dict[str, Any] | None:
        """A run PENDING, or a pod of it not started, for longer than the limit: it will not
        start by itself (no node can meet its requests, an image cannot be pulled, a Secret
        is missing), and the job fails with the reason instead of waiting forever."""
        limit = self.cfg.pending_timeout_seconds
        reasons = "; ".join(t.text() for t in troubles[:3])
        late = stuck(troubles, limit)
        if late:
            waited = max(t.pending_seconds or 0.0 for t in late)
            message = (
                f"pod {late[0].pod} had not started after {waited:.0f} s (limit "
                f"remote.pending_timeout_seconds = {limit:.0f} s): {reasons}; the run was "
                "terminated"
            )
        else:
            created = getattr(run, "created_at", None)
            if state != "PENDING" or created is None:
                return None
            waited = (datetime.now(UTC) - created).total_seconds()
            if waited <= limit:
                return None
            message = (
                f"the KFP run was still PENDING after {waited:.0f} s (limit "
                f"remote.pending_timeout_seconds = {limit:.0f} s): "
                + (reasons or "its pods could not be scheduled or started (GPU or memory "
                   "requests no node can meet, an image that cannot be pulled, quota)")
                + "; the run was terminated"
            )  # fmt: skip
        found: dict[str, Any] = {"message": message, "tasks": failed_tasks(run)}
        if troubles:
            found["pods"] = [t.as_dict() for t in troubles]
        return found
