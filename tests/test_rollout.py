"""Rolling a blessed model out through KServe (serving/rollout.py, ``deepfm rollout``,
components/rollout.py), with the real kubernetes client against a local HTTP server that
stands in for the API server (no cluster here): it serves the InferenceService of
manifests/overlays/gcp, records every request and applies merge patches as the API server
does (RFC 7386, resourceVersion checked: 409 on a stale one).

Checked: the exact patch object for a canary and for a promotion, that the client sends it
to the custom objects endpoint as a merge patch, what the service holds afterwards, that a
rollout of what is served sends nothing, RawDeployment refusing a traffic split, a
ServingRuntime-style predictor, missing services and conflicts, and the current model of a
gs:// registry (gcp-storage-emulator) rolled out by the command and by the component.
"""

from __future__ import annotations

import copy
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest
import yaml
from kubernetes import client

from model.config import config_from_dict
from model.deepfm import DeepFM
from model.export import save_model_dir
from model.features import FeatureEncoder
from pipelines.cli import main as deepfm
from registry.model_registry import push_model
from serving.rollout import (
    MODEL_VERSION,
    STORAGE_URI,
    RolloutConflict,
    rollout,
    rollout_current,
    rollout_patch,
)

ROOT = Path(__file__).resolve().parents[1]
ISVC = ROOT / "manifests" / "overlays" / "gcp" / "inferenceservice.yaml"
PATH = "/apis/serving.kserve.io/v1beta1/namespaces/deepfm/inferenceservices/deepfm"
URI = "gs://models/deepfm/20261203-040000-abc"


def merge(target, patch):
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge(out.get(key), value)
    return out


class FakeApiServer:
    """The InferenceService endpoint of a Kubernetes API server, in a thread."""

    def __init__(self, isvc: dict) -> None:
        self.isvc = isvc
        self.requests: list[tuple[str, str, str | None, object]] = []
        self.before_patch = None  # called before a PATCH is applied (a concurrent change)
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def status(self, code: int, reason: str) -> None:
                body = {"kind": "Status", "apiVersion": "v1", "status": "Failure"}
                self.reply(code, body | {"reason": reason, "code": code})

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path, None, None))
                if self.path != PATH:
                    return self.status(404, "NotFound")
                self.reply(200, fake.isvc)

            def do_PATCH(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(("PATCH", self.path, self.headers["Content-Type"], body))
                if self.path != PATH:
                    return self.status(404, "NotFound")
                if fake.before_patch:
                    fake.before_patch()
                current = fake.isvc["metadata"]["resourceVersion"]
                if body.get("metadata", {}).get("resourceVersion") not in (None, current):
                    return self.status(409, "Conflict")
                fake.isvc = merge(fake.isvc, body)
                fake.isvc["metadata"]["resourceVersion"] = str(int(current) + 1)
                self.reply(200, fake.isvc)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def api(self) -> client.CustomObjectsApi:
        configuration = client.Configuration()
        configuration.host = self.url
        return client.CustomObjectsApi(client.ApiClient(configuration))

    def patches(self) -> list[tuple[str, object]]:
        return [(ctype, body) for method, _, ctype, body in self.requests if method == "PATCH"]


def served_isvc() -> dict:
    """The gcp overlay's InferenceService as the API server returns it."""
    isvc = yaml.safe_load(ISVC.read_text())
    isvc["metadata"] |= {"namespace": "deepfm", "resourceVersion": "7", "generation": 1}
    return isvc


@pytest.fixture
def fake():
    server = FakeApiServer(served_isvc())
    server.thread.start()
    yield server
    server.server.shutdown()
    server.server.server_close()


def container(isvc: dict) -> dict:
    (c,) = isvc["spec"]["predictor"]["containers"]
    return c


def env(isvc: dict) -> dict:
    return {e["name"]: e["value"] for e in container(isvc)["env"]}


def test_a_canary_then_its_promotion_patch_exactly_what_they_must(fake):
    before = copy.deepcopy(fake.isvc)
    done = rollout("deepfm", "deepfm", URI, "v2", canary_percent=10, api=fake.api())

    expected_container = copy.deepcopy(container(before))
    for e in expected_container["env"]:
        if e["name"] == STORAGE_URI:
            e["value"] = URI
    expected = {
        "metadata": {"annotations": {MODEL_VERSION: "v2"}, "resourceVersion": "7"},
        "spec": {"predictor": {"containers": [expected_container], "canaryTrafficPercent": 10}},
    }
    assert done.patch == expected
    assert fake.patches() == [("application/merge-patch+json", expected)]
    assert [m for m, *_ in fake.requests] == ["GET", "PATCH"]
    assert env(fake.isvc) == env(before) | {STORAGE_URI: URI}
    assert fake.isvc["spec"]["predictor"]["canaryTrafficPercent"] == 10
    annotations = fake.isvc["metadata"]["annotations"]
    assert annotations[MODEL_VERSION] == "v2"
    assert annotations["serving.kserve.io/deploymentMode"] == "Serverless"  # kept

    promoted = rollout("deepfm", "deepfm", URI, "v2", api=fake.api())
    assert promoted.patch == {
        "metadata": {"annotations": {MODEL_VERSION: "v2"}, "resourceVersion": "8"},
        "spec": {"predictor": {"canaryTrafficPercent": None}},
    }
    assert "canaryTrafficPercent" not in fake.isvc["spec"]["predictor"]
    assert env(fake.isvc)[STORAGE_URI] == URI

    again = rollout("deepfm", "deepfm", URI, "v2", canary_percent=100, api=fake.api())
    assert again.patch is None
    assert len(fake.patches()) == 2  # nothing sent: already serving it


def test_raw_deployment_has_no_traffic_split(fake):
    fake.isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] = "RawDeployment"
    with pytest.raises(ValueError, match=r"^--canary-percent 10: .* RawDeployment mode"):
        rollout("deepfm", "deepfm", URI, "v2", canary_percent=10, api=fake.api())
    assert fake.patches() == []
    done = rollout("deepfm", "deepfm", URI, "v2", canary_percent=100, api=fake.api())
    assert "canaryTrafficPercent" not in done.patch["spec"]["predictor"]
    assert env(fake.isvc)[STORAGE_URI] == URI


