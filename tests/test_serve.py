"""Tests of ``deepfm serve`` (serving/server.py): the service's scores equal the offline
``RankingModel.predict`` (given feature values, and ids through the Feast online store), bad
requests get a JSON 4xx and the server keeps serving, a newly pushed model is swapped in
under load without a failed request, a model that fails its checks is never served, and the
liveness and readiness endpoints.

Servers run in a thread on 127.0.0.1 (a free port); the Feast repo is a copy over a small
generated sample, materialized into its own sqlite online store; models are the sample's
DeepFM (configs/deepfm.yaml, small MLP) with fitted encoders and untrained weights.
"""

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests
import torch

from feature_repo import store
from feature_repo.sample_data import generate
from feature_repo.spec import REPO_DIR, load_spec
from feature_repo.store import FeatureStoreError
from model.config import config_from_dict
from model.deepfm import DeepFM
from model.export import load, save_model_dir
from model.features import FeatureEncoder
from registry.model_registry import RegistryError, push_model
from serving.server import (
    ModelServer,
    ServeOptions,
    add_serve_parser,
    bind,
)
from tests.live_server import running
from training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
START = pd.Timestamp("2026-11-01", tz="UTC")
REPO_FILES = ("feature_store.yaml", "features.yaml", "definitions.py", "spec.py", ".feastignore")
# Names come from the project's spec (the sample's), each known here by its role.
SPEC = load_spec()
SOURCES = tuple(SPEC.sources)
EVENTS = SPEC.entity_rows
USER_KEY, AD_KEY = SPEC.join_keys()  # the profiles' entity key, the ads' entity key
(CONTEXT,) = (f.name for f in SPEC.context_features())
(PROFILE_VIEW,) = (
    v.name for v in SPEC.feature_views.values() if SPEC.entities[v.entity].join_key == USER_KEY
)
PROFILE_FEATURES = SPEC.view_features(PROFILE_VIEW)
(LIST_COL,) = (f.name for f in PROFILE_FEATURES if f.dtype.startswith("list"))
FIRST_PROFILE = PROFILE_FEATURES[0].name  # null until a user's first profile
(PRICE,) = (f.name for f in SPEC.features if f.dtype == "float64")
CLEAN_ENV = ("DEEPFM_DATA_DIR", "FEAST_FS_YAML_FILE_PATH")
COLUMNS = [f.name for f in load_spec().features]  # what an instance may carry
MAX_CANDIDATES = 64
MAX_BODY_BYTES = 64 * 1024
PREDICT = "/v1/models/deepfm:predict"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in CLEAN_ENV:
        monkeypatch.delenv(name, raising=False)


# --- fixtures: sample, feature repo, models, a running service --------------------------------


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sample")
    generate(3000, seed=11, out_dir=out, start=str(START.date()), days=8)
    return out


@pytest.fixture(scope="module")
def flat(sample) -> pd.DataFrame:
    return pd.read_parquet(sample / "flat.parquet")


@pytest.fixture(scope="module")
def repo(tmp_path_factory, sample) -> Path:
    """A copy of feature_repo/ over the sample, applied and materialized."""
    root = tmp_path_factory.mktemp("repo")
    (root / "data").mkdir()
    for name in REPO_FILES:
        shutil.copy(REPO_DIR / name, root / name)
    for name in SOURCES:
        shutil.copy(sample / f"{name}.parquet", root / "data")
    with pytest.MonkeyPatch.context() as mp:
        for name in CLEAN_ENV:
            mp.delenv(name, raising=False)
        store.apply(root)
        store.materialize(
            START - pd.Timedelta(days=120), START + pd.Timedelta(days=8), repo_path=root
        )
    return root


def make_model_dir(path: Path, flat: pd.DataFrame, seed: int) -> Path:
    """The sample's DeepFM: encoders fitted on ``flat``, random weights from ``seed``."""
    cfg = load_config(ROOT / "configs" / "deepfm.yaml", {"model.deep.hidden_units": [16]})
    encoder = FeatureEncoder(cfg).fit(flat)
    torch.manual_seed(seed)
    network = DeepFM(cfg.model, cfg.feature_groups, encoder.input_spec())
    return save_model_dir(path, cfg, encoder, network, export_program=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory, flat) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {v: make_model_dir(root / v, flat, seed) for seed, v in enumerate(("v1", "v2"))}


