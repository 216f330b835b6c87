"""Tests of the model registry and the push step (registry/model_registry.py, components/push.py):
TFX Pusher semantics on a local directory and on gs:// (gcp-storage-emulator), with failures
injected mid-push, and the KFP faces called directly and compiled."""

import hashlib
import json
import re
import shutil
import socket
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from google.api_core.exceptions import Forbidden, PreconditionFailed, ServiceUnavailable
from google.cloud import storage
from google.cloud.storage import Blob
from google.cloud.storage._media.requests import ResumableUpload
from kfp import compiler, dsl
from kfp.dsl import Artifact, Model

import registry.model_registry as registry
from components import BASE_IMAGE
from components.push import push, record_not_pushed
from model.config import config_from_dict
from model.deepfm import DeepFM
from model.export import load, save_model_dir, sha256_file
from model.features import FeatureEncoder
from registry.model_registry import (
    CHUNK_SIZE,
    MANIFEST,
    POINTER,
    PointerMovedError,
    RegistryError,
    VersionConflictError,
    fetch_model,
    push_model,
    read_current,
    split_gcs_uri,
)

BUCKET = "models"
AUTO_VERSION = re.compile(r"\d{8}-\d{6}-[0-9a-f]{8}")


# --- a tiny real model directory --------------------------------------------------------------


def rows(n: int = 64, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "account_id": rng.integers(0, 20, n),
            "amount": rng.random(n),
            "label": rng.integers(0, 2, n),
        }
    )


def make_model_dir(path: Path, seed: int) -> Path:
    cfg = config_from_dict(
        {
            "features": [
                {"name": "account_id", "type": "id", "hash_bucket_size": 50, "embedding_dim": 4},
                {"name": "amount", "type": "raw"},
            ],
            "feature_groups": {
                "wide": ["account_id"],
                "fm": ["account_id"],
                "deep": ["account_id", "amount"],
            },
            "model": {"deep": {"hidden_units": [8]}},
        }
    )
    encoder = FeatureEncoder(cfg).fit(rows())
    torch.manual_seed(seed)
    network = DeepFM(cfg.model, cfg.feature_groups, encoder.input_spec())
    # the exported program is one more file to copy; push treats every file alike
    return save_model_dir(path, cfg, encoder, network, {"auc": 0.5}, export_program=False)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> list[Path]:
    """Two model directories with different weights."""
    root = tmp_path_factory.mktemp("models")
    return [make_model_dir(root / f"m{seed}", seed) for seed in (0, 1)]


def add_file(model_dir: Path, name: str, data: bytes) -> None:
    """Add a file to a model directory and to its manifest."""
    (model_dir / name).write_bytes(data)
    manifest = json.loads((model_dir / MANIFEST).read_text())
    manifest["files"][name] = {"bytes": len(data), "sha256": sha256_file(model_dir / name)}
    (model_dir / MANIFEST).write_text(json.dumps(manifest, indent=1))


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def assert_same_scores(a: Path, b: Path) -> None:
    df = rows(32, seed=7)
    np.testing.assert_array_equal(load(a).predict(df), load(b).predict(df))


# --- local destination ------------------------------------------------------------------------


def test_push_writes_every_file_then_the_pointer(models, tmp_path):
    dest = tmp_path / "registry"
    pointer = push_model(models[0], dest, metrics={"auc": 0.71})

    manifest = json.loads((models[0] / MANIFEST).read_text())
    version = pointer["version"]
    manifest_sha256 = sha256_file(models[0] / MANIFEST)
    assert AUTO_VERSION.fullmatch(version) and version.endswith(manifest_sha256[:8])
    landed = sorted(p.name for p in (dest / version).iterdir())
    assert landed == sorted([*manifest["files"], MANIFEST])
    for name, meta in manifest["files"].items():
        assert sha256_file(dest / version / name) == meta["sha256"]
    assert pointer == {
        "version": version,
        "uri": str(dest / version),
        "manifest_sha256": manifest_sha256,
        "files": {name: meta["sha256"] for name, meta in manifest["files"].items()},
        "metrics": {"auc": 0.71},
        "pushed_at": pointer["pushed_at"],
    }
    pushed_at = datetime.fromisoformat(pointer["pushed_at"])
    assert pushed_at.utcoffset().total_seconds() == 0
    assert f"{pushed_at:%Y%m%d-%H%M%S}" == version[:15]
    assert json.loads((dest / POINTER).read_text()) == pointer == read_current(dest)
    assert sorted(p.name for p in dest.iterdir()) == sorted([version, POINTER])  # no temp files


