"""The pipeline compiled for Vertex AI Pipelines: one YAML document, Vertex's accelerator
names, limits only, Kubernetes-only settings refused; it loads as an aiplatform PipelineJob
offline (never submitted)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from pipelines.cli import main
from pipelines.defaults import STEP_RESOURCES, VERTEX_ACCELERATOR_TYPES
from pipelines.pipeline import PipelineOptions, Toleration, compile_pipeline


def _compile_cli(tmp_path, capsys, *args):
    out = tmp_path / "vertex.yaml"
    code = main(["pipeline", "compile", "-o", str(out), "--platform", "vertex", *args])
    return code, out, capsys.readouterr().err


def test_vertex_spec_with_gpus_is_one_document_with_vertex_accelerators(tmp_path, capsys):
    code, out, err = _compile_cli(
        tmp_path, capsys, "--gpus", "2", "--accelerator-type", "NVIDIA_TESLA_T4"
    )
    assert code == 0, err
    text = out.read_text()
    docs = [d for d in yaml.safe_load_all(text) if d is not None]
    assert len(docs) == 1
    assert "platforms" not in docs[0] and "kubernetes" not in text
    executors = docs[0]["deploymentSpec"]["executors"]
    accel = executors["exec-train"]["container"]["resources"]["accelerator"]
    assert accel["type"] == accel["resourceType"] == "NVIDIA_TESLA_T4"
    assert int(accel["resourceCount"]) == 2
    for name, ex in executors.items():
        resources = ex["container"]["resources"]
        if name != "exec-train":
            assert "accelerator" not in resources, name
        # Vertex picks the machine from the limits; requests are a Kubernetes notion
        assert "resourceCpuRequest" not in resources and "resourceMemoryRequest" not in resources
        assert resources["resourceCpuLimit"] and resources["resourceMemoryLimit"], name
    features = executors["exec-features"]["container"]["resources"]
    assert features["resourceCpuLimit"] == STEP_RESOURCES["features"][1]
    assert features["resourceMemoryLimit"] == STEP_RESOURCES["features"][3]


def test_vertex_spec_loads_as_a_pipeline_job_offline(tmp_path, capsys, monkeypatch):
    import google.auth.credentials
    from google.cloud import aiplatform

    code, out, err = _compile_cli(
        tmp_path, capsys, "--gpus", "1", "--accelerator-type", "NVIDIA_L4", "--image", "img:7"
    )
    assert code == 0, err

    def no_network(*args, **kwargs):
        raise AssertionError("PipelineJob tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    job = aiplatform.PipelineJob(
        display_name="deepfm-vertex-test",
        template_path=str(out),
        pipeline_root="gs://b/r",
        project="p",
        location="us-central1",
        credentials=google.auth.credentials.AnonymousCredentials(),
    )
    resource = job._gca_resource
    assert resource.display_name == "deepfm-vertex-test"
    assert resource.runtime_config.gcs_output_directory == "gs://b/r"
    spec = resource.pipeline_spec
    assert spec["pipelineInfo"]["name"] == "deepfm-ctr"
    train = spec["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert train["image"] == "img:7"
    assert train["resources"]["accelerator"]["type"] == "NVIDIA_L4"
    assert set(spec["root"]["inputDefinitions"]["parameters"]) >= {"window_days", "min_auc"}
    # the feature store settings travel in the job as the steps' own variables
    features = spec["deploymentSpec"]["executors"]["exec-features"]["container"]
    env = {e["name"]: e["value"] for e in features["env"]}
    assert env["FEAST_FS_YAML_FILE_PATH"] == "/gcs/deepfm-models/feast/feature_store.yaml"


def test_the_vertex_accelerator_names_are_vertex_ai_enum_names():
    from google.cloud.aiplatform_v1.types import AcceleratorType

    assert set(VERTEX_ACCELERATOR_TYPES) <= {a.name for a in AcceleratorType}


def test_vertex_default_accelerator_is_a_vertex_name(tmp_path, capsys):
    code, out, err = _compile_cli(tmp_path, capsys, "--gpus", "1")
    assert code == 0, err
    spec = yaml.safe_load(out.read_text())
    accel = spec["deploymentSpec"]["executors"]["exec-train"]["container"]["resources"]
    assert accel["accelerator"]["type"] in VERTEX_ACCELERATOR_TYPES


def test_a_kubernetes_accelerator_name_is_refused_for_vertex(tmp_path, capsys):
    code, out, err = _compile_cli(
        tmp_path, capsys, "--gpus", "1", "--accelerator-type", "nvidia.com/gpu"
    )
    assert code == 2 and not out.exists()
    assert "'nvidia.com/gpu' is not a Vertex AI accelerator" in err
    for name in ("NVIDIA_TESLA_T4", "NVIDIA_L4", "NVIDIA_A100_80GB", "NVIDIA_H100_80GB"):
        assert name in err


def test_a_vertex_accelerator_name_is_refused_for_kubeflow(tmp_path, capsys):
    out = tmp_path / "kfp.yaml"
    code = main(
        ["pipeline", "compile", "-o", str(out), "--gpus", "1", "--accelerator-type", "NVIDIA_L4"]
    )
    err = capsys.readouterr().err
    assert code == 2 and not out.exists()
    assert "not a Kubernetes resource name" in err and "nvidia.com/gpu" in err
    assert "--platform vertex" in err


@pytest.mark.parametrize(
    "args, named",
    [
        (["--node-selector", "pool=gpu"], "node selectors"),
        (["--toleration", "nvidia.com/gpu:NoSchedule"], "tolerations"),
        (["--timeout", "train=3600"], "timeouts"),
        (["--trainer", "trainjob"], "trainjob"),
    ],
)
def test_kubernetes_only_settings_are_refused_for_vertex(tmp_path, capsys, args, named):
    code, out, err = _compile_cli(tmp_path, capsys, *args)
    assert code == 2 and not out.exists()
    assert named in err and "Vertex AI Pipelines" in err


def test_vertex_options_refuse_tolerations_in_the_library_too(tmp_path):
    with pytest.raises(ValueError, match="tolerations: Kubernetes only"):
        PipelineOptions(platform="vertex", tolerations=[Toleration(key="nvidia.com/gpu")])
    with pytest.raises(ValueError, match="platform must be one of kubeflow, vertex"):
        PipelineOptions(platform="sagemaker")
    # without a type, each platform's default: kubeflow's stays the Kubernetes resource name
    assert PipelineOptions().accelerator == "nvidia.com/gpu"
    assert PipelineOptions(platform="vertex").accelerator in VERTEX_ACCELERATOR_TYPES
    path = compile_pipeline(str(tmp_path / "v.yaml"), PipelineOptions(platform="vertex"))
    assert len(list(yaml.safe_load_all(Path(path).read_text()))) == 1


# ------------------------------------------- the feature store settings on Vertex AI


def _step_env(spec_path: Path, step: str) -> dict[str, str]:
    spec = yaml.safe_load(spec_path.read_text())
    container = spec["deploymentSpec"]["executors"][f"exec-{step}"]["container"]
    return {e["name"]: e["value"] for e in container.get("env", [])}


def test_vertex_steps_get_the_feature_store_settings_as_variables(tmp_path, capsys):
    """No platform document on Vertex AI: validate and features get the settings as plain
    variables of the spec, gs:// paths as Vertex AI's /gcs/ mount, on the push
    destination's bucket by default; --store-setting adds or replaces one."""
    code, out, err = _compile_cli(
        tmp_path, capsys, "--push-destination", "gs://acme-ml/models/deepfm",
        "--store-setting", "DEEPFM_REDIS_ADDRESS=10.0.0.3:6379",
        "--store-setting", "DEEPFM_DATA_DIR=gs://acme-data/sources",
    )  # fmt: skip
    assert code == 0, err
    expected = {
        "DEEPFM_OVERLAY": "vertex",
        "FEAST_FS_YAML_FILE_PATH": "/gcs/acme-ml/feast/feature_store.yaml",
        "DEEPFM_DATA_DIR": "/gcs/acme-data/sources",
        "DEEPFM_GCS_BUCKET": "acme-ml",
        "DEEPFM_REDIS_ADDRESS": "10.0.0.3:6379",
    }
    for step in ("validate", "features"):
        assert _step_env(out, step) == expected, step
    for step in ("train", "evaluate", "push", "rollout"):
        assert _step_env(out, step) == {}, step