def options(model: Path, repo: Path, **changes) -> ServeOptions:
    settings = {"max_candidates": MAX_CANDIDATES, "max_body_bytes": MAX_BODY_BYTES} | changes
    return ServeOptions(model=str(model), feature_repo=str(repo), **settings)


@pytest.fixture(scope="module")
def service(tmp_path_factory, repo, models) -> Iterator[str]:
    """A service of model v1 (from a local registry), not reloading."""
    registry = tmp_path_factory.mktemp("registry")
    push_model(models["v1"], registry, "v1")
    server = ModelServer(options(registry, repo, reload_interval_s=0))
    server.refresh()
    with running(server) as url:
        yield url


def to_instances(rows: pd.DataFrame) -> list[dict]:
    """Rows -> JSON-ready instances with every column of the spec (None for missing)."""

    def plain(value):
        if isinstance(value, np.ndarray | list):
            return [int(v) for v in value]
        if value is None or pd.isna(value):
            return None
        return value.item() if hasattr(value, "item") else value

    return [{c: plain(row[c]) for c in COLUMNS if c in row} for row in rows.to_dict("records")]


def predict(url: str, instances: list[dict]) -> dict:
    response = requests.post(url + PREDICT, json={"instances": instances}, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


# --- scores -------------------------------------------------------------------------------------


def test_scores_equal_offline_predict_for_given_feature_values(service, flat, models):
    # rows with and without a profile (users with none yet have null profile features)
    no_profile = flat[flat[FIRST_PROFILE].isna()].head(8)
    rows = pd.concat([no_profile, flat.head(40)], ignore_index=True)
    assert rows[FIRST_PROFILE].isna().any() and rows[LIST_COL].isna().any()

    got = predict(service, to_instances(rows))

    assert got["model_name"] == "deepfm" and got["model_version"] == "v1"
    assert got["predictions"] == load(models["v1"]).predict(rows).tolist()


def test_entity_ids_are_scored_with_the_online_features(service, repo, sample, models):
    events = pd.read_parquet(sample / f"{EVENTS}.parquet").tail(20)
    ids = [
        {USER_KEY: int(u), AD_KEY: int(a), CONTEXT: p}
        for u, a, p in events[[USER_KEY, AD_KEY, CONTEXT]].itertuples(index=False)
    ]
    ids.append({USER_KEY: 10**9, AD_KEY: ids[0][AD_KEY]})  # unknown user, no context
    overridden = dict(ids[1]) | {PRICE: 12345.0, LIST_COL: None}  # given values win
    instances = [*ids, overridden]

    got = predict(service, instances)

    online = [
        store.online_features(
            {USER_KEY: i[USER_KEY], AD_KEY: i[AD_KEY]},
            {CONTEXT: i[CONTEXT]} if CONTEXT in i else None,
            repo_path=repo,
        ).vector
        for i in ids
    ]
    assert all(online[-1][f.name] is None for f in PROFILE_FEATURES)
    online.append(online[1] | {PRICE: 12345.0, LIST_COL: None})
    rows = pd.DataFrame(online, columns=COLUMNS)
    assert got["predictions"] == load(models["v1"]).predict(rows).tolist()
    assert got["predictions"][-1] != got["predictions"][1]


def test_a_batch_of_unknown_users_is_scored(service):
    # every list feature is null: the column must keep its list type
    got = predict(service, [{USER_KEY: 10**9 + i, AD_KEY: 1} for i in range(3)])
    assert len(got["predictions"]) == 3
    assert all(0 < p < 1 for p in got["predictions"])


# --- bad requests -------------------------------------------------------------------------------

OK_ROW = {USER_KEY: 1, AD_KEY: 2}
U, A = re.escape(USER_KEY), re.escape(AD_KEY)


def body(*instances, **top) -> bytes:
    return json.dumps({"instances": list(instances), **top}).encode()


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b'{"instances": [', 400, r"^the body is not valid JSON: unexpected end of data"),
        (b"\xff\xfe\xfa", 400, r"^the body is not valid JSON"),
        (
            f'{{"instances": [{{"{USER_KEY}": 1, "{AD_KEY}": NaN}}]}}'.encode(),
            400,
            r"^the body is not valid JSON: unexpected character",
        ),
        (b"[1, 2]", 400, r'^expected a JSON object \{"instances"'),
        (b'{"inputs": []}', 400, r'^expected a JSON object \{"instances"'),
        (body(), 400, r"^instances: empty"),
        (
            json.dumps({"instances": {USER_KEY: 1}}).encode(),
            400,
            r"^instances: expected a list, got an object",
        ),
        (body(7), 400, r"^instances\[0\]: expected an object of features, got a number"),
        (body(OK_ROW, {USER_KEY: 1}), 400, rf"^instances\[1\]\.{A}: required"),
        (body({USER_KEY: None, AD_KEY: 2}), 400, rf"^instances\[0\]\.{U}: required"),
        (
            body({USER_KEY: "1", AD_KEY: 2}),
            400,
            rf"^instances\[0\]\.{U}: expected an integer, got \"1\"$",
        ),
        (body({USER_KEY: True, AD_KEY: 2}), 400, rf"^instances\[0\]\.{U}: expected an "),
        (body({USER_KEY: 2**63, AD_KEY: 2}), 400, rf"^instances\[0\]\.{U}: expected"),
        (body(OK_ROW | {PRICE: "cheap"}), 400, rf"^instances\[0\]\.{PRICE}: expected a finite "),
        (
            body(OK_ROW).replace(b"}]", f', "{PRICE}": 1e400}}]'.encode()),
            400,
            r"^the body is not valid JSON: number is infinity",
        ),
        (body(OK_ROW | {CONTEXT: 430548}), 400, rf"^instances\[0\]\.{CONTEXT}: expected a string"),
        (body(OK_ROW | {LIST_COL: [1, 2.5]}), 400, rf"{LIST_COL}: expected a list of"),
        (body(OK_ROW | {"colour": "red"}), 400, r"^instances\[0\]: unknown field 'colour'"),
        (body(*[OK_ROW] * (MAX_CANDIDATES + 1)), 413, r"^instances: 65 candidates, more than "),
        (body(OK_ROW, pad="x" * MAX_BODY_BYTES), 413, r"^the body is larger than the limit"),
    ],
)
def test_a_bad_request_gets_a_4xx_naming_the_problem_and_serving_goes_on(
    service, data, status, message
):
    response = requests.post(
        service + PREDICT, data=data, headers={"Content-Type": "application/json"}, timeout=30
    )
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert list(response.json()) == ["error"]
    assert re.search(message, response.json()["error"])
    assert "Traceback" not in response.text
    assert len(predict(service, [OK_ROW])["predictions"]) == 1