def test_fetch_round_trip_scores_identically(models, tmp_path):
    dest = tmp_path / "registry"
    push_model(models[0], dest, "v1")
    fetched = fetch_model(dest, tmp_path / "fetched")
    assert fetched == tmp_path / "fetched"
    assert snapshot(fetched) == snapshot(models[0])
    assert_same_scores(fetched, models[0])
    with pytest.raises(FileExistsError, match="not empty"):
        fetch_model(dest, fetched)


def test_fetch_a_given_version(models, tmp_path):
    dest = tmp_path / "registry"
    push_model(models[0], dest, "a")
    push_model(models[1], dest, "b")
    assert snapshot(fetch_model(dest, tmp_path / "a", "a")) == snapshot(models[0])
    assert snapshot(fetch_model(dest, tmp_path / "b")) == snapshot(models[1])
    with pytest.raises(RegistryError, match="never fully pushed"):
        fetch_model(dest, tmp_path / "c", "c")


def test_fetch_detects_a_tampered_file_and_leaves_nothing(models, tmp_path):
    dest = tmp_path / "registry"
    push_model(models[0], dest, "v1")
    weights = dest / "v1" / "weights.pt"
    data = weights.read_bytes()
    weights.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
    with pytest.raises(RegistryError, match=re.escape(f"{weights} does not match its sha256")):
        fetch_model(dest, tmp_path / "fetched")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["registry"]


def test_same_version_twice_is_harmless(models, tmp_path, monkeypatch):
    dest = tmp_path / "registry"
    first = push_model(models[0], dest, "v1", metrics={"auc": 0.7})
    before = snapshot(dest)
    copies = []
    real_copy = shutil.copyfile
    monkeypatch.setattr(shutil, "copyfile", lambda *a, **k: copies.append(a) or real_copy(*a, **k))

    assert push_model(models[0], dest, "v1", metrics={"auc": 0.7}) == first
    assert copies == [] and snapshot(dest) == before


def test_pushing_an_earlier_version_again_makes_it_current(models, tmp_path):
    dest = tmp_path / "registry"
    push_model(models[0], dest, "a")
    push_model(models[1], dest, "b")
    assert push_model(models[0], dest, "a")["version"] == read_current(dest)["version"] == "a"


def test_a_different_model_under_an_existing_version_is_refused(models, tmp_path):
    dest = tmp_path / "registry"
    push_model(models[0], dest, "v1")
    before = snapshot(dest)
    with pytest.raises(VersionConflictError, match="v1"):
        push_model(models[1], dest, "v1")
    assert snapshot(dest) == before