def test_a_serving_runtime_predictor_gets_its_storage_uri_patched():
    isvc = {
        "metadata": {"name": "deepfm", "resourceVersion": "3", "annotations": None},
        "spec": {"predictor": {"model": {"modelFormat": {"name": "x"}, "storageUri": "gs://a"}}},
    }
    assert rollout_patch(isvc, URI, "v9") == {
        "metadata": {"annotations": {MODEL_VERSION: "v9"}, "resourceVersion": "3"},
        "spec": {"predictor": {"model": {"storageUri": URI}}},
    }
    no_env = {"metadata": {"name": "d"}, "spec": {"predictor": {"containers": [{"name": "c"}]}}}
    patch = rollout_patch(no_env, URI, "v9")
    assert patch["spec"]["predictor"]["containers"] == [
        {"name": "c", "env": [{"name": STORAGE_URI, "value": URI}]}
    ]


@pytest.mark.parametrize(
    ("uri", "canary", "message"),
    [
        ("/var/lib/deepfm/v1", None, r"model uri '/var/lib/deepfm/v1': KServe downloads a URI"),
        (URI, 101, r"^--canary-percent must be in 0..100, got 101"),
        (URI, -1, r"^--canary-percent must be in 0..100, got -1"),
    ],
)
def test_bad_settings_name_the_setting(uri, canary, message):
    with pytest.raises(ValueError, match=message):
        rollout_patch(served_isvc(), uri, "v1", canary)


def test_a_missing_service_and_a_concurrent_change(fake):
    with pytest.raises(ValueError, match=r"^--name other --namespace deepfm: no InferenceService"):
        rollout("other", "deepfm", URI, "v2", api=fake.api())

    def someone_else_edits() -> None:
        fake.isvc["metadata"]["resourceVersion"] = "99"

    fake.before_patch = someone_else_edits
    with pytest.raises(RolloutConflict, match="changed during the rollout; run it again"):
        rollout("deepfm", "deepfm", URI, "v2", api=fake.api())
    assert env(fake.isvc)[STORAGE_URI] != URI


# --- the registry's current model, by the command and the component ----------------------------


