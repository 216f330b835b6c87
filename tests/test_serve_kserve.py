"""``deepfm serve`` on the kserve SDK's model server parts (serving/kserve_app.py), on both
example datasets (nothing here names a column: names come from each ``features.yaml``):

- the V1 and the Open Inference Protocol V2 endpoints score the same candidates the same,
  equal to ``RankingModel.predict`` of the rows the online store gives;
- V2 metadata lists the spec's tensors; KServe's health routes answer;
- ``/metrics`` carries the latency histograms, the serving model version, request counts by
  status and feature-store errors (a real sqlite failure);
- nothing a client sends yields a 500 (nested JSON, huge bodies, wrong content types,
  non-object bodies, malformed V2 tensors...): a JSON 4xx each, and serving goes on;
- the InferenceService renders in Serverless and RawDeployment modes, each stated by its
  annotation, with container-level security settings only.

Servers run in a thread on 127.0.0.1; each dataset's repo is generated small, applied and
materialized; the model has fitted encoders and untrained weights.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import torch
import yaml

from feature_repo import store
from feature_repo.spec import SPEC_FILE, FeatureSpec, load_spec
from model.deepfm import DeepFM
from model.export import load, save_model_dir
from model.features import FeatureEncoder
from registry.model_registry import RegistryError, push_model
from serving.server import ModelServer, ServeOptions
from tests.live_server import running
from training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("sample", "retail")
CLEAN_ENV = ("DEEPFM_DATA_DIR", "FEAST_FS_YAML_FILE_PATH")
MAX_CANDIDATES = 50
MAX_BODY_BYTES = 32 * 1024
V1 = "/v1/models/deepfm:predict"
V2 = "/v2/models/deepfm/infer"
V2_TYPES = {"int64": "INT64", "float64": "FP64", "string": "BYTES", "bool": "BOOL"}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in CLEAN_ENV:
        monkeypatch.delenv(name, raising=False)


@dataclass
class Served:
    name: str
    repo: Path
    spec: FeatureSpec
    events: pd.DataFrame
    """The latest event rows (keys and context of real candidates)."""
    model: Path
    registry: Path
    url: str = ""


def build(name: str, root: Path) -> Served:
    """Dataset ``name`` as a feature repo under ``root`` (applied, materialized), a model of
    its ``deepfm.yaml`` (encoders fitted on the point-in-time table, random weights) pushed
    to a registry as version v1."""
    from test_datasets import make_repo

    repo = make_repo(name, root / "repo", rows=3000)
    store.apply(repo)
    spec = load_spec(repo / SPEC_FILE)
    events = pd.read_parquet(spec.source_path(spec.entity_rows, repo))
    start, end = events[spec.timestamp].min(), events[spec.timestamp].max() + timedelta(seconds=1)
    store.materialize(start - timedelta(days=400), end, repo_path=repo)
    table = store.get_training_data(start, end, repo_path=repo)
    cfg = load_config(repo / "deepfm.yaml", {"model.deep.hidden_units": [8]})
    encoder = FeatureEncoder(cfg).fit(table)
    torch.manual_seed(0)
    network = DeepFM(cfg.model, cfg.feature_groups, encoder.input_spec())
    model = save_model_dir(root / "model", cfg, encoder, network, export_program=False)
    registry = root / "registry"
    push_model(model, registry, "v1")
    return Served(name, repo, spec, events.tail(12), model, registry)


def options(served: Served, **changes) -> ServeOptions:
    settings = {
        "model": str(served.registry),
        "feature_repo": str(served.repo),
        "reload_interval_s": 0,
        "max_candidates": MAX_CANDIDATES,
        "max_body_bytes": MAX_BODY_BYTES,
    }
    return ServeOptions(**(settings | changes))


@pytest.fixture(scope="module", params=DATASETS)
def served(request, tmp_path_factory) -> Iterator[Served]:
    with pytest.MonkeyPatch.context() as mp:
        for name in CLEAN_ENV:
            mp.delenv(name, raising=False)
        s = build(request.param, tmp_path_factory.mktemp(request.param))
    server = ModelServer(options(s))
    server.refresh()
    with running(server) as url:
        s.url = url
        yield s


def plain(value):
    if isinstance(value, np.ndarray | list | tuple):
        return [plain(v) for v in value]
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def candidates(served: Served) -> list[dict]:
    """The latest events' entity keys and request context, as V1 instances."""
    spec = served.spec
    names = [*spec.join_keys(), *(f.name for f in spec.context_features())]
    return [{c: plain(row[c]) for c in names} for _, row in served.events.iterrows()]


