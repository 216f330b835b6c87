"""The HTTP face of ``deepfm serve``, built from the ``kserve`` SDK's model server parts:
``DeepFMModel`` is a ``kserve.Model`` (KServe's preprocess -> predict -> postprocess, with
its latency histograms), registered in a ``kserve.ModelRepository`` behind KServe's
``DataPlane``, which KServe's own V1 and Open Inference Protocol (V2) routers, error
handlers and ``/metrics`` serve.

Routes (``<name>`` is ``--name``, default ``deepfm``)::

    POST /v1/models/<name>:predict     KServe V1 {"instances": [...]} -> {"predictions": [...],
                                       "model_name", "model_version"}
    POST /v2/models/<name>/infer       V2 {"inputs": [tensors]} -> {"outputs": [{"name":
                                       "predictions", ...}], "model_version", ...}
    GET  /v1/models/<name>             ready + what is serving (version, inputs, last reload error)
    GET  /v2/models/<name>             V2 model metadata (input tensors from the feature spec)
    GET  /v2/models/<name>/ready, /v2/health/live, /v2/health/ready, /v2, /v1/models, /v2/models
    GET  /metrics                      Prometheus (serving/metrics.py and KServe's histograms)
    GET  /healthz, GET /               liveness
    GET  /readyz                       readiness: 200 once a model is loaded, else 503

Why not ``kserve.ModelServer.start()`` itself: it serves one FastAPI app that is global to
the process (built when ``kserve`` is imported, after parsing ``sys.argv``), starts a gRPC
server beside it and installs its own signal handlers, so neither ``deepfm serve``'s flags
nor a server per test could use it. ``create_app`` assembles the same parts per server.

Errors are JSON ``{"error": "..."}``, never a stack trace: 400 any invalid input (the body,
a field, a tensor: serving/checks.py); 404 an unknown model or path; 405 a wrong method
(the message names the right one); 413 a body over ``--max-body-bytes`` or more than
``--max-candidates`` candidates; 501 a verb this model does not implement (``:explain``);
503 no model loaded yet, or the feature store failed; 500 only for a bug (logged).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
import uuid
from typing import TYPE_CHECKING, Any

from fastapi import Request  # a route's parameter types must resolve at module level

from serving import metrics
from serving.checks import BAD_REQUEST, TOO_LARGE, RequestError

if TYPE_CHECKING:
    from fastapi import FastAPI

    from serving.server import ModelServer

log = logging.getLogger("deepfm.serve")


def _kserve():
    """``import kserve`` without letting it read this process's command line: KServe's
    model server module parses ``sys.argv`` when imported (prefixes included, so
    ``--timeout 60`` would be taken for its ``--timeout-keep-alive``)."""
    if "kserve" not in sys.modules:
        argv = sys.argv
        sys.argv = argv[:1]
        try:
            import kserve  # noqa: F401
        finally:
            sys.argv = argv
    return sys.modules["kserve"]


def model_class() -> type:
    """``DeepFMModel``, defined on first use (it subclasses ``kserve.Model``)."""
    global _MODEL_CLASS
    if _MODEL_CLASS is None:
        _MODEL_CLASS = _define_model(_kserve())
    return _MODEL_CLASS


_MODEL_CLASS: type | None = None


def _define_model(kserve: Any) -> type:
    import numpy as np
    from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    class DeepFMModel(kserve.Model):
        """The serving model as KServe sees it: ``load()`` loads the current model
        (``ModelServer.refresh``: the model directory, checked, with the Feast online
        store behind it); ``preprocess`` checks a V1 body or V2 tensors against the
        feature spec; ``predict`` reads what the candidates lack from the online store
        and scores them. Ready while a model is loaded."""

        def __init__(self, server: ModelServer) -> None:
            self.server = server
            super().__init__(server.options.name)

        @property
        def ready(self) -> bool:
            return self.server.loaded is not None

        @ready.setter
        def ready(self, value: bool) -> None:
            """KServe sets this; here readiness is whether a model is loaded."""

        def load(self) -> bool:
            self.server.refresh()
            return self.ready

        async def preprocess(self, payload: Any, headers: dict | None = None) -> dict:
            checks = self.server.checks
            if isinstance(payload, InferRequest):
                inputs = [(i.name, i.shape, i.datatype, i.data) for i in payload.inputs]
                batch = await asyncio.to_thread(checks.v2, inputs)
                return {"batch": batch, "v2": payload}
            return {"batch": await asyncio.to_thread(checks.v1, payload)}

        async def predict(self, payload: dict, headers: dict | None = None) -> Any:
            batch = payload["batch"]
            scores, loaded = await asyncio.to_thread(self.server.score, batch)
            request = payload.get("v2")
            if request is None:
                return {
                    "predictions": scores.tolist(),
                    "model_name": self.name,
                    "model_version": loaded.version,
                }
            scores = np.asarray(scores, dtype=np.float64)  # as V1's JSON numbers
            output = InferOutput("predictions", [len(scores)], "FP64", data=scores)
            return InferResponse(
                response_id=request.id or str(uuid.uuid4()),
                model_name=self.name,
                model_version=loaded.version,
                infer_outputs=[output],
            )

        def get_input_types(self) -> list[dict]:
            return self.server.checks.v2_inputs()

        def get_output_types(self) -> list[dict]:
            return [{"name": "predictions", "datatype": "FP64", "shape": [-1]}]

    return DeepFMModel


# ------------------------------------------------------------------------------ the app


def _error(status: int, message: str, headers: dict[str, str] | None = None):
    from fastapi.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status, headers=headers)


class _Limits:
    """ASGI middleware: reads a request's whole body first, answering 413 as soon as it
    is known to exceed ``limit`` bytes (declared or streamed), and times and counts the
    inference requests (``deepfm_request_seconds``, ``deepfm_requests_total``)."""

    def __init__(self, app: Any, limit: int, name: str) -> None:
        self.app, self.limit, self.name = app, limit, name

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        protocol = "v1" if path.endswith(":predict") else "v2" if path.endswith("/infer") else None
        start = time.perf_counter()
        status: list[int] = []

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
            await send(message)

        try:
            body = await self._body(scope, receive)
            if body is None:
                response = _error(
                    TOO_LARGE, f"the body is larger than the limit of {self.limit:,} bytes"
                )
                await response(scope, receive, sending)
                return
            sent = False

            async def replay() -> dict:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()  # http.disconnect, once the client goes

            await self.app(scope, replay, sending)
        finally:
            if protocol is not None:
                metrics.REQUEST_SECONDS.labels(self.name, protocol).observe(
                    time.perf_counter() - start
                )
                code = str(status[0]) if status else "none"
                metrics.REQUESTS.labels(self.name, protocol, code).inc()

    async def _body(self, scope: dict, receive: Any) -> bytes | None:
        """The request body, or None when it is larger than the limit."""
        for key, value in scope.get("headers", ()):
            if key == b"content-length" and value.isdigit() and int(value) > self.limit:
                return None
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)


def create_app(server: ModelServer) -> FastAPI:
    """The ASGI app of ``server`` (routes and errors in the module docstring)."""
    kserve = _kserve()
    from fastapi import FastAPI
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from kserve.errors import (
        InferenceError,
        InvalidInput,
        ModelNotFound,
        ModelNotReady,
        ServerNotLive,
        ServerNotReady,
    )
    from kserve.protocol.dataplane import DataPlane
    from kserve.protocol.model_repository_extension import ModelRepositoryExtension
    from kserve.protocol.rest.server import metrics_handler
    from kserve.protocol.rest.v1_endpoints import register_v1_endpoints
    from kserve.protocol.rest.v2_endpoints import register_v2_endpoints
    from starlette.exceptions import HTTPException

    from serving.server import FeatureStoreUnavailable

    name = server.options.name
    model = model_class()(server)
    repository = kserve.ModelRepository()
    repository.update(model)
    dataplane = DataPlane(model_registry=repository)
    extension = ModelRepositoryExtension(model_registry=repository)

    app = FastAPI(
        title="deepfm",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )

    async def healthz() -> dict:
        return {"status": "alive"}

    async def readyz():
        loaded = server.loaded
        if loaded is None:
            return JSONResponse({"ready": False}, status_code=503)
        return {"ready": True, "model_version": loaded.version}

    async def v1_model(model_name: str, request: Request):
        if model_name.endswith((":predict", ":explain")):
            return _error(405, f"use POST {request.url.path}", {"Allow": "POST"})
        if model_name != name:
            raise ModelNotFound(model_name)
        metadata = server.metadata()
        return JSONResponse(metadata, status_code=200 if metadata["ready"] else 503)

    async def repository_refused(model_name: str):
        return _error(403, f"models are loaded by the server (--model), not by clients: {name!r}")

    # ours first: the first route that matches a path answers it
    app.add_api_route("/healthz", healthz, methods=["GET"])
    app.add_api_route("/readyz", readyz, methods=["GET"])
    app.add_api_route("/v1/models/{model_name}", v1_model, methods=["GET"])
    for verb in ("load", "unload"):
        app.add_api_route(
            f"/v2/repository/models/{{model_name}}/{verb}", repository_refused, methods=["POST"]
        )
    app.add_api_route("/", dataplane.live, methods=["GET"])
    app.add_api_route("/metrics", metrics_handler, methods=["GET"])
    register_v1_endpoints(app, dataplane, extension)
    register_v2_endpoints(app, dataplane, extension)

    async def request_error(request: Request, exc: Exception):
        assert isinstance(exc, RequestError)
        return _error(exc.status, str(exc))

    async def invalid_input(request: Request, exc: Exception):
        # KServe's words for a body its JSON parser refused, in this server's words
        message = str(exc).replace("Unrecognized request format: ", "the body is not valid JSON: ")
        return _error(BAD_REQUEST, message)

    async def validation_error(request: Request, exc: Exception):
        assert isinstance(exc, RequestValidationError)
        errors = exc.errors()
        # the V2 body is a Union[InferenceRequest, bytes]: name the request's own fault
        ours = [e for e in errors if "InferenceRequest" in e.get("loc", ())]
        first = (ours or errors or [{}])[0]
        skip = {"body", "InferenceRequest", "bytes"}
        loc = [str(p) for p in first.get("loc", ()) if p not in skip]
        where = ".".join(loc) or "the body"
        return _error(BAD_REQUEST, f"{where}: {first.get('msg', 'invalid')}")

    async def not_found(request: Request, exc: Exception):
        asked = request.path_params.get("model_name", "")
        return _error(404, f"model {asked!r} is not served here; this server serves {name!r}")

    async def not_ready(request: Request, exc: Exception):
        if server.loaded is None:
            return _error(503, "no model is loaded yet")
        return _error(503, str(exc))

    async def unavailable(request: Request, exc: Exception):
        return _error(503, str(exc))

    async def not_implemented(request: Request, exc: Exception):
        return _error(501, f"not implemented by this model: {request.url.path}")

    async def http_error(request: Request, exc: Exception):
        assert isinstance(exc, HTTPException)
        headers = exc.headers or {}
        if exc.status_code == 405 and "Allow" in headers:
            message = f"use {headers['Allow']} {request.url.path}"
        else:
            message = str(exc.detail)
        return _error(exc.status_code, message, headers)

    async def internal_error(request: Request, exc: Exception):
        log.error("request %s failed", request.url.path, exc_info=exc)
        return _error(500, "internal error; see the server log")

    handlers = {
        RequestError: request_error,
        InvalidInput: invalid_input,
        RequestValidationError: validation_error,
        ModelNotFound: not_found,
        ModelNotReady: not_ready,
        ServerNotReady: unavailable,
        ServerNotLive: unavailable,
        FeatureStoreUnavailable: unavailable,
        NotImplementedError: not_implemented,
        HTTPException: http_error,
        InferenceError: internal_error,
        Exception: internal_error,
    }
    for exc_type, handler in handlers.items():
        app.add_exception_handler(exc_type, handler)
    app.add_middleware(_Limits, limit=server.options.max_body_bytes, name=name)
    return app
