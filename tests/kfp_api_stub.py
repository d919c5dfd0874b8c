"""Stand-in for a Kubeflow Pipelines v2 API server and the Kubernetes API beside it (no cluster
can run here).

Speaks the subset of /apis/v2beta1 that kfp.Client uses to submit, poll and terminate (healthz,
experiments, runs), and of the Kubernetes API the provider reads (DataSciencePipelinesApplications,
a run's pods and their events). Every answer is built from the client libraries' own models
(`kfp_server_api`, `kubernetes.client`) and serialized by their ApiClients, so its shape is the
real servers', not ours. The test drives run states and pods by hand. Modes imitate what real
deployments do: `ok`, `unauthorized` (401), and `login-redirect` (an OAuth proxy answering 302
to an HTML login page). Tokens expire as real ones do: only `valid_token` is accepted, with
the one it replaced beside it while `grace_token` is set (a rotation's overlap), and
`refuse_next` refuses single calls whatever their token. With `tls=(cert, key)` it serves HTTPS
(a pod reaching the cluster's services).
"""

from __future__ import annotations

import json
import ssl
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import kfp_server_api as kfp_api
from kubernetes import client as k8s

RUN_LABEL = "pipeline/runid"  # as KFP's API server labels a run's pods
TRAINER, TRAINER_VERSION = "trainer.kubeflow.org", "v1alpha1"
ENDED = ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED")
_KFP = kfp_api.ApiClient()
_K8S = k8s.ApiClient()


def _ago(seconds: float) -> datetime:
    return datetime.now(UTC) - timedelta(seconds=seconds)


