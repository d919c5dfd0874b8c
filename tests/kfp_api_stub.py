"""Stand-in for a Kubeflow Pipelines v2 API server (no cluster can run here).

Speaks the subset of /apis/v2beta1 that kfp.Client uses to submit, poll and terminate:
healthz, experiments (list by name, create), runs (create, get, terminate). The test drives
run states by hand. Modes imitate what real deployments do: `ok`, `unauthorized` (401), and
`login-redirect` (an OAuth proxy answering 302 to an HTML login page).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


class KFPStub:
    def __init__(self) -> None:
        self.mode = "ok"
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
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
        # OpenShift token does).
        self.valid_token: str | None = None
        # Seconds in the past new runs are created at (a run stuck PENDING for that long).
        self.age = 0.0
        # Create the run, then answer too late for the client (its answer is lost).
        self.lose_create_answer = False
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
                bearer = self.headers.get("Authorization", "")
                if stub.mode == "unauthorized" or (
                    stub.valid_token and url.path.startswith("/apis/v2beta1")
                    and bearer != f"Bearer {stub.valid_token}"
                ):  # fmt: skip
                    return self._send(401, {"error": "Unauthorized", "code": 16})
                if stub.mode == "login-redirect":
                    return self._send(302, b"", {"Location": "/oauth/sign_in?rd=" + url.path})
                return stub.route(self, method, url, body)

            def do_GET(self):
                self._handle("GET")

            def do_POST(self):
                self._handle("POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def route(self, h, method: str, url, body: str):
        p = url.path
        # The Kubernetes API's answer for OpenShift AI pipeline servers (DSPA discovery).
        for version in self.dspa_versions:
            dspa = f"/apis/datasciencepipelinesapplications.opendatahub.io/{version}/namespaces/"
            if p.startswith(dspa) and p.endswith("/datasciencepipelinesapplications"):
                namespace = p[len(dspa) :].split("/")[0]
                return h._send(200, {"items": self.dspas.get(namespace, [])})
        if p == "/apis/v2beta1/healthz":
            return h._send(200, {"multi_user": False, "tag_name": self.version,
                                 "commit_sha": "0" * 40})  # fmt: skip
        if p == "/apis/v2beta1/experiments" and method == "GET":
            flt = json.loads(parse_qs(url.query).get("filter", ["{}"])[0] or "{}")
            names = [
                pr.get("string_value") for pr in flt.get("predicates", [])
                if pr.get("key") == "display_name"
            ]  # fmt: skip
            found = [e for e in self.experiments.values() if e["display_name"] in names]
            return h._send(200, {"experiments": found} if found else {})
        if p == "/apis/v2beta1/experiments" and method == "POST":
            exp = json.loads(body)
            exp["experiment_id"] = str(uuid.uuid4())
            self.experiments[exp["experiment_id"]] = exp
            return h._send(200, exp)
        if p == "/apis/v2beta1/runs" and method == "POST":
            run = json.loads(body)
            # KFP answers Unix 0 for runs that have not finished.
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - self.age))
            run.update(run_id=str(uuid.uuid4()), state="PENDING", created_at=now,
                       finished_at="1970-01-01T00:00:00Z")  # fmt: skip
            self.runs[run["run_id"]] = run
            if self.lose_create_answer:
                time.sleep(3)  # past the client's read timeout: it never sees the run id
            return h._send(200, run)
        if p == "/apis/v2beta1/runs" and method == "GET":
            flt = json.loads(parse_qs(url.query).get("filter", ["{}"])[0] or "{}")
            names = {pr.get("string_value") for pr in flt.get("predicates", [])
                     if pr.get("key") == "display_name"}  # fmt: skip
            found = [r for r in self.runs.values() if not names or r["display_name"] in names]
            return h._send(200, {"runs": found, "total_size": len(found)} if found else {})
        if p.startswith("/apis/v2beta1/runs/"):
            rest = p[len("/apis/v2beta1/runs/") :]
            if rest.endswith(":terminate") and method == "POST":
                run_id = rest[: -len(":terminate")]
                if self.runs[run_id]["state"] in ("SUCCEEDED", "FAILED", "SKIPPED", "CANCELED"):
                    # As KFP's run store does: only PENDING/RUNNING/PAUSED runs terminate.
                    return h._send(400, {"error": "run cannot be terminated", "code": 9})
                self.terminated.append(run_id)
                self.runs[run_id]["state"] = "CANCELED"
                return h._send(200, {})
            if rest in self.runs and method == "GET":
                return h._send(200, self.runs[rest])
        return h._send(404, {"error": f"no route {method} {p}", "code": 5})

    def set_state(self, run_id: str, state: str, task_error: tuple[str, str] | None = None) -> None:
        """`task_error` = (task, reason): the task failed as a pod does (OOMKilled, image pull),
        reported in run_details.task_details as KFP's API server reports it."""
        self.runs[run_id]["state"] = state
        if task_error is not None:
            task, reason = task_error
            self.runs[run_id]["run_details"] = {"task_details": [
                {"display_name": "prepare-data", "state": "SUCCEEDED"},
                {"display_name": task, "state": "FAILED", "error": {"code": 9, "message": reason}},
            ]}  # fmt: skip
        if state in ("SUCCEEDED", "FAILED", "CANCELED"):
            self.runs[run_id]["finished_at"] = "2026-11-24T00:10:00Z"

    def run_for(self, job_uuid: str) -> dict:
        return next(r for r in self.runs.values() if r["display_name"] == job_uuid)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