def as_v2(instances: list[dict], spec: FeatureSpec) -> dict:
    dtypes = {f.name: f.dtype for f in spec.features}
    names = list(instances[0])
    return {
        "id": "request-1",
        "inputs": [
            {
                "name": c,
                "shape": [len(instances)],
                "datatype": V2_TYPES[dtypes[c]],
                "data": [i[c] for i in instances],
            }
            for c in names
        ],
    }


def post(url: str, path: str, payload) -> requests.Response:
    return requests.post(url + path, json=payload, timeout=30)


# --- scores -----------------------------------------------------------------------------


def test_v1_and_v2_score_the_online_rows_as_the_offline_model(served):
    instances = candidates(served)
    v1 = post(served.url, V1, {"instances": instances})
    v2 = post(served.url, V2, as_v2(instances, served.spec))
    assert v1.status_code == 200, v1.text
    assert v2.status_code == 200, v2.text

    keys = list(served.spec.join_keys())
    rows = pd.DataFrame(
        [
            store.online_features(
                {k: i[k] for k in keys},
                {c: v for c, v in i.items() if c not in keys},
                repo_path=served.repo,
            ).vector
            for i in instances
        ]
    )
    expected = load(served.model).predict(rows)
    assert v1.json()["model_version"] == "v1" and v1.json()["model_name"] == "deepfm"
    assert v1.json()["predictions"] == expected.tolist()
    body = v2.json()
    assert body["model_name"] == "deepfm" and body["model_version"] == "v1"
    assert body["id"] == "request-1"
    (output,) = body["outputs"]
    assert output["name"] == "predictions" and output["shape"] == [len(instances)]
    assert output["datatype"] == "FP64"
    assert output["data"] == v1.json()["predictions"]


def test_v2_takes_n_by_1_tensors_and_given_feature_values(served):
    instances = candidates(served)[:3]
    request = as_v2(instances, served.spec)
    for tensor in request["inputs"]:
        tensor["shape"] = [3, 1]
        tensor["data"] = [[v] for v in tensor["data"]]
    flat = post(served.url, V2, as_v2(instances, served.spec)).json()["outputs"][0]["data"]
    assert post(served.url, V2, request).json()["outputs"][0]["data"] == flat

    # a stored scalar feature sent as a tensor wins over the store's value
    view_feature = next(
        f
        for f in served.spec.features
        if f.view and f.dtype in ("int64", "float64") and f.valid and f.valid.min is not None
    )
    value = view_feature.valid.min
    value = float(value) if view_feature.dtype == "float64" else int(value)
    with_value = as_v2(instances, served.spec)
    with_value["inputs"].append(
        {
            "name": view_feature.name,
            "shape": [3],
            "datatype": V2_TYPES[view_feature.dtype],
            "data": [value] * 3,
        }
    )
    v2 = post(served.url, V2, with_value).json()["outputs"][0]["data"]
    v1 = post(
        served.url, V1, {"instances": [i | {view_feature.name: value} for i in instances]}
    ).json()["predictions"]
    assert v2 == v1


def test_v2_metadata_and_kserve_health_routes(served):
    metadata = requests.get(served.url + "/v2/models/deepfm", timeout=10).json()
    scalar = [f.name for f in served.spec.features if not f.dtype.startswith("list<")]
    assert [i["name"] for i in metadata["inputs"]] == scalar
    assert {i["datatype"] for i in metadata["inputs"]} <= set(V2_TYPES.values())
    assert metadata["outputs"] == [{"name": "predictions", "datatype": "FP64", "shape": [-1]}]
    ready = requests.get(served.url + "/v2/models/deepfm/ready", timeout=10)
    assert ready.json() == {"name": "deepfm", "ready": True}
    assert requests.get(served.url + "/v2/health/live", timeout=10).json() == {"live": True}
    assert requests.get(served.url + "/v2/health/ready", timeout=10).json() == {"ready": True}
    assert requests.get(served.url + "/v1/models", timeout=10).json() == {"models": ["deepfm"]}
    assert requests.get(served.url + "/v2/models", timeout=10).json() == {"models": ["deepfm"]}
    v1 = requests.get(served.url + "/v1/models/deepfm", timeout=10).json()
    assert v1["ready"] is True and v1["model_version"] == "v1"
    refused = requests.post(served.url + "/v2/repository/models/deepfm/unload", timeout=10)
    assert refused.status_code == 403 and "loaded by the server" in refused.json()["error"]
    assert post(served.url, V1, {"instances": candidates(served)[:1]}).status_code == 200


