"""A stand-in KFP v2beta1 REST API on 127.0.0.1 that records every request.

It answers the calls ``kfp.Client`` makes for upload, version upload, experiments, runs
and recurring runs, with the field names of the real API, so the tests can check the
exact requests ``entropy-ft submit`` and ``schedule`` send.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse


@dataclass
class Recorded:
    method: str
    path: str
    query: dict
    body: bytes
    headers: dict  # names lower-cased

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class FakeKfp:
    requests: list[Recorded] = field(default_factory=list)
    pipelines: dict[str, str] = field(default_factory=dict)  # name -> id
    versions: dict[str, list[str]] = field(default_factory=dict)  # pipeline id -> version ids
    experiments: dict[str, str] = field(default_factory=dict)  # name -> id
    recurring: dict[str, dict] = field(default_factory=dict)  # id -> the recurring run as created
    created_recurring: int = 0
    url: str = ""

    def find(self, method: str, path_part: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and path_part in r.path]


def _handler(state: FakeKfp):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:  # keep test output clean
            pass

        def _reply(self, payload: dict, code: int = 200) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> Recorded:
            url = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            rec = Recorded(self.command, url.path, parse_qs(url.query), self.rfile.read(length),
                           {k.lower(): v for k, v in self.headers.items()})
            state.requests.append(rec)
            return rec

        def do_GET(self) -> None:  # noqa: N802 (http.server API)
            rec = self._record()
            if rec.path == "/apis/v2beta1/healthz":
                return self._reply({"multi_user": False})
            if rec.path == "/apis/v2beta1/pipelines":
                name = _filter_value(rec.query)
                found = ([{"pipeline_id": state.pipelines[name], "display_name": name}]
                         if name in state.pipelines else [])
                return self._reply({"pipelines": found, "total_size": len(found)} if found else {})
            if rec.path.startswith("/apis/v2beta1/pipelines/") and rec.path.endswith("/versions"):
                pid = rec.path.split("/")[4]
                vids = state.versions.get(pid, [])
                versions = [{"pipeline_id": pid, "pipeline_version_id": v} for v in reversed(vids)]
                return self._reply({"pipeline_versions": versions, "total_size": len(vids)})
            if rec.path == "/apis/v2beta1/experiments":
                name = _filter_value(rec.query)
                found = ([{"experiment_id": state.experiments[name], "display_name": name}]
                         if name in state.experiments else [])
                return self._reply({"experiments": found} if found else {})
            if rec.path == "/apis/v2beta1/recurringruns":
                experiment = rec.query.get("experiment_id", [None])[0]
                name = _filter_value(rec.query)
                found = [job for job in state.recurring.values()
                         if job["experiment_id"] == experiment and name in (None, job["display_name"])]
                return self._reply({"recurringRuns": found, "total_size": len(found)} if found else {})
            self._reply({"error": f"unexpected GET {rec.path}"}, 404)

        def do_DELETE(self) -> None:  # noqa: N802
            rec = self._record()
            if rec.path.startswith("/apis/v2beta1/recurringruns/"):
                job_id = rec.path.rsplit("/", 1)[1]
                if state.recurring.pop(job_id, None) is None:
                    return self._reply({"error": f"no recurring run {job_id}"}, 404)
                return self._reply({})
            self._reply({"error": f"unexpected DELETE {rec.path}"}, 404)

        def do_POST(self) -> None:  # noqa: N802
            rec = self._record()
            if rec.path == "/apis/v2beta1/pipelines/upload":
                name = rec.query["name"][0]
                pid = f"pipeline-{len(state.pipelines) + 1}"
                state.pipelines[name] = pid
                state.versions[pid] = [f"{pid}-version-1"]
                return self._reply({"pipeline_id": pid, "display_name": name})
            if rec.path == "/apis/v2beta1/pipelines/upload_version":
                pid = rec.query["pipelineid"][0]
                vid = f"{pid}-version-{len(state.versions[pid]) + 1}"
                state.versions[pid].append(vid)
                return self._reply({"pipeline_id": pid, "pipeline_version_id": vid,
                                    "display_name": rec.query["name"][0]})
            if rec.path == "/apis/v2beta1/experiments":
                body = rec.json()
                eid = f"experiment-{len(state.experiments) + 1}"
                state.experiments[body["display_name"]] = eid
                return self._reply({"experiment_id": eid, "display_name": body["display_name"]})
            if rec.path == "/apis/v2beta1/runs":
                return self._reply({"run_id": "run-1", **rec.json()})
            if rec.path == "/apis/v2beta1/recurringruns":
                state.created_recurring += 1
                job = {**rec.json(), "recurring_run_id": f"recurring-{state.created_recurring}"}
                state.recurring[job["recurring_run_id"]] = job
                return self._reply(job)
            self._reply({"error": f"unexpected POST {rec.path}"}, 404)

    return Handler


def _filter_value(query: dict) -> str | None:
    raw = query.get("filter", [None])[0]
    if not raw:
        return None
    return json.loads(raw)["predicates"][0]["string_value" if "string_value" in raw else "stringValue"]


def start() -> tuple[FakeKfp, ThreadingHTTPServer]:
    state = FakeKfp()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return state, server