def test_a_failure_mid_copy_keeps_the_pointer_and_a_retry_completes(models, tmp_path, monkeypatch):
    dest = tmp_path / "registry"
    push_model(models[0], dest, "v1")
    pointer_before = (dest / POINTER).read_bytes()
    real_copy = shutil.copyfile
    copied = []

    def disk_full_after_one_file(src, dst, **kwargs):
        if copied:
            raise OSError(28, "No space left on device")
        copied.append(src)
        return real_copy(src, dst, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", disk_full_after_one_file)
    with pytest.raises(RegistryError, match=r"v2.*No space left"):
        push_model(models[1], dest, "v2")
    assert (dest / POINTER).read_bytes() == pointer_before
    assert not (dest / "v2" / MANIFEST).exists()
    assert [p.name for p in (dest / "v2").iterdir()] == [Path(copied[0]).name]  # no temp files

    monkeypatch.setattr(shutil, "copyfile", real_copy)
    assert push_model(models[1], dest, "v2")["version"] == read_current(dest)["version"] == "v2"
    assert snapshot(fetch_model(dest, tmp_path / "fetched")) == snapshot(models[1])


def test_a_concurrent_push_is_not_overwritten(models, tmp_path, monkeypatch):
    dest = tmp_path / "registry"
    push_model(models[0], dest, "v1")
    real_copy = shutil.copyfile
    other = []

    def copy_while_another_push_lands(src, dst, **kwargs):
        if not other:
            other.append(None)  # the other push copies too: land it once
            other[0] = push_model(models[0], dest, "v3")
        return real_copy(src, dst, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", copy_while_another_push_lands)
    with pytest.raises(PointerMovedError, match=POINTER):
        push_model(models[1], dest, "v2")
    assert read_current(dest) == other[0]
    assert (dest / "v2" / MANIFEST).exists()  # complete, just not current


def test_read_current_before_any_push_is_none(tmp_path):
    assert read_current(tmp_path / "registry") is None
    with pytest.raises(RegistryError, match="nothing was pushed"):
        fetch_model(tmp_path / "registry", tmp_path / "fetched")


@pytest.mark.parametrize("content", [b"{not json", b'{"version": "v1"}', b"[]", b"\xff"])
def test_a_corrupt_pointer_is_named(models, tmp_path, content):
    dest = tmp_path / "registry"
    dest.mkdir()
    (dest / POINTER).write_bytes(content)
    with pytest.raises(RegistryError, match=re.escape(str(dest / POINTER))):
        read_current(dest)
    with pytest.raises(RegistryError, match=re.escape(str(dest / POINTER))):
        push_model(models[0], dest, "v1")
    assert (dest / POINTER).read_bytes() == content


def test_a_model_dir_that_fails_its_manifest_is_not_pushed(models, tmp_path):
    broken = Path(shutil.copytree(models[0], tmp_path / "broken"))
    (broken / "encoders.json").write_text("{}")
    with pytest.raises(ValueError, match="encoders.json"):
        push_model(broken, tmp_path / "registry")
    assert not (tmp_path / "registry").exists()


def test_metrics_must_be_finite_numbers(models, tmp_path):
    dest = tmp_path / "registry"
    with pytest.raises(ValueError, match="auc"):
        push_model(models[0], dest, "v1", metrics={"auc": float("nan")})
    assert not dest.exists()
    pointer = push_model(models[0], dest, "v1", metrics={"auc": np.float32(0.5)})
    assert json.loads((dest / POINTER).read_text())["metrics"] == pointer["metrics"] == {"auc": 0.5}


@pytest.mark.parametrize("version", ["../v1", "a/b", ".hidden", POINTER, "v 1"])
def test_invalid_versions_are_refused(models, tmp_path, version):
    with pytest.raises(ValueError, match="invalid version"):
        push_model(models[0], tmp_path / "registry", version)


def test_unsupported_destination(models):
    with pytest.raises(ValueError, match="s3://bucket/x"):
        push_model(models[0], "s3://bucket/x")


# --- gs:// against gcp-storage-emulator --------------------------------------------------------


@pytest.fixture(scope="module")
def emulator():
    from gcp_storage_emulator.server import create_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # 127.0.0.1, not localhost: resumable upload URLs carry the server's own host (issue #82)
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket=BUCKET)
    server.start()
    yield server, f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def gcs(emulator, monkeypatch) -> str:
    """A gs:// destination on the emulator, which is made to honour if_generation_match on
    the commits (uploads from bytes) as GCS does; transfers retry without waiting."""
    server, host = emulator
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
    monkeypatch.setattr(
        registry, "TRANSFER_RETRY", registry.TRANSFER_RETRY.with_delay(0.01, 0.01, 1.0)
    )
    upload_from_string = Blob.upload_from_string

    def generation_checked(self, data, *args, if_generation_match=None, **kwargs):
        if if_generation_match is not None:
            now = self.bucket.get_blob(self.name)
            if (0 if now is None else now.generation) != if_generation_match:
                raise PreconditionFailed(f"{self.name}: generation does not match")
        return upload_from_string(
            self, data, *args, if_generation_match=if_generation_match, **kwargs
        )

    monkeypatch.setattr(Blob, "upload_from_string", generation_checked)
    yield f"gs://{BUCKET}/deepfm"
    server.wipe(keep_buckets=True)


def bucket() -> storage.Bucket:
    return storage.Client().bucket(BUCKET)


def blobs() -> dict[str, bytes]:
    return {b.name: b.download_as_bytes() for b in bucket().list_blobs()}


def count_uploads(monkeypatch, fail: dict[str, Exception] | None = None) -> list[str]:
    """Record each file upload's name; raise ``fail[name]`` on its first upload."""
    calls: list[str] = []
    real = Blob.upload_from_filename

    def upload(self, filename, *args, **kwargs):
        name = Path(filename).name
        calls.append(name)
        if fail and name in fail and calls.count(name) == 1:
            raise fail[name]
        return real(self, filename, *args, **kwargs)

    monkeypatch.setattr(Blob, "upload_from_filename", upload)
    return calls


def test_gcs_push_files_pointer_and_checksums(models, gcs, tmp_path):
    pointer = push_model(models[0], gcs, metrics={"auc": 0.7})
    version = pointer["version"]
    assert pointer["uri"] == f"{gcs}/{version}"
    landed = blobs()
    manifest = json.loads((models[0] / MANIFEST).read_text())
    assert sorted(landed) == sorted(
        [f"deepfm/{version}/{n}" for n in [*manifest["files"], MANIFEST]] + [f"deepfm/{POINTER}"]
    )
    for name in [*manifest["files"], MANIFEST]:
        assert landed[f"deepfm/{version}/{name}"] == (models[0] / name).read_bytes()
    assert json.loads(landed[f"deepfm/{POINTER}"]) == pointer == read_current(gcs)
    assert bucket().get_blob(f"deepfm/{POINTER}").cache_control == "no-cache"

    fetched = fetch_model(gcs, tmp_path / "fetched")
    assert snapshot(fetched) == snapshot(models[0])
    assert_same_scores(fetched, models[0])


def test_gcs_same_version_twice_uploads_nothing(models, gcs, monkeypatch):
    first = push_model(models[0], gcs, "v1")
    before = blobs()
    uploads = count_uploads(monkeypatch)
    assert push_model(models[0], gcs, "v1") == first
    assert uploads == [] and blobs() == before
    with pytest.raises(VersionConflictError, match=f"{gcs}/v1"):
        push_model(models[1], gcs, "v1")
    assert uploads == [] and blobs() == before


def test_gcs_transient_error_is_retried_inside_the_push(models, gcs, monkeypatch):
    uploads = count_uploads(monkeypatch, fail={"weights.pt": ServiceUnavailable("injected")})
    pointer = push_model(models[0], gcs, "v1")
    assert uploads.count("weights.pt") == 2
    assert read_current(gcs) == pointer
    assert blobs()["deepfm/v1/weights.pt"] == (models[0] / "weights.pt").read_bytes()


def test_gcs_permanent_error_keeps_the_pointer_and_a_later_push_completes(models, gcs, monkeypatch):
    push_model(models[0], gcs, "v1")
    before = blobs()[f"deepfm/{POINTER}"]
    uploads = count_uploads(monkeypatch, fail={"weights.pt": Forbidden("injected")})
    with pytest.raises(RegistryError, match=f"{gcs}/v2/weights.pt.*Forbidden"):
        push_model(models[1], gcs, "v2")
    assert uploads.count("weights.pt") == 1  # not retried
    assert blobs()[f"deepfm/{POINTER}"] == before
    assert f"deepfm/v2/{MANIFEST}" not in blobs()

    assert push_model(models[1], gcs, "v2")["version"] == read_current(gcs)["version"] == "v2"


def test_gcs_pointer_write_whose_response_was_lost(models, gcs, monkeypatch):
    """The first pointer write lands but its response is lost; the retry finds the pointer
    changed (generation), sees its own content there and succeeds."""
    upload_from_string = Blob.upload_from_string
    lost = []

    def upload(self, data, *args, **kwargs):
        upload_from_string(self, data, *args, **kwargs)
        if self.name.endswith(POINTER) and not lost:
            lost.append(self.name)
            raise ServiceUnavailable("response lost")

    monkeypatch.setattr(Blob, "upload_from_string", upload)
    assert read_current(gcs) is None
    assert push_model(models[0], gcs, "v1") == read_current(gcs)
    assert lost


def test_gcs_a_concurrent_push_is_not_overwritten(models, gcs, monkeypatch):
    push_model(models[0], gcs, "v1")
    real = Blob.upload_from_filename
    other = []

    def upload_while_another_push_lands(self, filename, *args, **kwargs):
        if not other:
            other.append(None)  # the other push copies too: land it once
            other[0] = push_model(models[0], gcs, "v3")
        return real(self, filename, *args, **kwargs)

    monkeypatch.setattr(Blob, "upload_from_filename", upload_while_another_push_lands)
    with pytest.raises(PointerMovedError, match=f"{gcs}/{POINTER}"):
        push_model(models[1], gcs, "v2")
    assert read_current(gcs) == other[0]


def test_gcs_large_file_goes_up_in_resumable_chunks(models, gcs, monkeypatch, tmp_path):
    big = Path(shutil.copytree(models[0], tmp_path / "big"))
    data = np.random.default_rng(0).bytes(CHUNK_SIZE + 1024 * 1024)
    add_file(big, "big.bin", data)
    chunk_sizes = {}
    real_upload = Blob.upload_from_filename

    def upload(self, filename, *args, **kwargs):
        chunk_sizes[Path(filename).name] = self.chunk_size
        return real_upload(self, filename, *args, **kwargs)

    chunks = []
    real_chunk = ResumableUpload.transmit_next_chunk

    def transmit(self, *args, **kwargs):
        chunks.append(self.chunk_size)
        return real_chunk(self, *args, **kwargs)

    monkeypatch.setattr(Blob, "upload_from_filename", upload)
    monkeypatch.setattr(ResumableUpload, "transmit_next_chunk", transmit)
    push_model(big, gcs, "v1")

    assert chunk_sizes.pop("big.bin") == CHUNK_SIZE
    assert set(chunk_sizes.values()) == {None}  # small files: one multipart request each
    assert chunks == [CHUNK_SIZE, CHUNK_SIZE]
    fetched = fetch_model(gcs, tmp_path / "fetched")
    assert hashlib.sha256((fetched / "big.bin").read_bytes()).digest() == (
        hashlib.sha256(data).digest()
    )


def test_gcs_fetch_detects_a_tampered_file(models, gcs, tmp_path):
    push_model(models[0], gcs, "v1")
    bucket().blob("deepfm/v1/weights.pt").upload_from_string(b"not the weights")
    with pytest.raises(RegistryError, match=f"{gcs}/v1/weights.pt does not match"):
        fetch_model(gcs, tmp_path / "fetched")
    assert not (tmp_path / "fetched").exists()


# --- the KFP faces ----------------------------------------------------------------------------


def test_push_component_records_the_pushed_model(models, tmp_path):
    dest = tmp_path / "registry"
    pushed_model = Artifact(uri=str(tmp_path / "pushed_model"))
    uri = push.python_func(
        model=Model(uri=str(models[0])),
        destination=str(dest),
        auc=0.72,
        pushed_model=pushed_model,
        version="",
    )
    current = read_current(dest)
    assert uri == current["uri"] == str(dest / current["version"])
    assert current["metrics"] == {"auc": 0.72}
    assert pushed_model.metadata == {
        "pushed": 1,
        "version": current["version"],
        "uri": uri,
        "manifest_sha256": current["manifest_sha256"],
    }


def test_record_not_pushed_sets_pushed_0_and_the_reason(tmp_path):
    pushed_model = Artifact(uri=str(tmp_path / "pushed_model"))
    reason = "auc 0.6900 < baseline 0.7100 - 0.0010"
    assert (
        record_not_pushed.python_func(
            auc=0.69, baseline_auc=0.71, reason=reason, pushed_model=pushed_model
        )
        is None
    )
    assert pushed_model.metadata == {
        "pushed": 0,
        "reason": reason,
        "auc": 0.69,
        "baseline_auc": 0.71,
    }


def test_push_components_compile_in_a_gated_pipeline(tmp_path):
    @dsl.pipeline(name="push-gate")
    def gate(model_uri: str, destination: str, auc: float, min_auc: float = 0.7):
        model = dsl.importer(artifact_uri=model_uri, artifact_class=Model, reimport=False)
        with dsl.If(auc >= min_auc):
            push(model=model.output, destination=destination, auc=auc)
        with dsl.Else():
            record_not_pushed(auc=auc, baseline_auc=min_auc, reason="below min_auc")

    path = tmp_path / "gate.yaml"
    compiler.Compiler().compile(gate, str(path))
    spec = yaml.safe_load(path.read_text())
    executors = spec["deploymentSpec"]["executors"]
    for name in ("exec-push", "exec-record-not-pushed"):
        container = executors[name]["container"]
        assert container["image"] == BASE_IMAGE
        assert "pip install" not in " ".join(container["command"])  # nothing installed at run time
    assert "from registry.model_registry import push_model" in " ".join(
        executors["exec-push"]["container"]["command"]
    )
    outputs = spec["components"]["comp-push"]["outputDefinitions"]
    assert outputs["artifacts"]["pushed_model"]["artifactType"]["schemaTitle"] == "system.Artifact"
    assert outputs["parameters"]["Output"]["parameterType"] == "STRING"


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:You may be attemping:RuntimeWarning")  # BASE_IMAGE
def test_the_gate_runs_under_kfp_local(models, tmp_path, monkeypatch):
    """The components run from their compiled source (imports inside the body) in a local
    pipeline: blessed -> pushed=1 and a current model; not blessed -> pushed=0, no push."""
    from kfp import local

    monkeypatch.setenv("PYTHONPATH", str(Path(__file__).resolve().parents[1]))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "runs"))

    @dsl.pipeline(name="push-gate")
    def gate(model_uri: str, destination: str, auc: float, min_auc: float = 0.7):
        model = dsl.importer(artifact_uri=model_uri, artifact_class=Model, reimport=False)
        with dsl.If(auc >= min_auc):
            push(model=model.output, destination=destination, auc=auc)
        with dsl.Else():
            record_not_pushed(auc=auc, baseline_auc=min_auc, reason="below min_auc")

    for auc, dest in [(0.8, tmp_path / "blessed"), (0.6, tmp_path / "not_blessed")]:
        gate(model_uri=str(models[0]), destination=str(dest), auc=auc)
    outputs = {
        p.parent.name: json.loads(p.read_text())["artifacts"]["pushed_model"]["artifacts"][0]
        for p in (tmp_path / "runs").rglob("executor_output.json")
    }
    current = read_current(tmp_path / "blessed")
    assert current["metrics"] == {"auc": 0.8}
    assert outputs["push"]["metadata"]["pushed"] == 1
    assert outputs["push"]["metadata"]["uri"] == current["uri"]
    assert outputs["record-not-pushed"]["metadata"]["pushed"] == 0
    assert read_current(tmp_path / "not_blessed") is None


@pytest.mark.parametrize(
    "uri, expected",
    [
        ("gs://models/deepfm", ("models", "deepfm")),
        ("gs://models/a/b/", ("models", "a/b")),
        ("gs://models", ("models", "")),
        ("gs://models/", ("models", "")),
    ],
)
def test_split_gcs_uri(uri, expected):
    assert split_gcs_uri(uri) == expected


def test_split_gcs_uri_without_a_bucket_names_the_uri():
    with pytest.raises(ValueError, match="gs:///x: no bucket"):
        split_gcs_uri("gs:///x")