class KFPStub:
    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        self.mode = "ok"
        self._lock = threading.Lock()
        self._experiments: dict[str, kfp_api.V2beta1Experiment] = {}
        self._runs: dict[str, kfp_api.V2beta1Run] = {}
        self._pods: dict[str, list[k8s.V1Pod]] = {}  # namespace -> pods
        self._events: dict[str, list[k8s.CoreV1Event]] = {}  # namespace -> events
        self.requests: list[dict] = []  # method, path, headers, body: everything received
        self.terminated: list[str] = []
        self.dspas: dict[str, list[dict]] = {}  # namespace -> DSPA objects
        # The DSPA API versions served: DSPO >= 2.17 serves v1 only.
        self.dspa_versions: tuple[str, ...] = ("v1",)
        # What GET /apis/v2beta1/healthz reports as tag_name (KFP's backend version).
        self.version = "2.5.0"
        # Seconds to hold every answer (a blackholed route when larger than the client's
        # read timeout).
        self.delay = 0.0
        # When set, only this bearer token is accepted (others get 401, as an expired
        # OpenShift token does), and `grace_token` beside it while set (the one it replaced:
        # a rotation's overlap, before the old token expires).
        self.valid_token: str | None = None
        self.grace_token: str | None = None
        # Answer 401 to this many more KFP API calls, whatever their token.
        self.refuse_next = 0
        self.refused = 0  # 401 answers given
        # Seconds in the past new runs are created at (a run stuck PENDING for that long).
        self.age = 0.0
        # Create the run, then answer too late for the client (its answer is lost).
        self.lose_create_answer = False
        # Kubernetes API answers 403 to pod and event reads (no RBAC for them).
        self.pods_forbidden = False
        # Kubeflow Trainer v2: whether API discovery lists trainer.kubeflow.org/v1alpha1, and
        # its TrainJobs as the API server stores them ((namespace, name) -> object).
        self.trainer_served = True
        self.trainjobs: dict[tuple[str, str], dict] = {}
        self.deleted_trainjobs: list[str] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code: int, body=None, headers=None):
                data = b"" if body is None else (
                    body if isinstance(body, bytes) else json.dumps(body).encode()
                )  # fmt: skip
                self.send_response(code)
                for k, v in (headers or {"Content-Type": "application/json"}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self, method: str):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length).decode() if length else ""
                stub.requests.append(
                    {"method": method, "path": self.path,
                     "headers": {k.lower(): v for k, v in self.headers.items()},
                     "body": body}
                )  # fmt: skip
                url = urlparse(self.path)
                if stub.delay:
                    time.sleep(stub.delay)
                if url.path.startswith("/oauth/sign_in"):
                    return self._send(200, b"<html>Log in</html>", {"Content-Type": "text/html"})
                if stub.mode == "unauthorized" or (
                    url.path.startswith("/apis/v2beta1") and not stub.accepts(self.headers)
                ):
                    return self._send(401, _rpc_error(16, "Unauthorized"))
                if stub.mode == "login-redirect":
                    return self._send(302, b"", {"Location": "/oauth/sign_in?rd=" + url.path})
                if url.path.startswith("/api/v1/"):
                    return stub.core_route(self, url)
                if url.path in ("/apis", "/apis/") or url.path.startswith(f"/apis/{TRAINER}/"):
                    return stub.trainer_route(self, method, url, body)
                return stub.route(self, method, url, body)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

            def do_DELETE(self):
                self._handle("DELETE")

        self.server = _Server(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
            scheme = "https"
        self.port = self.server.server_address[1]
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def accepts(self, headers) -> bool:
        """Whether KFP takes this request's bearer token."""
        with self._lock:
            if self.refuse_next > 0:
                self.refuse_next -= 1
            elif self.valid_token is None:
                return True
            else:
                valid = {f"Bearer {t}" for t in (self.valid_token, self.grace_token) if t}
                if headers.get("Authorization", "") in valid:
                    return True
            self.refused += 1
            return False

    # ---- what the tests read ------------------------------------------------------------

    @property
    def runs(self) -> dict[str, dict]:
        return {k: _KFP.sanitize_for_serialization(r) for k, r in self._runs.items()}

    @property
    def experiments(self) -> dict[str, dict]:
        return {k: _KFP.sanitize_for_serialization(e) for k, e in self._experiments.items()}

    def run_for(self, job_uuid: str) -> dict:
        return next(r for r in self.runs.values() if r["display_name"] == job_uuid)

    # ---- the KFP API --------------------------------------------------------------------

    def route(self, h, method: str, url, body: str):
        p = url.path
        # The Kubernetes API's answer for OpenShift AI pipeline servers (DSPA discovery).
        for version in self.dspa_versions:
            dspa = f"/apis/datasciencepipelinesapplications.opendatahub.io/{version}/namespaces/"
            if p.startswith(dspa) and p.endswith("/datasciencepipelinesapplications"):
                namespace = p[len(dspa) :].split("/")[0]
                return h._send(200, {"apiVersion": f"datasciencepipelinesapplications."
                                     f"opendatahub.io/{version}", "kind": "List",
                                     "items": self.dspas.get(namespace, [])})  # fmt: skip
        if p == "/apis/v2beta1/healthz":
            health = _KFP.sanitize_for_serialization(
                kfp_api.V2beta1GetHealthzResponse(multi_user=False)
            )
            # The server also reports its version, which the client's model does not keep.
            return h._send(200, {**health, "tag_name": self.version, "commit_sha": "0" * 40})
        if p == "/apis/v2beta1/experiments" and method == "GET":
            names = _filter_names(url)
            found = [e for e in self._experiments.values() if e.display_name in names]
            listed = kfp_api.V2beta1ListExperimentsResponse(
                experiments=found or None, total_size=len(found) or None
            )
            return h._send(200, _KFP.sanitize_for_serialization(listed))
        if p == "/apis/v2beta1/experiments" and method == "POST":
            exp = _KFP._ApiClient__deserialize(json.loads(body), "V2beta1Experiment")
            exp.experiment_id, exp.created_at = str(uuid.uuid4()), _ago(0)
            exp.storage_state = "AVAILABLE"
            self._experiments[exp.experiment_id] = exp
            return h._send(200, _KFP.sanitize_for_serialization(exp))
        if p == "/apis/v2beta1/runs" and method == "POST":
            run = _KFP._ApiClient__deserialize(json.loads(body), "V2beta1Run")
            run.run_id, run.state = str(uuid.uuid4()), "PENDING"
            run.created_at = run.scheduled_at = _ago(self.age)
            # KFP answers Unix 0 for runs that have not finished.
            run.finished_at = datetime(1970, 1, 1, tzinfo=UTC)
            self._runs[run.run_id] = run
            if self.lose_create_answer:
                time.sleep(3)  # past the client's read timeout: it never sees the run id
            return h._send(200, _KFP.sanitize_for_serialization(run))
        if p == "/apis/v2beta1/runs" and method == "GET":
            names = _filter_names(url)
            found = [r for r in self._runs.values() if not names or r.display_name in names]
            listed = kfp_api.V2beta1ListRunsResponse(runs=found or None,
                                                    total_size=len(found) or None)  # fmt: skip
            return h._send(200, _KFP.sanitize_for_serialization(listed))
        if p.startswith("/apis/v2beta1/runs/"):
            rest = p[len("/apis/v2beta1/runs/") :]
            if rest.endswith(":terminate") and method == "POST":
                run = self._runs[rest[: -len(":terminate")]]
                if run.state in ENDED:
                    # As KFP's run store does: only PENDING/RUNNING/PAUSED runs terminate.
                    return h._send(400, _rpc_error(9, "run cannot be terminated"))
                self.terminated.append(run.run_id)
                run.state = "CANCELED"
                return h._send(200, {})
            if rest in self._runs and method == "GET":
                return h._send(200, _KFP.sanitize_for_serialization(self._runs[rest]))
        return h._send(404, _rpc_error(5, f"no route {method} {p}"))

    def set_state(self, run_id: str, state: str, task_error: tuple[str, str] | None = None) -> None:
        """`task_error` = (task, reason): the task failed as a pod does (OOMKilled, image pull),
        reported in run_details.task_details as KFP's API server reports it."""
        run = self._runs[run_id]
        run.state = state
        if task_error is not None:
            task, reason = task_error
            run.run_details = kfp_api.V2beta1RunDetails(task_details=[
                kfp_api.V2beta1PipelineTaskDetail(display_name="prepare-data", state="SUCCEEDED"),
                kfp_api.V2beta1PipelineTaskDetail(
                    display_name=task, state="FAILED",
                    error=kfp_api.GoogleRpcStatus(code=9, message=reason),
                ),
            ])  # fmt: skip
        if state in ENDED:
            run.finished_at = _ago(0)

    # ---- the Kubernetes API: a run's pods and events ------------------------------------

    def add_pod(
        self,
        run_id: str,
        name: str,
        *,
        namespace: str = "team-a",
        phase: str = "Pending",
        waiting: tuple[str, str] | None = None,
        terminated: tuple[str, int] | None = None,
        unschedulable: str | None = None,
        age: float = 0.0,
    ) -> None:
        """A pod of the run as the kubelet and scheduler report it: its main container
        waiting (reason, message) or terminated (reason, exit code), or not schedulable."""
        state = k8s.V1ContainerState(
            waiting=k8s.V1ContainerStateWaiting(reason=waiting[0], message=waiting[1])
            if waiting else None,
            terminated=k8s.V1ContainerStateTerminated(reason=terminated[0],
                                                      exit_code=terminated[1])
            if terminated else None,
        )  # fmt: skip
        status = k8s.V1PodStatus(phase=phase)
        if unschedulable:
            status.conditions = [k8s.V1PodCondition(type="PodScheduled", status="False",
                                                    reason="Unschedulable",
                                                    message=unschedulable)]  # fmt: skip
        else:
            status.container_statuses = [k8s.V1ContainerStatus(
                name="main", image="llama-stack-provider-kfp:0.1.0", image_id="", ready=False,
                restart_count=0, state=state,
            )]  # fmt: skip
        pod = k8s.V1Pod(
            api_version="v1", kind="Pod",
            metadata=k8s.V1ObjectMeta(name=name, namespace=namespace, uid=str(uuid.uuid4()),
                                      labels={RUN_LABEL: run_id},
                                      creation_timestamp=_ago(age)),
            status=status,
        )  # fmt: skip
        pods = self._pods.setdefault(namespace, [])
        pods[:] = [p for p in pods if p.metadata.name != name] + [pod]

    def add_event(self, pod: str, reason: str, message: str, namespace: str = "team-a") -> None:
        """A Warning event about a pod (FailedScheduling, FailedMount, ...)."""
        self._events.setdefault(namespace, []).append(k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(name=f"{pod}.{uuid.uuid4().hex[:8]}", namespace=namespace),
            involved_object=k8s.V1ObjectReference(kind="Pod", name=pod, namespace=namespace),
            reason=reason, message=message, type="Warning", count=1, last_timestamp=_ago(0),
        ))  # fmt: skip

    def core_route(self, h, url):
        parts = url.path.strip("/").split("/")  # api v1 namespaces <ns> pods|events
        query = {k: v[0] for k, v in parse_qs(url.query).items()}
        if len(parts) == 6 and parts[4] == "pods":  # one pod, by name
            pod = next((p for p in self._pods.get(parts[3], []) if p.metadata.name == parts[5]),
                       None)  # fmt: skip
            if pod is None:
                return h._send(404, _k8s_status(404, "NotFound", f'pods "{parts[5]}" not found'))
            return h._send(200, _K8S.sanitize_for_serialization(pod))
        if len(parts) != 5 or parts[2] != "namespaces" or parts[4] not in ("pods", "events"):
            return h._send(404, _k8s_status(404, "NotFound", f"no route {url.path}"))
        namespace, kind = parts[3], parts[4]
        if self.pods_forbidden:
            return h._send(403, _k8s_status(403, "Forbidden", f'{kind} is forbidden: User '
                                            f'cannot list resource "{kind}" in namespace'
                                            f' "{namespace}"'))  # fmt: skip
        if kind == "pods":
            key, _, value = query.get("labelSelector", "").partition("=")
            items = [p for p in self._pods.get(namespace, [])
                     if not key or (p.metadata.labels or {}).get(key) == value]  # fmt: skip
            listed = k8s.V1PodList(api_version="v1", kind="PodList", items=items,
                                   metadata=k8s.V1ListMeta())  # fmt: skip
            return h._send(200, _K8S.sanitize_for_serialization(listed))
        wanted = dict(
            term.split("=", 1) for term in query.get("fieldSelector", "").split(",") if term
        )
        events = [
            e for e in self._events.get(namespace, [])
            if wanted.get("involvedObject.name", e.involved_object.name) == e.involved_object.name
            and wanted.get("involvedObject.kind", "Pod") == e.involved_object.kind
        ]  # fmt: skip
        listed = k8s.CoreV1EventList(api_version="v1", kind="EventList", items=events,
                                     metadata=k8s.V1ListMeta())  # fmt: skip
        return h._send(200, _K8S.sanitize_for_serialization(listed))

    # ---- the Kubernetes API: discovery and Kubeflow Trainer v2 TrainJobs -----------------

    def trainer_route(self, h, method: str, url, body: str):
        p = url.path
        if p in ("/apis", "/apis/"):  # API discovery: the groups the cluster serves
            groups = [_group("datasciencepipelinesapplications.opendatahub.io", "v1")]
            if self.trainer_served:
                groups.append(_group(TRAINER, TRAINER_VERSION))
            listed = k8s.V1APIGroupList(api_version="v1", kind="APIGroupList", groups=groups)
            return h._send(200, _K8S.sanitize_for_serialization(listed))
        parts = p.strip("/").split(
            "/"
        )  # apis trainer.kubeflow.org v1alpha1 namespaces ns trainjobs [name]
        if not self.trainer_served or len(parts) not in (6, 7) or parts[5] != "trainjobs":
            return h._send(404, _k8s_status(404, "NotFound", "the server could not find the "
                                            "requested resource"))  # fmt: skip
        namespace = parts[4]
        if method == "POST":
            obj = json.loads(body)
            dropped = _unknown_fields(obj)
            if dropped:  # the CRD's structural schema would prune them: refuse instead
                why = f"TrainJob fields unknown to {TRAINER}/{TRAINER_VERSION}: {dropped}"
                return h._send(422, _k8s_status(422, "Invalid", why))
            key = (namespace, obj["metadata"]["name"])
            if key in self.trainjobs:
                return h._send(409, _k8s_status(409, "AlreadyExists", f'trainjobs.{TRAINER} '
                                                f'"{key[1]}" already exists'))  # fmt: skip
            created = _ago(0).strftime("%Y-%m-%dT%H:%M:%SZ")
            obj["metadata"].update(uid=str(uuid.uuid4()), resourceVersion="1", generation=1,
                                   creationTimestamp=created)  # fmt: skip
            obj["status"] = {}
            self.trainjobs[key] = obj
            return h._send(201, obj)
        if len(parts) == 6 and method == "GET":
            key_, _, value = parse_qs(url.query).get("labelSelector", [""])[0].partition("=")
            items = [o for (ns, _), o in self.trainjobs.items() if ns == namespace and (
                not key_ or (o["metadata"].get("labels") or {}).get(key_) == value)]  # fmt: skip
            return h._send(200, {"apiVersion": f"{TRAINER}/{TRAINER_VERSION}",
                                 "kind": "TrainJobList", "metadata": {"resourceVersion": "1"},
                                 "items": items})  # fmt: skip
        key = (namespace, parts[6]) if len(parts) == 7 else ("", "")
        if key not in self.trainjobs:
            return h._send(404, _k8s_status(404, "NotFound", f'trainjobs.{TRAINER} "{key[1]}" '
                                            "not found"))  # fmt: skip
        if method == "DELETE":
            self.trainjobs.pop(key)
            self.deleted_trainjobs.append(key[1])
            status = k8s.V1Status(api_version="v1", kind="Status", status="Success",
                                  details=k8s.V1StatusDetails(name=key[1], group=TRAINER,
                                                              kind="trainjobs"))  # fmt: skip
            return h._send(200, _K8S.sanitize_for_serialization(status))
        return h._send(200, self.trainjobs[key])

    def trainjob(self, name: str | None = None, namespace: str = "team-a") -> dict:
        """The TrainJob of that name (the only one when no name is given)."""
        if name is None:
            (obj,) = [o for (ns, _), o in self.trainjobs.items() if ns == namespace]
            return obj
        return self.trainjobs[(namespace, name)]

    def set_trainjob_condition(self, name: str, kind: str, reason: str, message: str,
                               namespace: str = "team-a") -> None:  # fmt: skip
        """A status condition as Trainer sets it from its JobSet (Complete: AllJobsCompleted;
        Failed: e.g. FailedJobs with the JobSet's message)."""
        cond = k8s.V1Condition(type=kind, status="True", reason=reason, message=message,
                               last_transition_time=_ago(0), observed_generation=1)  # fmt: skip
        obj = self.trainjobs[(namespace, name)]
        obj["status"] = {"conditions": [_K8S.sanitize_for_serialization(cond)]}

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _Server(ThreadingHTTPServer):
    # A real API server's backlog: with the socketserver default (5), concurrent clients
    # see connections reset, which urllib3 retries with the headers it built first.
    request_queue_size = 128