@pytest.fixture(scope="module")
def gcs_registry(tmp_path_factory):
    """A gs:// registry (gcp-storage-emulator) with a tiny model pushed as version v7."""
    from gcp_storage_emulator.server import create_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="models")
    server.start()
    cfg = config_from_dict(
        {
            "features": [{"name": "k", "type": "id", "hash_bucket_size": 10, "embedding_dim": 2}],
            "feature_groups": {"wide": ["k"], "fm": ["k"], "deep": ["k"]},
            "model": {"deep": {"hidden_units": [2]}},
        }
    )
    encoder = FeatureEncoder(cfg).fit(pd.DataFrame({"k": [1, 2], cfg.data.label: [0, 1]}))
    network = DeepFM(cfg.model, cfg.feature_groups, encoder.input_spec())
    model = save_model_dir(
        tmp_path_factory.mktemp("m") / "m", cfg, encoder, network, export_program=False
    )
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("STORAGE_EMULATOR_HOST", f"http://127.0.0.1:{port}")
        pointer = push_model(model, "gs://models/deepfm", "v7")
        yield "gs://models/deepfm", pointer, f"http://127.0.0.1:{port}", model
    server.stop()


def kubeconfig(path: Path, url: str) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": {"server": url}}],
                "users": [{"name": "u", "user": {}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


def test_the_command_rolls_out_the_current_model(fake, gcs_registry, tmp_path, monkeypatch, capsys):
    destination, pointer, host, model = gcs_registry
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
    config = kubeconfig(tmp_path / "kubeconfig", fake.url)
    argv = ["rollout", "--destination", destination, "--kubeconfig", str(config)]
    assert deepfm([*argv, "--canary-percent", "25"]) in (0, None)
    assert pointer["uri"] == f"{destination}/v7"
    assert env(fake.isvc)[STORAGE_URI] == pointer["uri"]
    assert fake.isvc["spec"]["predictor"]["canaryTrafficPercent"] == 25
    assert fake.isvc["metadata"]["annotations"][MODEL_VERSION] == "v7"
    out = capsys.readouterr().out
    assert "deepfm/deepfm: now serving v7 (gs://models/deepfm/v7) with 25% of the traffic" in out

    assert deepfm([*argv, "--canary-percent", "150"]) == 2
    assert "--canary-percent must be in 0..100" in capsys.readouterr().err
    local = tmp_path / "registry"
    push_model(model, local, "v1")
    assert deepfm(["rollout", "--destination", str(local), "--kubeconfig", str(config)]) == 2
    assert "KServe downloads a URI" in capsys.readouterr().err
    assert deepfm([*argv[:3], "--kubeconfig", str(tmp_path / "nowhere")]) == 2
    assert "--kubeconfig: no Kubernetes cluster configured" in capsys.readouterr().err


def test_the_component_rolls_out_and_records_it(fake, gcs_registry, tmp_path, monkeypatch):
    from kfp import compiler
    from kfp.dsl import Artifact

    from components.rollout import rollout as component

    destination, pointer, host, _ = gcs_registry
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
    monkeypatch.setenv("KUBECONFIG", str(kubeconfig(tmp_path / "kubeconfig", fake.url)))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    artifact = Artifact(name="pushed_model", uri=str(tmp_path / "pushed"), metadata={})
    version = component.python_func(pushed_model=artifact, destination=destination)
    assert version == "v7" and env(fake.isvc)[STORAGE_URI] == pointer["uri"]
    assert "canaryTrafficPercent" not in fake.isvc["spec"]["predictor"]
    assert artifact.metadata == {
        "rolled_out": 1,
        "inference_service": "deepfm/deepfm",
        "rollout_version": "v7",
        "canary_percent": 100,
        "changed": 1,
    }

    spec = tmp_path / "rollout.yaml"
    compiler.Compiler().compile(component, str(spec))
    inputs = yaml.safe_load(spec.read_text())["root"]["inputDefinitions"]
    assert set(inputs["parameters"]) == {
        "destination", "inference_service", "namespace", "canary_percent"
    }  # fmt: skip
    assert set(inputs["artifacts"]) == {"pushed_model"}


def test_rollout_current_refuses_an_empty_registry(tmp_path, fake):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="nothing was pushed there"):
        rollout_current(str(tmp_path / "empty"), "deepfm", "deepfm", api=fake.api())