def test_the_body_limit_holds_without_a_content_length(service):
    chunks = iter([b'{"instances": [', b" " * (MAX_BODY_BYTES // 2), b" " * MAX_BODY_BYTES])
    response = requests.post(service + PREDICT, data=chunks, timeout=30)  # chunked
    assert response.status_code == 413
    assert response.json()["error"].startswith("the body is larger than the limit of 65,536")
    assert len(predict(service, [OK_ROW])["predictions"]) == 1


def test_unknown_models_paths_and_methods(service):
    cases = [
        ("POST", "/v1/models/other:predict", 404, "model 'other' is not served here"),
        ("GET", "/v1/models/other", 404, "model 'other' is not served here"),
        ("POST", "/v1/models/deepfm:explain", 501, "not implemented by this model"),
        ("GET", PREDICT, 405, "use POST /v1/models/deepfm:predict"),
        ("POST", "/v1/models/deepfm", 405, "use GET /v1/models/deepfm"),
        ("DELETE", "/healthz", 405, "use GET /healthz"),
    ]
    for method, path, status, error in cases:
        response = requests.request(method, service + path, json={"instances": [OK_ROW]})
        assert response.status_code == status, path
        assert list(response.json()) == ["error"] and response.json()["error"].startswith(error)
    assert requests.get(service + PREDICT).headers["allow"] == "POST"


# --- liveness, readiness ------------------------------------------------------------------------


def test_health_readiness_and_metadata(service, repo, models, tmp_path):
    assert requests.get(service + "/healthz").json() == {"status": "alive"}
    assert requests.get(service + "/readyz").json() == {"ready": True, "model_version": "v1"}
    assert requests.get(service + "/v1/models").json() == {"models": ["deepfm"]}
    metadata = requests.get(service + "/v1/models/deepfm").json()
    assert metadata["name"] == "deepfm" and metadata["ready"] is True
    assert metadata["model_version"] == "v1" and metadata["last_reload_error"] is None
    assert metadata["inputs"] == load(models["v1"]).cfg.input_columns()

    registry = tmp_path / "registry"
    push_model(models["v1"], registry, "v1")
    not_loaded = ModelServer(options(registry, repo, reload_interval_s=0))
    with running(not_loaded) as url:
        assert requests.get(url + "/healthz").status_code == 200
        assert requests.get(url + "/readyz").status_code == 503
        response = requests.get(url + "/v1/models/deepfm")
        assert response.status_code == 503 and response.json()["ready"] is False
        response = requests.post(url + PREDICT, json={"instances": [OK_ROW]})
        assert (response.status_code, response.json()) == (503, {"error": "no model is loaded yet"})


# --- reloading ----------------------------------------------------------------------------------


def test_a_new_push_is_swapped_in_without_dropping_a_request(tmp_path, repo, models, flat):
    rows = flat.head(16)
    instances = to_instances(rows)
    expected = {v: load(models[v]).predict(rows).tolist() for v in ("v1", "v2")}
    assert expected["v1"] != expected["v2"]
    registry = tmp_path / "registry"
    push_model(models["v1"], registry, "v1")
    server = ModelServer(options(registry, repo, reload_interval_s=0.05))
    server.refresh()
    server.start_polling()
    responses: list[list[tuple]] = [[], []]
    stop = threading.Event()

    def client(out: list) -> None:
        with requests.Session() as session:
            while not stop.is_set():
                try:
                    r = session.post(url + PREDICT, json={"instances": instances}, timeout=30)
                    out.append((r.status_code, r.json()))
                except Exception as e:  # a dropped connection counts as a failure
                    out.append((None, repr(e)))

    def wait_for(version: str, count: int) -> None:
        deadline = time.monotonic() + 30
        while True:
            done = [r for out in responses for r in list(out)]
            assert all(status == 200 for status, _ in done), done
            if sum(r["model_version"] == version for _, r in done) >= count:
                return
            assert time.monotonic() < deadline, f"no {count} responses from {version}"
            time.sleep(0.01)

    with running(server) as url:
        clients = [threading.Thread(target=client, args=(out,)) for out in responses]
        for c in clients:
            c.start()
        try:
            wait_for("v1", 20)
            push_model(models["v2"], registry, "v2")
            wait_for("v2", 20)
        finally:
            stop.set()
            for c in clients:
                c.join()

    for out in responses:
        assert all(status == 200 for status, _ in out), out
        versions = [r["model_version"] for _, r in out]
        switch = versions.index("v2")
        assert set(versions[:switch]) == {"v1"} and set(versions[switch:]) == {"v2"}
        for _, r in out:
            assert r["predictions"] == expected[r["model_version"]]
    assert not server.cache_dir.exists()  # closed: the cached models are removed


def tiny_model_dir(path: Path, column: str) -> Path:
    """A model reading one id column ``column``."""
    cfg = config_from_dict(
        {
            "features": [
                {"name": column, "type": "id", "hash_bucket_size": 50, "embedding_dim": 4}
            ],
            "feature_groups": {"wide": [column], "fm": [column], "deep": [column]},
            "model": {"deep": {"hidden_units": [4]}},
        }
    )
    encoder = FeatureEncoder(cfg).fit(pd.DataFrame({column: [1, 2, 3], "label": [0, 1, 0]}))
    network = DeepFM(cfg.model, cfg.feature_groups, encoder.input_spec())
    return save_model_dir(path, cfg, encoder, network, export_program=False)


def test_a_model_that_fails_a_check_is_not_served(tmp_path, repo, models):
    registry, cache = tmp_path / "registry", tmp_path / "cache"
    push_model(models["v1"], registry, "v1")
    server = ModelServer(options(registry, repo, reload_interval_s=0, cache_dir=str(cache)))
    assert server.refresh() is True
    assert server.refresh() is False  # unchanged pointer: nothing to do
    body_ = body(OK_ROW)
    v1_scores = server.predict(body_)["predictions"]

    # a model the feature store cannot feed
    push_model(tiny_model_dir(tmp_path / "odd", "campaign_name"), registry, "odd")
    with pytest.raises(ValueError, match=r"reads column 'campaign_name', which .*features.yaml"):
        server.refresh()
    assert server.predict(body_) == {
        "predictions": v1_scores,
        "model_name": "deepfm",
        "model_version": "v1",
    }
    assert "campaign_name" in server.metadata()["last_reload_error"]

    # a model whose files do not match its manifest
    push_model(models["v2"], registry, "v2")
    (registry / "v2" / "weights.pt").write_bytes(b"not the weights")
    with pytest.raises(RegistryError, match=r"weights.pt does not match its sha256"):
        server.refresh()
    assert server.loaded.version == "v1"
    assert [p.name for p in cache.iterdir()] == [server.loaded.model.path.name]

    push_model(models["v2"], registry, "v3")  # the same model under a new version
    assert server.refresh() is True
    assert server.loaded.version == "v3" and server.last_reload_error is None
    assert server.predict(body_)["predictions"] != v1_scores
    assert [p.name for p in cache.iterdir()] == [server.loaded.model.path.name]
    server.close()
    assert list(cache.iterdir()) == []


def test_a_model_directory_is_served_and_reloaded_when_rewritten(tmp_path, repo, models, flat):
    model_dir = tmp_path / "model"
    shutil.copytree(models["v1"], model_dir)
    server = ModelServer(options(model_dir, repo, reload_interval_s=0))
    server.refresh()
    first = server.loaded.version
    rows = flat.head(5)
    request = json.dumps({"instances": to_instances(rows)}).encode()
    assert server.predict(request)["predictions"] == load(models["v1"]).predict(rows).tolist()

    shutil.rmtree(model_dir)
    shutil.copytree(models["v2"], model_dir)
    assert server.refresh() is True
    assert server.loaded.version != first and len(server.loaded.version) == 12
    assert server.predict(request)["predictions"] == load(models["v2"]).predict(rows).tolist()
    server.close()


# --- settings -----------------------------------------------------------------------------------


def test_bad_settings_raise_a_value_error_naming_the_flag(tmp_path, repo, models):
    registry = tmp_path / "registry"
    push_model(models["v1"], registry, "v1")
    (tmp_path / "empty").mkdir()
    cases = [
        (options(registry, repo, max_candidates=0), r"^--max-candidates must be >= 1, got 0"),
        (options(registry, repo, max_body_bytes=0), r"^--max-body-bytes must be >= 1"),
        (options(registry, repo, reload_interval_s=-1), r"^--reload-interval must be >= 0"),
        (options(registry, repo, name="a/b"), r"^--name 'a/b': use letters"),
        (options(tmp_path / "nowhere", repo), r"^--model .*nowhere: no such folder"),
        (options(tmp_path / "empty", repo), r"^--model .*empty: neither a model registry"),
    ]
    for settings, message in cases:
        with pytest.raises(ValueError, match=message):
            ModelServer(settings)
    with pytest.raises(FeatureStoreError, match=r"feature repo .*nowhere is not a folder"):
        ModelServer(options(registry, tmp_path / "nowhere"))

    taken = bind("127.0.0.1", 0)
    port = taken.getsockname()[1]
    with pytest.raises(ValueError, match=rf"^--host 127.0.0.1 --port {port}: cannot listen"):
        bind("127.0.0.1", port)
    taken.close()

    parser = argparse.ArgumentParser()
    add_serve_parser(parser.add_subparsers())
    for flags, message in [
        (["--max-candidates", "0"], r"^--max-candidates"),
        (["--port", "70000"], r"^--port must be in 0..65535"),
    ]:
        args = parser.parse_args(["serve", "--model", str(registry), *flags])
        with pytest.raises(ValueError, match=message):
            args.func(args)


# --- the command ----------------------------------------------------------------------------------


@pytest.mark.slow  # a subprocess importing torch and Feast
def test_the_command_serves_until_sigterm(tmp_path, repo, models):
    registry, cache = tmp_path / "registry", tmp_path / "cache"
    push_model(models["v1"], registry, "v1")
    free = bind("127.0.0.1", 0)
    port = free.getsockname()[1]
    free.close()
    argv = ["--model", registry, "--feature-repo", repo, "--port", port, "--cache-dir", cache]
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}
    process = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", "serve", *map(str, argv)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stderr.read()
            assert time.monotonic() < deadline, "not ready after 120 s"
            try:
                if requests.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        assert predict(url, [OK_ROW])["model_version"] == "v1"
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert process.returncode == 0, stderr
    assert "serving model deepfm version v1" in stderr and "stopped by SIGTERM" in stderr
    assert list(cache.iterdir()) == []
