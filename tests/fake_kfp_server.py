"""An in-memory Kubeflow Pipelines REST API (v2beta1) on 127.0.0.1, for tests.

It answers the calls kfp.Client 2.17 makes to upload, run and schedule a pipeline (the
paths and JSON fields are those of ``kfp_server_api`` 2.17.3) and records every request:

    GET  /apis/v2beta1/healthz
    GET  /apis/v2beta1/pipelines?filter=...           (display_name EQUALS)
    POST /apis/v2beta1/pipelines/upload               (multipart ``uploadfile``; ?name=)
    POST /apis/v2beta1/pipelines/upload_version       (multipart; ?name=&pipelineid=)
    GET  /apis/v2beta1/pipelines/{id}/versions
    GET  /apis/v2beta1/experiments?filter=...         (display_name EQUALS)
    POST /apis/v2beta1/experiments
    POST /apis/v2beta1/runs
    POST /apis/v2beta1/recurringruns

Like the real server, it refuses a second pipeline or version with the same name (409),
returns each version's ``pipeline_spec`` (the package's spec, or ``{"pipeline_spec",
"platform_spec"}`` for a package with a platform document), and answers every request with
``refuse_with`` (e.g. 401) when that is set.

    with FakeKfpServer() as server:
        client = kfp.Client(host=server.url)
        ...
        server.requests[-1].json()["runtime_config"]["parameters"]
"""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import http.server
import json
import threading
import urllib.parse
import uuid
from typing import Any

import yaml

API = "/apis/v2beta1"
CREATED_AT = "2026-11-27T12:00:00Z"


@dataclasses.dataclass
class Request:
    """One recorded request: ``headers`` keys are lower case, ``query`` values lists."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def form(self) -> dict[str, bytes]:
        """The parts of a multipart/form-data body: ``{field name: content bytes}``."""
        head = f"Content-Type: {self.headers['content-type']}\r\n\r\n".encode()
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + self.body)
        return {
            part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.iter_parts()
        }


class FakeKfpServer:
    """The fake API in a background thread; ``url`` is ``http://127.0.0.1:<free port>``."""

    def __init__(self, multi_user: bool = False, refuse_with: int | None = None) -> None:
        self.multi_user = multi_user
        self.refuse_with = refuse_with
        self.requests: list[Request] = []
        self.pipelines: dict[str, dict] = {}
        self.versions: dict[str, list[dict]] = {}  # pipeline id -> versions, oldest first
        self.experiments: dict[str, dict] = {}
        self.runs: dict[str, dict] = {}
        self.recurring_runs: dict[str, dict] = {}
        self._httpd = http.server.HTTPServer(("127.0.0.1", 0), _handler(self))
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.01}, daemon=True
        )
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> FakeKfpServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def calls(self, method: str, path: str) -> list[Request]:
        """The recorded requests to ``method path`` (path without ``/apis/v2beta1``)."""
        return [r for r in self.requests if r.method == method and r.path == API + path]

    # ------------------------------------------------------------------ routes

    def answer(self, request: Request) -> tuple[int, dict]:
        route = request.path.removeprefix(API)
        q = {k: v[0] for k, v in request.query.items()}
        if self.refuse_with is not None:
            return self.refuse_with, {"code": 16, "message": "Unauthenticated request"}
        if (request.method, route) == ("GET", "/healthz"):
            return 200, {"multi_user": self.multi_user}
        if (request.method, route) == ("GET", "/pipelines"):
            return 200, _listing("pipelines", self.pipelines.values(), q.get("filter"))
        if (request.method, route) == ("POST", "/pipelines/upload"):
            return self._upload(q["name"], q.get("description"), request.form()["uploadfile"])
        if (request.method, route) == ("POST", "/pipelines/upload_version"):
            return self._upload_version(q["pipelineid"], q["name"], request.form()["uploadfile"])
        if request.method == "GET" and route.startswith("/pipelines/"):
            pipeline_id = route.split("/")[2]
            newest_first = list(reversed(self.versions.get(pipeline_id, [])))
            return 200, _listing("pipeline_versions", newest_first, None)
        if (request.method, route) == ("GET", "/experiments"):
            return 200, _listing("experiments", self.experiments.values(), q.get("filter"))
        if (request.method, route) == ("POST", "/experiments"):
            return 200, _create(self.experiments, "experiment_id", request.json())
        if (request.method, route) == ("POST", "/runs"):
            return 200, _create(self.runs, "run_id", {**request.json(), "state": "PENDING"})
        if (request.method, route) == ("POST", "/recurringruns"):
            body = {**request.json(), "status": "ENABLED"}
            return 200, _create(self.recurring_runs, "recurring_run_id", body)
        return 404, {"code": 5, "message": f"no route {request.method} {request.path}"}

    def _upload(self, name: str, description: str | None, package: bytes) -> tuple[int, dict]:
        if any(p["display_name"] == name for p in self.pipelines.values()):
            return 409, {"code": 6, "message": f"pipeline {name!r} already exists"}
        pipeline = _create(self.pipelines, "pipeline_id", {"display_name": name, "name": name})
        if description:
            pipeline["description"] = description
        self.versions[pipeline["pipeline_id"]] = []
        self._upload_version(pipeline["pipeline_id"], name, package)
        return 200, pipeline

    def _upload_version(self, pipeline_id: str, name: str, package: bytes) -> tuple[int, dict]:
        if pipeline_id not in self.pipelines:
            return 404, {"code": 5, "message": f"pipeline {pipeline_id} not found"}
        if any(v["display_name"] == name for v in self.versions[pipeline_id]):
            return 409, {"code": 6, "message": f"version {name!r} already exists"}
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": str(uuid.uuid4()),
            "display_name": name,
            "name": name,
            "created_at": CREATED_AT,
            "pipeline_spec": _server_spec(package),
        }
        self.versions[pipeline_id].append(version)
        return 200, version


def _server_spec(package: bytes) -> dict:
    """A version's ``pipeline_spec`` as the v2beta1 API returns it."""
    documents = [d for d in yaml.safe_load_all(package) if d is not None]
    if len(documents) == 1:
        return documents[0]
    return {"pipeline_spec": documents[0], "platform_spec": documents[1]}


def _create(table: dict[str, dict], id_field: str, body: dict) -> dict:
    item = {**body, id_field: str(uuid.uuid4()), "created_at": CREATED_AT}
    table[item[id_field]] = item
    return item


def _listing(field: str, items, filter_json: str | None) -> dict:
    """A List*Response; the filter is kfp.Client's ``display_name EQUALS`` predicate."""
    items = list(items)
    if filter_json:
        for predicate in json.loads(filter_json)["predicates"]:
            key, value = predicate["key"], predicate["stringValue"]
            items = [i for i in items if i.get(key) == value]
    # The real server leaves out an empty list; kfp.Client relies on that (None).
    return {field: items, "total_size": len(items)} if items else {}


def _handler(server: FakeKfpServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        timeout = 5  # seconds a stuck connection may hold the (single) server thread

        def _serve(self) -> None:
            url = urllib.parse.urlsplit(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            request = Request(
                method=self.command,
                path=url.path,
                query=urllib.parse.parse_qs(url.query),
                headers={k.lower(): v for k, v in self.headers.items()},
                body=self.rfile.read(length),
            )
            server.requests.append(request)
            status, payload = server.answer(request)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_DELETE = _serve

        def log_message(self, format: str, *args: object) -> None:
            pass  # keep pytest's output clean

    return Handler