# --- metrics ----------------------------------------------------------------------------


def scrape(url: str) -> dict[str, float]:
    """``/metrics`` as {"name{labels}": value}."""
    text = requests.get(url + "/metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            out[key] = float(value)
    return out


def test_metrics_carry_latency_version_requests_and_feature_store_errors(served, tmp_path):
    before = scrape(served.url)
    n = 3
    instances = candidates(served)[:n]
    assert post(served.url, V1, {"instances": instances}).status_code == 200
    assert post(served.url, V2, as_v2(instances, served.spec)).status_code == 200
    assert post(served.url, V1, {"instances": [{}]}).status_code == 400
    after = scrape(served.url)

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    label = 'model_name="deepfm"'
    assert after[f'deepfm_model_info{{{label},model_version="v1"}}'] == 1.0
    assert delta(f"request_predict_seconds_count{{{label}}}") == 2  # KServe's histograms
    assert delta(f"request_preprocess_seconds_count{{{label}}}") == 3
    assert delta(f'deepfm_request_seconds_count{{{label},protocol="v1"}}') == 2
    assert delta(f'deepfm_request_seconds_count{{{label},protocol="v2"}}') == 1
    assert delta(f'deepfm_requests_total{{code="200",{label},protocol="v1"}}') == 1
    assert delta(f'deepfm_requests_total{{code="200",{label},protocol="v2"}}') == 1
    assert delta(f'deepfm_requests_total{{code="400",{label},protocol="v1"}}') == 1
    assert delta(f"deepfm_candidates_scored_total{{{label}}}") == 2 * n
    assert after[f"deepfm_model_loaded_timestamp_seconds{{{label}}}"] > time.time() - 3600

    # the online store fails for real: a copy of the repo whose online tables are dropped;
    # a model whose weights do not match its manifest fails to load
    repo, registry = tmp_path / "repo", tmp_path / "registry"
    shutil.copytree(served.repo, repo)
    shutil.copytree(served.registry, registry)
    server = ModelServer(options(served, feature_repo=str(repo), model=str(registry)))
    server.refresh()
    with running(server) as url:
        failures = f"deepfm_model_reload_failures_total{{{label}}}"
        was = scrape(url).get(failures, 0.0)
        push_model(served.model, registry, "v2")
        (registry / "v2" / "weights.pt").write_bytes(b"not the weights")
        with pytest.raises(RegistryError, match="weights.pt does not match"):
            server.refresh()
        metrics = scrape(url)
        assert metrics[failures] == was + 1
        assert metrics[f'deepfm_model_info{{{label},model_version="v1"}}'] == 1.0  # still v1

        with sqlite3.connect(repo / "data" / "online_store.db") as db:
            tables = [r[0] for r in db.execute("select name from sqlite_master where type='table'")]
            for table in tables:
                db.execute(f'drop table "{table}"')
        errors = f"deepfm_feature_store_errors_total{{{label}}}"
        was = scrape(url).get(errors, 0.0)
        response = post(url, V1, {"instances": instances})
        assert response.status_code == 503, response.text
        assert response.json() == {"error": "the online feature store failed (OperationalError)"}
        assert scrape(url)[errors] == was + 1


# --- nothing a client sends yields a 500 ------------------------------------------------

JSON = {"Content-Type": "application/json"}
NASTY = [
    ("deep nesting", V1, b'{"instances": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", JSON),
    ("deep nesting v2", V2, b'{"inputs": ' + b"[" * 10_000 + b"]" * 10_000 + b"}", JSON),
    ("deep object", V1, b'{"a":' * 5_000 + b"1" + b"}" * 5_000, JSON),
    ("a string body", V1, b'"instances"', JSON),
    ("a number body", V1, b"42", JSON),
    ("null body", V1, b"null", JSON),
    ("empty body", V1, b"", JSON),
    ("empty body v2", V2, b"", JSON),
    ("array body v2", V2, b"[1, 2]", JSON),
    ("text/plain", V1, b"instances=1", {"Content-Type": "text/plain"}),
    ("form", V1, b"a=1&b=2", {"Content-Type": "application/x-www-form-urlencoded"}),
    ("xml", V2, b"<inputs/>", {"Content-Type": "application/xml"}),
    ("charset", V1, b'{"instances": 5}', {"Content-Type": "application/json; charset=latin-1"}),
    ("cloudevent", V1, b"{}", {"ce-specversion": "1.0", "ce-id": "1", "Content-Type": "x"}),
    ("binary v2", V2, b"\x00\x01", {"Content-Type": "application/octet-stream"}),
    ("bad utf-8", V1, b'{"instances": ["\xff"]}', JSON),
    ("huge int", V1, b'{"instances": [{"k": 1' + b"0" * 400 + b"}]}", JSON),
    ("v2 inputs not a list", V2, b'{"inputs": {"name": 1}}', JSON),
    ("v2 tensor without fields", V2, b'{"inputs": [{}]}', JSON),
    (
        "v2 shape of strings",
        V2,
        b'{"inputs": [{"name":"x","shape":["a"],"datatype":"INT64","data":[1]}]}',
        JSON,
    ),  # fmt: skip
    (
        "v2 nested data",
        V2,
        b'{"inputs": [{"name":"x","shape":[1],"datatype":"INT64","data":'
        + b"[" * 3000
        + b"]" * 3000
        + b"}]}",
        JSON,
    ),  # fmt: skip
    ("v2 FP16", V2, b'{"inputs": [{"name":"x","shape":[1],"datatype":"FP16","data":[1]}]}', JSON),
    ("huge body", V1, b'{"instances": [' + b" " * (2 * MAX_BODY_BYTES) + b"]}", JSON),
]


@pytest.mark.parametrize(("case", "path", "data", "headers"), NASTY, ids=[c[0] for c in NASTY])
def test_nothing_a_client_sends_yields_a_500(served, case, path, data, headers):
    response = requests.post(served.url + path, data=data, headers=headers, timeout=30)
    assert 400 <= response.status_code < 500, (response.status_code, response.text)
    assert list(response.json()) == ["error"] and response.json()["error"]
    assert "Traceback" not in response.text
    expected = 413 if case == "huge body" else 400
    assert response.status_code == expected, response.text
    assert post(served.url, V1, {"instances": candidates(served)[:1]}).status_code == 200


def test_every_v2_tensor_fault_is_a_400_naming_the_input(served):
    instances = candidates(served)[:2]
    good = as_v2(instances, served.spec)
    key = good["inputs"][0]["name"]
    lists = [f for f in served.spec.features if f.dtype.startswith("list<")]

    def with_first(**changes) -> dict:
        request = json.loads(json.dumps(good))
        request["inputs"][0] |= changes
        return request

    cases = [
        (with_first(datatype="FP64" if good["inputs"][0]["datatype"] != "FP64" else "BYTES"),
         rf"^inputs\[0\] \({key}\): datatype .* does not fit"),
        (with_first(shape=[3]), rf"^inputs\[0\] \({key}\): shape \[3\] but 2 values"),
        (with_first(shape=[2, 2]), r"send \[N\] or \[N, 1\]"),
        (with_first(name="no_such_column"), r"^inputs\[0\] \(no_such_column\): unknown input"),
        ({"inputs": good["inputs"][1:] or [{"name": "x", "shape": [1], "datatype": "INT64",
          "data": [1]}]}, r"^inputs(\[0\] \(x\): unknown input|: no tensor)"),
        ({"inputs": [good["inputs"][0], good["inputs"][0]]}, r"sent twice"),
        ({"inputs": []}, r"^inputs: empty"),
        ({"inputs": [{"name": key, "shape": [2], "datatype": "INT64"}]}, r"^inputs\.0\.data: "),
        (with_first(data=[None, None]), rf"^inputs\[0\] \({key}\)\.data\[0\]: required"),
    ]  # fmt: skip
    if lists:
        cases.append(
            (
                {"inputs": [*good["inputs"], {"name": lists[0].name, "shape": [2],
                 "datatype": "INT64", "data": [1, 2]}]},
                rf"\({lists[0].name}\): a list feature",
            )
        )  # fmt: skip
    for request, message in cases:
        response = post(served.url, V2, request)
        assert response.status_code == 400, (request, response.text)
        assert re.search(message, response.json()["error"]), (message, response.json())


def test_limits_are_413_and_wrong_methods_name_the_right_one(served):
    too_many = candidates(served)[:1] * (MAX_CANDIDATES + 1)
    for path, payload in [(V1, {"instances": too_many}), (V2, as_v2(too_many, served.spec))]:
        response = post(served.url, path, payload)
        assert response.status_code == 413, response.text
        assert f"more than the limit of {MAX_CANDIDATES}" in response.json()["error"]
    chunks = iter([b'{"instances": [', b" " * MAX_BODY_BYTES, b" " * MAX_BODY_BYTES])
    response = requests.post(served.url + V1, data=chunks, timeout=30)  # chunked, no length
    assert response.status_code == 413
    got = requests.get(served.url + V1, timeout=10)
    assert got.status_code == 405 and got.json() == {"error": f"use POST {V1}"}
    explain = post(served.url, "/v1/models/deepfm:explain", {"instances": too_many[:1]})
    assert explain.status_code == 501 and "not implemented" in explain.json()["error"]
    other = post(served.url, "/v2/models/other/infer", {"inputs": []})
    assert other.status_code == 404
    assert other.json()["error"] == "model 'other' is not served here; this server serves 'deepfm'"


# --- manifests: Serverless and RawDeployment ----------------------------------------------

MODES = {"gcp": "Serverless", "gcp-raw": "RawDeployment"}


@pytest.fixture(scope="module")
def isvcs() -> dict[str, dict]:
    from test_manifests import render

    out = {}
    for overlay in MODES:
        objs = render(ROOT / "manifests" / "overlays" / overlay)
        (isvc,) = [o for o in objs if o["kind"] == "InferenceService"]
        out[overlay] = isvc
    return out


@pytest.mark.parametrize("overlay", list(MODES))
def test_the_inferenceservice_states_its_mode_and_sets_security_per_container(isvcs, overlay):
    from test_manifests import as_pod, validate_core

    isvc = isvcs[overlay]
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] == MODES[overlay]
    predictor = isvc["spec"]["predictor"]
    assert "securityContext" not in predictor  # pod-level: Knative drops or rejects it
    (container,) = predictor["containers"]
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 1000
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["DEEPFM_MODEL_URI"] == "/mnt/models"  # where KServe puts STORAGE_URI
    assert env["STORAGE_URI"].startswith("gs://")
    # Knative serves one port and probes it
    (port,) = container["ports"]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == port["containerPort"]
    assert {v["name"] for v in predictor.get("volumes", [])} <= {"feast-config"}
    assert all("configMap" in v for v in predictor.get("volumes", []))
    extension = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "timeout"}
    extension |= {"canaryTrafficPercent", "autoScaling"}
    validate_core(as_pod({k: v for k, v in predictor.items() if k not in extension}))


def test_the_modes_differ_only_where_they_must(isvcs):
    serverless, raw = (json.loads(json.dumps(isvcs[o])) for o in MODES)
    for isvc in (serverless, raw):
        isvc["metadata"]["annotations"].pop("serving.kserve.io/deploymentMode")
        isvc["metadata"]["annotations"].pop("serving.kserve.io/autoscalerClass", None)
        isvc["metadata"]["annotations"].pop("serving.kserve.io/metric", None)
        isvc["metadata"]["annotations"].pop("serving.kserve.io/targetUtilizationPercentage", None)
    assert yaml.safe_dump(serverless) == yaml.safe_dump(raw)
    raw_annotations = isvcs["gcp-raw"]["metadata"]["annotations"]
    assert raw_annotations["serving.kserve.io/autoscalerClass"] == "hpa"