def test_a_vertex_step_checks_its_settings_in_its_first_second(tmp_path, capsys):
    """The compiled variables, with /gcs/ as a folder here: the step's check passes once
    every variable the feature_store.yaml references is given, and before that names the
    missing one and the compile flag that sets it."""
    from components.settings import ClusterSettingError, check_cluster_settings

    root = Path(__file__).resolve().parents[1]
    gcs = tmp_path / "gcs"
    (gcs / "deepfm-models" / "feast" / "data").mkdir(parents=True)
    (gcs / "deepfm-models" / "feast" / "feature_store.yaml").write_bytes(
        (root / "manifests" / "overlays" / "gcp" / "feature_store.yaml").read_bytes()
    )

    def env_of(*args):
        code, out, err = _compile_cli(tmp_path, capsys, *args)
        assert code == 0, err
        env = _step_env(out, "features")
        return {k: v.replace("/gcs/", f"{gcs}/") for k, v in env.items()}

    with pytest.raises(ClusterSettingError) as e:
        check_cluster_settings(True, env_of())
    message = str(e.value)
    assert message.startswith("DEEPFM_REDIS_ADDRESS is not set, which ")
    assert message.endswith(
        "deepfm pipeline compile --platform vertex --store-setting DEEPFM_REDIS_ADDRESS=VALUE"
    )
    env = env_of(
        "--store-setting", "DEEPFM_REDIS_ADDRESS=10.0.0.3:6379",
        "--store-setting", "DEEPFM_FEAST_OFFLINE_HOST=10.0.0.4",
    )  # fmt: skip
    assert check_cluster_settings(True, env) == "vertex"
    assert check_cluster_settings(False, env) == "vertex"
    env["DEEPFM_DATA_DIR"] = str(gcs / "other" / "data")
    with pytest.raises(ClusterSettingError, match="--store-setting DEEPFM_DATA_DIR=gs://"):
        check_cluster_settings(False, env)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--platform", "kubeflow", "--store-setting", "DEEPFM_DATA_DIR=/x"], "Vertex AI only"),
        (["--store-setting", "bad-name=1"], "--store-setting 'bad-name': not a variable name"),
        (["--store-setting", "DEEPFM_DATA_DIR="], "--store-setting DEEPFM_DATA_DIR: the value"),
        (["--store-setting", "DEEPFM_DATA_DIR"], "--store-setting 'DEEPFM_DATA_DIR': expected"),
    ],
)
def test_bad_store_settings_are_refused(tmp_path, capsys, args, message):
    code, out, err = _compile_cli(tmp_path, capsys, *args)
    assert code == 2 and not out.exists()
    assert message in err and len(err.strip().splitlines()) == 1
