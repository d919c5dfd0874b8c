"""Remote runner: the same pipeline, compiled to IR and run on a KFP v2 cluster.

The job's record keeps the KFP run id; state comes from the KFP API, progress, errors and
checkpoints from the job's S3 prefix (KFP's API gives no artifact URIs).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from ..config import RemoteConfig
from ..job_store import JobRecord, JobStore, RunnerHandle
from . import Observed

log = logging.getLogger(__name__)

# V2beta1RuntimeState -> llama-stack JobStatus
STATE_MAP = {
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


class RemoteError(ValueError):
    """The KFP endpoint cannot be used; the message says why and what to change."""


DSPA = ("datasciencepipelinesapplications.opendatahub.io", "v1alpha1",
        "datasciencepipelinesapplications")  # fmt: skip


def _token(cfg: RemoteConfig) -> str | None:
    import os

    if os.environ.get(cfg.token_env):
        return os.environ[cfg.token_env]
    if cfg.token_file and cfg.token_file.is_file():
        return cfg.token_file.read_text().strip()
    return None


def connection(cfg: RemoteConfig) -> tuple[str, str, str | None]:
    """(url, namespace, token): from the config, else from the current kubeconfig context
    (namespace, bearer token as `oc login` leaves it) and, for the URL, the namespace's
    DataSciencePipelinesApplication (OpenShift AI)."""
    url, namespace, token = cfg.url, cfg.namespace, _token(cfg)
    if url and namespace and token:
        return url, namespace, token
    try:
        from kubernetes import client as k8s
        from kubernetes import config as kubeconfig

        _, active = kubeconfig.list_kube_config_contexts()
        api = kubeconfig.new_client_from_config()
    except Exception as e:
        if url and namespace:
            return url, namespace, token  # no kubeconfig: go without a token
        raise RemoteError(
            f"remote.url/namespace are not set and no kubeconfig context is usable ({e}); "
            "set remote.url and remote.namespace, or log in (`oc login`)"
        ) from None
    namespace = namespace or active.get("context", {}).get("namespace") or "default"
    if token is None:
        bearer = api.configuration.api_key.get("authorization", "")
        token = bearer.removeprefix("Bearer ").strip() or None
    if not url:
        try:
            items = k8s.CustomObjectsApi(api).list_namespaced_custom_object(
                DSPA[0], DSPA[1], namespace, DSPA[2]
            )["items"]
        except Exception as e:
            raise RemoteError(
                f"cannot list DataSciencePipelinesApplications in namespace {namespace!r} "
                f"({getattr(e, 'status', '')} {getattr(e, 'reason', e)}); set remote.url"
            ) from None
        v2 = [i for i in items if (i.get("spec") or {}).get("dspVersion") == "v2"]
        url = next(
            (
                i["status"]["components"]["apiServer"]["externalUrl"]
                for i in v2
                if (i.get("status") or {}).get("components", {}).get("apiServer", {})
                .get("externalUrl")
            ),
            None,
        )  # fmt: skip
        if not url:
            raise RemoteError(
                f"no ready DataSciencePipelinesApplication with dspVersion v2 in namespace "
                f"{namespace!r}; create a pipeline server there or set remote.url"
            )
    return url, namespace, token


def _explain(e: Exception, url: str) -> RemoteError:
    status = getattr(e, "status", None)
    if status in (401, 403):
        return RemoteError(
            f"KFP at {url} refused the token (HTTP {status}); set a valid bearer token in the "
            "token_env variable or token_file (e.g. `oc whoami -t`), with rights on the namespace"
        )
    text = str(e)
    if "certificate" in text.lower() or "SSL" in text:
        return RemoteError(f"TLS to {url} failed ({text}); set remote.ca_bundle or verify_ssl")
    if status is None:
        return RemoteError(f"KFP endpoint {url} is unreachable ({type(e).__name__}: {text[:200]})")
    return RemoteError(f"KFP at {url} answered HTTP {status}: {text[:300]}")


class RemoteRunner:
    def __init__(self, store: JobStore, cfg: RemoteConfig, placement) -> None:
        self.store = store
        self.cfg = cfg
        self.placement = placement
        self._client = None
        self._last_state: dict[str, str] = {}
        self.url, self.namespace = cfg.url or "(discovered)", cfg.namespace

    def client(self):
        if self._client is None:
            import kfp

            url, namespace, token = connection(self.cfg)
            self.url, self.namespace = url, namespace
            try:
                # namespace= skips kfp's own healthz retry loop; check it ourselves.
                client = kfp.Client(
                    host=url,
                    existing_token=token,
                    namespace=namespace,
                    ssl_ca_cert=str(self.cfg.ca_bundle) if self.cfg.ca_bundle else None,
                    verify_ssl=self.cfg.verify_ssl,
                )
                client._healthz_api.healthz_service_get_healthz()
            except Exception as e:
                raise _explain(e, url) from None
            self._client = client
        return self._client

    def check(self) -> None:
        """Fail early (at submit) when the endpoint cannot take a run."""
        self.client()

    def start(self, job_uuid: str) -> RunnerHandle:
        from kfp import compiler

        from ..pipeline import ComponentBuild, build_pipeline, pipeline_arguments

        record = self.store.load(job_uuid)
        build = ComponentBuild(base_image=self.cfg.image, install_kfp_package=False)
        with tempfile.TemporaryDirectory() as tmp:
            package = Path(tmp) / "pipeline.yaml"
            placement = self.placement(record.spec)
            compiler.Compiler().compile(build_pipeline(build, placement), str(package))
            try:
                result = self.client().create_run_from_pipeline_package(
                    str(package),
                    arguments=pipeline_arguments(record.spec),
                    run_name=job_uuid,
                    experiment_name=self.cfg.experiment,
                    namespace=self.namespace,
                    service_account=self.cfg.service_account,
                )
            except RemoteError:
                raise
            except Exception as e:
                raise _explain(e, self.url) from None
        if not result.run_id:
            raise RemoteError(
                f"KFP at {self.url} answered without a run id: probably a login page "
                "(an OAuth proxy redirect); the token is missing or expired"
            )
        return RunnerHandle(run_id=result.run_id)

    def handle(self, record: JobRecord) -> RunnerHandle | None:
        return record.runner

    def observe(self, record: JobRecord) -> Observed:
        from ..job_outputs import read_error

        if record.runner is None or record.runner.run_id is None:
            return Observed("cancelled" if record.cancelled_at else "scheduled")
        run_id = record.runner.run_id
        try:
            run = self.client().get_run(run_id)
            state = getattr(run, "state", None)
            if state is None and getattr(run, "run_id", None) is None:
                raise RemoteError(
                    "KFP answered with an empty run: probably a login page (an OAuth proxy "
                    "redirect); the token is missing or expired"
                )
        except Exception as e:
            err = e if isinstance(e, RemoteError) else _explain(e, self.url)
            self._client = None  # reconnect next time
            last = self._last_state.get(run_id, "RUNNING")
            status = "cancelled" if record.cancelled_at else STATE_MAP.get(last, "in_progress")
            return Observed(status, note={"run_id": run_id, "state": last, "warning": str(err)})
        state = str(state.value if hasattr(state, "value") else state)
        self._last_state[run_id] = state
        status = STATE_MAP.get(state, "in_progress")
        if record.cancelled_at is not None and status != "completed":
            status = "cancelled"
        error = None
        if status == "failed":
            error = read_error(record.spec.output_uri) or {}
            error.setdefault("message", f"the KFP run ended {state}")
            if getattr(run, "error", None) is not None:
                error["kfp_error"] = getattr(run.error, "message", str(run.error))
        return Observed(
            status,
            started_at=getattr(run, "created_at", None),
            completed_at=getattr(run, "finished_at", None) if status != "in_progress" else None,
            error=error,
            note={"run_id": run_id, "state": state},
        )

    def forget(self, record: JobRecord) -> None:
        if record.runner is not None:
            self._last_state.pop(record.runner.run_id, None)

    def kill(self, record: JobRecord, grace_seconds: float = 5.0) -> None:
        if record.runner is None or record.runner.run_id is None:
            return
        if self._last_state.get(record.runner.run_id) in TERMINAL_STATES:
            return  # KFP refuses to terminate a run that has ended
        try:
            self.client().terminate_run(record.runner.run_id)
        except Exception as e:
            raise _explain(e, self.url) from None