def _unknown_fields(obj: dict) -> list[str]:
    """Paths of `obj` that Kubeflow Trainer's own TrainJob models (kubeflow-trainer-api, the
    v2.3 CRD schema) do not keep: a misspelt or outdated field."""
    from kubeflow_trainer_api.models import TrainerV1alpha1TrainJob

    kept = json.loads(json.dumps(TrainerV1alpha1TrainJob.from_dict(obj).to_dict(), default=str))

    def diff(a, b, path: str) -> list[str]:
        if isinstance(a, dict):
            b = b if isinstance(b, dict) else {}
            return [p for k, v in a.items() for p in diff(v, b.get(k), f"{path}.{k}")]
        if isinstance(a, list):
            b = b if isinstance(b, list) else []
            return [p for i, v in enumerate(a)
                    for p in diff(v, b[i] if i < len(b) else None, f"{path}[{i}]")]  # fmt: skip
        return [] if b is not None else [path]

    return diff(obj, kept, "")


def _group(name: str, version: str) -> k8s.V1APIGroup:
    gv = k8s.V1GroupVersionForDiscovery(group_version=f"{name}/{version}", version=version)
    return k8s.V1APIGroup(name=name, versions=[gv], preferred_version=gv)


def _filter_names(url) -> set[str]:
    flt = json.loads(parse_qs(url.query).get("filter", ["{}"])[0] or "{}")
    predicates = flt.get("predicates", [])
    return {pr.get("string_value") for pr in predicates if pr.get("key") == "display_name"}


def _rpc_error(code: int, message: str) -> dict:
    """grpc-gateway's error body: a google.rpc.Status (plus the legacy `error` text)."""
    status = _KFP.sanitize_for_serialization(kfp_api.GoogleRpcStatus(code=code, message=message))
    return {**status, "error": message}


def _k8s_status(code: int, reason: str, message: str) -> dict:
    status = k8s.V1Status(
        api_version="v1", kind="Status", status="Failure", code=code, reason=reason,
        message=message,
    )  # fmt: skip
    return _K8S.sanitize_for_serialization(status)
