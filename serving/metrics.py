"""The server's Prometheus metrics, next to the ones KServe's ``Model`` records
(``request_preprocess_seconds``, ``request_predict_seconds``,
``request_postprocess_seconds``, by ``model_name``), all served on ``GET /metrics``:

- ``deepfm_request_seconds{model_name, protocol}``: whole-request latency (body read,
  checks, feature read, scoring, encoding), V1 and V2 inference requests;
- ``deepfm_requests_total{model_name, protocol, code}``: inference requests by HTTP status;
- ``deepfm_candidates_scored_total{model_name}``;
- ``deepfm_model_info{model_name, model_version}``: 1 for the version serving now;
- ``deepfm_model_loaded_timestamp_seconds{model_name}``;
- ``deepfm_model_reload_failures_total{model_name}``;
- ``deepfm_feature_store_errors_total{model_name}``: online reads that failed (HTTP 503).

They live in prometheus_client's default registry, as KServe's do.
"""

from __future__ import annotations

import contextlib
import time

from prometheus_client import Counter, Gauge, Histogram

REQUEST_SECONDS = Histogram(
    "deepfm_request_seconds",
    "Inference request latency, from the first byte read to the response sent",
    ["model_name", "protocol"],
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
REQUESTS = Counter(
    "deepfm_requests", "Inference requests by HTTP status", ["model_name", "protocol", "code"]
)
CANDIDATES = Counter("deepfm_candidates_scored", "Candidates scored", ["model_name"])
MODEL_INFO = Gauge(
    "deepfm_model_info", "The model version serving now (value 1)", ["model_name", "model_version"]
)
MODEL_LOADED_AT = Gauge(
    "deepfm_model_loaded_timestamp_seconds",
    "When the serving model was loaded (Unix time)",
    ["model_name"],
)
RELOAD_FAILURES = Counter(
    "deepfm_model_reload_failures", "Models that failed to load or a check", ["model_name"]
)
FEATURE_STORE_ERRORS = Counter(
    "deepfm_feature_store_errors", "Online feature store reads that failed", ["model_name"]
)


def model_swapped(name: str, version: str, old_version: str | None) -> None:
    """The serving version of ``name`` is now ``version`` (was ``old_version``)."""
    if old_version is not None and old_version != version:
        with contextlib.suppress(KeyError):
            MODEL_INFO.remove(name, old_version)
    MODEL_INFO.labels(name, version).set(1)
    MODEL_LOADED_AT.labels(name).set(time.time())
