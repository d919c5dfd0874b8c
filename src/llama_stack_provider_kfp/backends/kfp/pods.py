"""Why a run's pods do not run, from the Kubernetes API (when it is reachable).

KFP's run state says little about pods: a run is RUNNING while its train pod waits for an image
that cannot be pulled or a GPU no node has, and a container killed for memory (OOMKilled)
writes no error of its own. The pods' statuses and Warning events say why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# KFP's API server labels every pod of a run with its id (the workflow's podMetadata).
RUN_LABEL = "pipeline/runid"
MAX_EVENTS = 3  # per pod: the newest Warning events


@dataclass
class PodTrouble:
    pod: str
    reason: str
    message: str | None = None
    container: str | None = None
    exit_code: int | None = None
    pending_seconds: float | None = None  # set while the pod has not started

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if v is not None}

    def text(self) -> str:
        where = f"pod {self.pod}" + (f" container {self.container}" if self.container else "")
        code = f", exit code {self.exit_code}" if self.exit_code is not None else ""
        return f"{where}: {self.reason}{code}" + (f" ({self.message})" if self.message else "")


def _age(pod: Any) -> float | None:
    created = getattr(pod.metadata, "creation_timestamp", None)
    return (datetime.now(UTC) - created).total_seconds() if created else None


def _when(event: Any) -> float:
    at = event.last_timestamp or event.event_time
    return at.timestamp() if at else 0.0


def _container_troubles(pod: Any) -> list[PodTrouble]:
    name, status = pod.metadata.name, pod.status
    found = []
    for cs in (status.init_container_statuses or []) + (status.container_statuses or []):
        state = cs.state
        waiting = state.waiting if state else None
        # ContainerCreating / PodInitializing are normal waits; anything else is a problem
        # (ErrImagePull, ImagePullBackOff, CreateContainerConfigError for a missing Secret...).
        if waiting and waiting.reason not in (None, "ContainerCreating", "PodInitializing"):
            found.append(PodTrouble(name, waiting.reason, waiting.message, cs.name))
        ended = (state.terminated if state else None) or (
            cs.last_state.terminated if cs.last_state else None
        )
        if ended and ended.exit_code != 0:
            found.append(PodTrouble(name, ended.reason or "Error", ended.message, cs.name,
                                    ended.exit_code))  # fmt: skip
    return found


def diagnose(core: Any, namespace: str, run_id: str, timeout: Any) -> list[PodTrouble]:
    """The troubles of the run's pods: containers that cannot start or died, pods that cannot
    be scheduled or were evicted, with the newest Warning events of pods still pending.
    `core` is a kubernetes CoreV1Api."""
    pods = core.list_namespaced_pod(
        namespace, label_selector=f"{RUN_LABEL}={run_id}", _request_timeout=timeout
    )
    found: list[PodTrouble] = []
    for pod in pods.items:
        name, status = pod.metadata.name, pod.status
        mine = _container_troubles(pod)
        if status.reason == "Evicted":
            mine.append(PodTrouble(name, "Evicted", status.message))
        if status.phase == "Pending":
            pending = _age(pod)
            for cond in status.conditions or []:
                if cond.type == "PodScheduled" and cond.status == "False":
                    mine.append(PodTrouble(name, cond.reason or "Unschedulable", cond.message))
            events = core.list_namespaced_event(
                namespace,
                field_selector=f"involvedObject.kind=Pod,involvedObject.name={name}",
                _request_timeout=timeout,
            )
            warnings = [e for e in events.items if e.type == "Warning"]
            warnings.sort(key=_when)
            seen = {t.message for t in mine}  # FailedScheduling repeats Unschedulable's message
            for event in warnings[-MAX_EVENTS:]:
                if event.message not in seen:
                    mine.append(PodTrouble(name, event.reason or "Warning", event.message))
            if not mine:
                mine.append(PodTrouble(name, "Pending", "waiting to be scheduled or started"))
            for t in mine:
                t.pending_seconds = pending
        found.extend(mine)
    return found


def stuck(troubles: list[PodTrouble], limit: float) -> list[PodTrouble]:
    """The troubles of pods that have not started for longer than `limit` seconds."""
    return [t for t in troubles if t.pending_seconds is not None and t.pending_seconds > limit]
