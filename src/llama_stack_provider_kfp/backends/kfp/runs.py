"""A job's KFP run: compiled and submitted once (a run the job already has is adopted, never
created twice), found again by its name, and terminated."""

from __future__ import annotations

import json
import logging
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...config import RemoteConfig
from ...jobs.record import JobRecord, RunnerHandle
from .connection import Connection, login_page
from .observation import TERMINAL_STATES
from .placement import with_owner

log = logging.getLogger(__name__)


def run_name(record: JobRecord) -> str:
    """The KFP run of a job's first run is named after the job; a resumed job's later runs
    are `<job>.run<N>`, so that finding a run again never adopts an earlier one."""
    n = len(record.runs) + 1
    return record.job_uuid if n == 1 else f"{record.job_uuid}.run{n}"


class Runs:
    def __init__(self, cfg: RemoteConfig, connection: Connection, placement: Callable) -> None:
        self.cfg, self.connection, self.placement = cfg, connection, placement

    def start(self, record: JobRecord) -> RunnerHandle:
        from kfp import compiler

        from ...pipeline.definition import ComponentBuild, build_pipeline, pipeline_arguments

        job_uuid = record.job_uuid
        # Submitting is idempotent: a run this job already has (the server died after creating
        # it, or the create call's answer was lost) is adopted, never created twice.
        existing = self.find(record)
        if existing is not None:
            return RunnerHandle(run_id=existing)
        build = ComponentBuild(base_image=self.cfg.image, install_kfp_package=False)
        with tempfile.TemporaryDirectory() as tmp:
            package = Path(tmp) / "pipeline.yaml"
            owner = record.owner.principal if record.owner else None
            placement = with_owner(self.placement(record.spec), owner)
            pipeline = build_pipeline(build, record.spec, placement, owner)
            compiler.Compiler().compile(pipeline, str(package))
            try:
                result = self.connection.call(lambda s: s.client.create_run_from_pipeline_package(
                    str(package),
                    arguments=pipeline_arguments(record.spec),
                    run_name=run_name(record),
                    experiment_name=self.cfg.experiment,
                    namespace=s.namespace,
                    service_account=self.cfg.service_account,
                ))  # fmt: skip
            except Exception as e:
                err = self.connection.failed(e)
                # Refused the token: nothing was created. Anything else (a timeout, a 5xx from
                # a route) may have lost the answer to a run that exists.
                refused = getattr(e, "status", None) in (401, 403)
                found = None if refused else self.find(record)
                if found is not None:
                    log.warning("job %s: create-run answer lost; adopted run %s", job_uuid, found)
                    return RunnerHandle(run_id=found)
                raise err from None
        if not result.run_id:
            self.connection.drop()  # the token expired; read it again next time
            raise login_page(self.connection.url, "without a run id")
        return RunnerHandle(run_id=result.run_id)

    def find(self, record: JobRecord) -> str | None:
        """The id of a run KFP already has for this run of the job (run_name, created after
        the job was submitted or resumed here), or None; None too when KFP cannot be asked."""
        wanted = run_name(record)
        name = json.dumps(
            {"predicates": [{"key": "display_name", "operation": "EQUALS", "string_value": wanted}]}
        )
        try:
            listed = self.connection.call(lambda s: s.client.list_runs(
                namespace=s.namespace, filter=name, page_size=20))  # fmt: skip
        except Exception as e:
            log.warning("job %s: cannot list runs to find it again: %s", record.job_uuid, e)
            return None
        # 60 s: clock skew between server and KFP.
        since = (record.resumed_at or record.scheduled_at).timestamp() - 60
        for run in getattr(listed, "runs", None) or []:
            created = getattr(run, "created_at", None)
            if run.display_name == wanted and (created is None or
                                                        created.timestamp() >= since):  # fmt: skip
                return str(run.run_id)
        return None

    def terminate(self, run_id: str) -> None:
        """Terminate the run; a run that has ended since the last poll (KFP refuses to
        terminate it) needs nothing more."""
        try:
            self.connection.call(lambda s: s.client.terminate_run(run_id))
        except Exception as e:
            try:
                run: Any = self.connection.call(lambda s: s.client.get_run(run_id))
                state = getattr(run, "state", None)
            except Exception:
                state = None
            if str(getattr(state, "value", state)) in TERMINAL_STATES:
                return
            raise self.connection.failed(e) from None
