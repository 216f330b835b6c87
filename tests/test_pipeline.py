"""The compiled pipeline spec: steps, order, the gate, resources, image, no secrets."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import yaml
from kfp import components

from pipelines.cli import main
from pipelines.defaults import STEP_RESOURCES, STEP_RETRIES
from pipelines.pipeline import PipelineOptions, Resources, Toleration, compile_pipeline

STEPS = ["validate", "features", "train", "evaluate"]


def _compile(tmp_path, **options):
    path = tmp_path / "p.yaml"
    compile_pipeline(str(path), PipelineOptions(**options))
    docs = list(yaml.safe_load_all(path.read_text()))
    return path, docs


def _all_tasks(dag: dict, spec: dict, prefix: str = "") -> dict:
    """task name -> (task spec, path of condition groups above it)."""
    out = {}
    for name, task in dag["tasks"].items():
        comp = spec["components"][task["componentRef"]["name"]]
        if "dag" in comp:
            out.update(_all_tasks(comp["dag"], spec, prefix + name + "/"))
        out[name] = (task, prefix)
    return out


def test_five_steps_in_order_with_push_under_the_blessed_condition(tmp_path):
    _, docs = _compile(tmp_path)
    spec = docs[0]
    assert spec["pipelineInfo"]["name"] == "deepfm-ctr"
    tasks = _all_tasks(spec["root"]["dag"], spec)
    for name in [*STEPS, "require-valid-data", "push", "record-not-pushed"]:
        assert name in tasks, sorted(tasks)
    deps = {n: set(t.get("dependentTasks", [])) for n, (t, _) in tasks.items()}
    # validation succeeds as a step (so its report is kept) and the next step stops the
    # run on invalid data: features waits for it
    assert deps["require-valid-data"] == {"validate"}
    assert deps["features"] == {"require-valid-data"}
    assert deps["train"] == {"features"}
    assert deps["evaluate"] == {"train", "features"}
    # push runs only inside the branch whose condition is evaluate's blessed output
    push_task, push_path = tasks["push"]
    not_pushed_task, not_pushed_path = tasks["record-not-pushed"]
    assert push_path and not_pushed_path and push_path != not_pushed_path
    branch = push_path.rstrip("/").split("/")[-1]
    condition = tasks[branch][0]["triggerPolicy"]["condition"]
    assert "pipelinechannel--evaluate-blessed" in condition and "== true" in condition
    else_branch = not_pushed_path.rstrip("/").split("/")[-1]
    else_condition = tasks[else_branch][0]["triggerPolicy"]["condition"]
    assert else_condition.startswith("!(") and "evaluate-blessed" in else_condition
    # the model pushed is the one trained (passed into the condition's sub-DAG)
    model_input = push_task["inputs"]["artifacts"]["model"]
    assert model_input == {"componentInputArtifact": "pipelinechannel--train-model"}


def test_parameters_have_defaults_for_a_run_from_the_ui(tmp_path):
    _, docs = _compile(tmp_path, push_destination="gs://bucket/models/deepfm")
    params = docs[0]["root"]["inputDefinitions"]["parameters"]
    expected = {
        "feature_repo",
        "window_end",
        "window_days",
        "eval_fraction",
        "model_config",
        "min_auc",
        "max_auc_drop",
        "push_destination",
        "model_version",
        "epochs",
        "batch_size",
        "inference_service",
        "inference_service_namespace",
        "canary_percent",
    }
    assert set(params) == expected
    assert all("defaultValue" in p or p.get("isOptional") for p in params.values())
    assert params["push_destination"]["defaultValue"] == "gs://bucket/models/deepfm"
    assert params["min_auc"]["defaultValue"] == pytest.approx(0.70)
    assert params["window_end"]["defaultValue"] == ""  # = now: the latest window_days
    assert params["inference_service"]["defaultValue"] == ""  # no rollout unless named


def test_every_step_uses_the_given_image_and_installs_nothing(tmp_path):
    path, docs = _compile(tmp_path, image="registry.example/deepfm:1.2.3")
    executors = docs[0]["deploymentSpec"]["executors"]
    assert len(executors) == 8
    for name, ex in executors.items():
        container = ex["container"]
        assert container["image"] == "registry.example/deepfm:1.2.3", name
        assert "pip install" not in " ".join(container["command"]), name
    assert components.load_component_from_file(str(path)).name == "deepfm-ctr"


def test_gpus_node_selector_and_tolerations_on_the_train_step(tmp_path):
    _, docs = _compile(
        tmp_path,
        gpus=2,
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        tolerations=[Toleration(key="nvidia.com/gpu", effect="NoSchedule")],
    )
    executors = docs[0]["deploymentSpec"]["executors"]
    accel = executors["exec-train"]["container"]["resources"]["accelerator"]
    assert accel["resourceType"] == "nvidia.com/gpu"
    assert int(accel["resourceCount"]) == 2
    for name, ex in executors.items():
        if name != "exec-train":
            assert "accelerator" not in ex["container"].get("resources", {}), name
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert platform["nodeSelector"]["labels"] == {"cloud.google.com/gke-accelerator": "nvidia-l4"}
    assert platform["tolerations"] == [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    ]


def test_no_gpu_by_default(tmp_path):
    _, docs = _compile(tmp_path)
    train = docs[0]["deploymentSpec"]["executors"]["exec-train"]["container"]
    assert "accelerator" not in train.get("resources", {})
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"]
    assert "nodeSelector" not in platform and "tolerations" not in platform
    # without cluster settings (kfp.local) and without node selectors or tolerations: no
    # platform document at all
    _, docs = _compile(tmp_path, overlay="none")
    assert len(docs) == 1


def test_no_secret_values_in_the_compiled_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("KFP_EXISTING_TOKEN", "tok-" + "s3cr3t-value-123")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/home/me/key.json")
    path, _ = _compile(tmp_path, gpus=1)
    text = path.read_text()
    assert "s3cr3t-value-123" not in text
    assert "key.json" not in text
    for pattern in [r"PRIVATE KEY", r"private_key", r"password", r"secretKeyRef", r"token:"]:
        assert not re.search(pattern, text, re.IGNORECASE), pattern
    for name, value in os.environ.items():
        if any(k in name for k in ("TOKEN", "SECRET", "PASSWORD")) and len(value) > 8:
            assert value not in text, name


def test_cli_compile_with_gpu_options(tmp_path, capsys):
    out = tmp_path / "deepfm_pipeline.yaml"
    code = main(
        [
            "pipeline",
            "compile",
            "-o",
            str(out),
            "--image",
            "img:1",
            "--gpus",
            "1",
            "--node-selector",
            "pool=gpu",
            "--toleration",
            "nvidia.com/gpu:NoSchedule",
            "--toleration",
            "dedicated=ml:NoExecute",
        ]
    )
    assert code == 0, capsys.readouterr().err
    docs = list(yaml.safe_load_all(out.read_text()))
    tolerations = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-train"][
        "tolerations"
    ]
    assert {"key": "dedicated", "operator": "Equal", "value": "ml", "effect": "NoExecute"} in (
        tolerations
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--node-selector", "nolabel"], "--node-selector"),
        (["--toleration", ":NoSchedule"], "--toleration"),
        (["--gpus", "-1"], "--gpus"),
    ],
)
def test_cli_compile_rejects_bad_options(tmp_path, capsys, args, message):
    code = main(["pipeline", "compile", "-o", str(tmp_path / "x.yaml"), *args])
    assert code == 2
    assert message in capsys.readouterr().err


def test_trainjob_trainer_passes_the_gpu_settings_to_the_job(tmp_path):
    _, docs = _compile(
        tmp_path,
        trainer="trainjob",
        num_nodes=3,
        gpus=4,
        tolerations=[Toleration(key="nvidia.com/gpu", effect="NoSchedule")],
    )
    spec = docs[0]
    tasks = _all_tasks(spec["root"]["dag"], spec)
    assert "train-trainjob" in tasks and "train" not in tasks
    task = tasks["train-trainjob"][0]
    params = task["inputs"]["parameters"]
    assert params["num_nodes"]["runtimeValue"]["constant"] == 3
    assert params["image"]["runtimeValue"]["constant"] == "ghcr.io/deepfm-pipeline/deepfm:latest"
    # the accelerator request is forwarded to the TrainJob's nodes, not the launcher pod
    component = spec["components"][task["componentRef"]["name"]]
    passthroughs = component.get("taskConfigPassthroughs", [])
    fields = {p["field"] for p in passthroughs}
    assert {"RESOURCES", "KUBERNETES_TOLERATIONS", "KUBERNETES_NODE_SELECTOR"} <= fields
    executor = spec["deploymentSpec"]["executors"]["exec-train-trainjob"]["container"]
    assert int(executor["resources"]["accelerator"]["resourceCount"]) == 4
    assert "evaluate" in tasks and set(tasks["evaluate"][0]["dependentTasks"]) == {
        "train-trainjob",
        "features",
    }


def test_unknown_trainer_is_refused():
    with pytest.raises(ValueError, match="trainer must be"):
        PipelineOptions(trainer="slurm")


def _resources(spec: dict) -> dict:
    """task name -> its container's resources (the executor of each task's component)."""
    tasks = _all_tasks(spec["root"]["dag"], spec)
    executors = spec["deploymentSpec"]["executors"]
    out = {}
    for name, (task, _) in tasks.items():
        comp = spec["components"][task["componentRef"]["name"]]
        if "executorLabel" in comp:
            out[name] = executors[comp["executorLabel"]]["container"].get("resources", {})
    return out


def _retries(spec: dict) -> dict:
    tasks = _all_tasks(spec["root"]["dag"], spec)
    return {name: task.get("retryPolicy") for name, (task, _) in tasks.items()}


def test_every_task_has_cpu_and_memory_requests_and_limits(tmp_path):
    _, docs = _compile(tmp_path, train_cpu="6", train_memory="24G")
    resources = _resources(docs[0])
    assert set(resources) == {*STEPS, "require-valid-data", "push", "rollout", "record-not-pushed"}
    expected = dict(STEP_RESOURCES, train=("6", "6", "24G", "24G"))
    for name, r in resources.items():
        got = (
            r["resourceCpuRequest"],
            r["resourceCpuLimit"],
            r["resourceMemoryRequest"],
            r["resourceMemoryLimit"],
        )
        assert got == expected[name], name
    # the small gate tasks get a fraction of a core, the data steps more
    assert resources["require-valid-data"]["cpuRequest"] < 1 <= resources["features"]["cpuRequest"]


def test_retries_with_backoff_where_failures_are_transient(tmp_path):
    _, docs = _compile(tmp_path)
    retries = _retries(docs[0])
    for name in ("features", "train", "push", "rollout"):
        count, backoff, factor = STEP_RETRIES[name]
        assert retries[name] == {
            "maxRetryCount": count,
            "backoffDuration": backoff,
            "backoffFactor": factor,
            "backoffMaxDuration": "3600s",
        }, name
        assert count >= 1 and factor > 1
    for name in ("validate", "require-valid-data", "evaluate", "record-not-pushed"):
        assert retries[name] is None, name  # a data or gate failure is not transient


def test_options_override_resources_retries_and_add_pod_timeouts(tmp_path):
    _, docs = _compile(
        tmp_path,
        resources={"features": Resources("3", "6", "12G", "16G")},
        retries={"train": 0, "evaluate": 1},
        timeouts={"train": 7200, "push": 600},
    )
    r = _resources(docs[0])["features"]
    assert (r["resourceCpuRequest"], r["resourceCpuLimit"]) == ("3", "6")
    assert (r["resourceMemoryRequest"], r["resourceMemoryLimit"]) == ("12G", "16G")
    retries = _retries(docs[0])
    assert retries["train"] is None
    assert retries["evaluate"]["maxRetryCount"] == 1
    assert retries["push"]["maxRetryCount"] == STEP_RETRIES["push"][0]
    # kfp 2.17's PipelineTask has no timeout; kfp-kubernetes sets the pod's deadline
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    deadlines = {
        n: e["activeDeadlineSeconds"] for n, e in platform.items() if "activeDeadlineSeconds" in e
    }
    # the rollout's default timeout stays; train's and push's are the options'
    assert deadlines == {"exec-train": "7200", "exec-push": "600", "exec-rollout": "600"}


@pytest.mark.parametrize(
    "options, message",
    [
        ({"retries": {"trian": 1}}, "unknown step trian"),
        ({"resources": {"gate": Resources("1", "1", "1G", "1G")}}, "unknown step gate"),
        ({"retries": {"push": -1}}, "retries of push must be >= 0"),
        ({"timeouts": {"train": 0}}, "timeout of train must be >= 1"),
    ],
)
def test_bad_task_settings_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        PipelineOptions(**options)


def test_cli_compile_task_settings(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    code = main(
        [
            "pipeline",
            "compile",
            "-o",
            str(out),
            "--cpu",
            "features=3/6",
            "--memory",
            "evaluate=10G",
            "--memory",
            "train=20G/24G",
            "--retries",
            "push=5",
            "--retries",
            "features=0",
            "--timeout",
            "train=86400",
        ]
    )
    assert code == 0, capsys.readouterr().err
    docs = list(yaml.safe_load_all(out.read_text()))
    r = _resources(docs[0])
    assert (r["features"]["resourceCpuRequest"], r["features"]["resourceCpuLimit"]) == ("3", "6")
    # a flag not given keeps the step's default; a limit not given equals the request
    assert r["features"]["resourceMemoryRequest"] == STEP_RESOURCES["features"][2]
    assert (r["evaluate"]["resourceMemoryRequest"], r["evaluate"]["resourceMemoryLimit"]) == (
        "10G",
        "10G",
    )
    assert r["evaluate"]["resourceCpuLimit"] == STEP_RESOURCES["evaluate"][1]
    assert (r["train"]["resourceMemoryRequest"], r["train"]["resourceMemoryLimit"]) == (
        "20G",
        "24G",
    )
    assert r["train"]["resourceCpuRequest"] == "4"  # --train-cpu's default
    retries = _retries(docs[0])
    assert retries["push"]["maxRetryCount"] == 5 and retries["features"] is None
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert platform["exec-train"]["activeDeadlineSeconds"] == "86400"


@pytest.mark.parametrize(
    "args, message",
    [
        (["--cpu", "trian=1"], "--cpu: unknown step trian"),
        (["--memory", "push="], "--memory push=: expected REQUEST[/LIMIT]"),
        (["--retries", "push=two"], "--retries push=two: expected a whole number"),
        (["--timeout", "train"], "--timeout"),
        (["--cpu", "push=lots"], "push: cpu lots/lots"),
        (["--memory", "features=8 GB"], "features: cpu 2/4, memory 8 GB/8 GB"),
    ],
)
def test_cli_compile_rejects_bad_task_settings(tmp_path, capsys, args, message):
    out = tmp_path / "x.yaml"
    code = main(["pipeline", "compile", "-o", str(out), *args])
    assert code == 2 and not out.exists()
    assert message in capsys.readouterr().err


def test_a_local_run_does_not_retry(tmp_path):
    """kfp.local honours retry policies: a local run compiles without any, so a failing
    step fails at once instead of waiting out a cluster's backoff."""
    from pipelines.local_run import local_options

    path = compile_pipeline(str(tmp_path / "local.yaml"), local_options())
    text = Path(path).read_text()
    assert "retryPolicy" not in text
    assert "retryPolicy" in Path(compile_pipeline(str(tmp_path / "c.yaml"))).read_text()


# ------------------------------------------------- what each step gets from the cluster


def _platform(docs: list[dict]) -> dict:
    return docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def _env(docs: list[dict], step: str) -> dict:
    container = docs[0]["deploymentSpec"]["executors"][f"exec-{step}"]["container"]
    return {e["name"]: e["value"] for e in container.get("env", [])}


def test_feature_store_steps_get_settings_config_and_sources_from_the_gcp_overlay(tmp_path):
    from pipelines.defaults import STORE_SETTINGS

    _, docs = _compile(tmp_path)  # kubeflow: the gcp overlay by default
    platform = _platform(docs)
    settings_env = [
        {
            "configMapName": "deepfm-settings",
            "configMapNameParameter": {"runtimeValue": {"constant": "deepfm-settings"}},
            "keyToEnv": [{"configMapKey": k, "envVar": k} for k in STORE_SETTINGS],
            "optional": True,
        }
    ]
    data = [
        {
            "constant": "deepfm-data",
            "mountPath": "/var/lib/deepfm/data",
            "pvcNameParameter": {"runtimeValue": {"constant": "deepfm-data"}},
        }
    ]
    for step in ("validate", "features"):
        assert platform[f"exec-{step}"]["configMapAsEnv"] == settings_env, step
        assert platform[f"exec-{step}"]["pvcMount"] == data, step
        assert platform[f"exec-{step}"]["podMetadata"]["annotations"] == {
            "gke-gcsfuse/volumes": "true"  # GKE injects the Cloud Storage FUSE sidecar
        }
        assert _env(docs, step)["DEEPFM_OVERLAY"] == "gcp"
    assert platform["exec-features"]["configMapAsVolume"] == [
        {
            "configMapName": "feast-config",
            "configMapNameParameter": {"runtimeValue": {"constant": "feast-config"}},
            "mountPath": "/etc/feast",
            "optional": True,
        }
    ]
    assert _env(docs, "features")["FEAST_FS_YAML_FILE_PATH"] == "/etc/feast/feature_store.yaml"
    assert "configMapAsVolume" not in platform["exec-validate"]  # validation reads files only
    assert "FEAST_FS_YAML_FILE_PATH" not in _env(docs, "validate")
    for step in ("train", "evaluate", "push", "rollout", "require-valid-data", "record-not-pushed"):
        executor = platform[f"exec-{step}"]
        assert not {"configMapAsEnv", "configMapAsVolume", "pvcMount"} & set(executor), step
        assert _env(docs, step) == {}, step
    for executor in platform.values():
        assert executor["podMetadata"]["labels"] == {"app.kubernetes.io/part-of": "deepfm-pipeline"}
    # the push destination is the gcp overlay's bucket (its DEEPFM_MODEL_URI)
    params = docs[0]["root"]["inputDefinitions"]["parameters"]
    assert params["push_destination"]["defaultValue"] == "gs://deepfm-models/deepfm"


def test_the_local_overlay_mounts_its_one_volume_where_data_and_models_live(tmp_path):
    _, docs = _compile(tmp_path, overlay="local")
    platform = _platform(docs)
    for step in ("validate", "features", "evaluate", "push"):
        (mount,) = platform[f"exec-{step}"]["pvcMount"]
        assert (mount["constant"], mount["mountPath"]) == ("deepfm-local", "/var/lib/deepfm")
        assert "annotations" not in platform[f"exec-{step}"]["podMetadata"]
    assert "pvcMount" not in platform["exec-train"]
    params = docs[0]["root"]["inputDefinitions"]["parameters"]
    assert params["push_destination"]["defaultValue"] == "/var/lib/deepfm/models/deepfm"
    assert _env(docs, "features")["DEEPFM_OVERLAY"] == "local"


def test_mount_paths_are_compile_options(tmp_path):
    _, docs = _compile(tmp_path, data_mount="/mnt/sources", feast_config_mount="/config/feast")
    platform = _platform(docs)
    assert platform["exec-features"]["pvcMount"][0]["mountPath"] == "/mnt/sources"
    assert platform["exec-features"]["configMapAsVolume"][0]["mountPath"] == "/config/feast"
    assert _env(docs, "features")["FEAST_FS_YAML_FILE_PATH"] == "/config/feast/feature_store.yaml"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"overlay": "aws"}, "overlay must be one of gcp, local, none, got 'aws'"),
        ({"data_mount": "data"}, "data_mount must be an absolute path, got 'data'"),
        ({"platform": "vertex", "overlay": "gcp"}, "the gcp overlay's ConfigMaps and volumes"),
        ({"spark": True, "overlay": "none"}, "spark: the Spark profile runs its executors"),
        ({"platform": "vertex", "spark": True}, "compile for kubeflow with an overlay"),
    ],
)
def test_bad_cluster_options_are_refused(options, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        PipelineOptions(**options)


def test_the_window_ends_at_the_runs_scheduled_time_unless_given(tmp_path):
    """window_end "" (the default) -> each run's schedule time, which KFP resolves per run:
    two scheduled runs have different task inputs (cache keys), a re-run of one window the
    same; the tasks stay cacheable."""
    _, docs = _compile(tmp_path)
    tasks = docs[0]["root"]["dag"]["tasks"]
    params = docs[0]["root"]["inputDefinitions"]["parameters"]
    assert params["window_end"]["defaultValue"] == ""
    for step in ("validate", "features"):
        inputs = tasks[step]["inputs"]["parameters"]
        assert inputs["scheduled_at"] == {
            "runtimeValue": {"constant": "{{$.pipeline_job_schedule_time_utc}}"}
        }
        assert inputs["window_end"] == {"componentInputParameter": "window_end"}
        assert tasks[step]["cachingOptions"]["enableCache"] is True


def test_cli_compile_cluster_options(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    main(["pipeline", "compile", "-o", str(out), "--overlay", "local", "--data-mount", "/srv"])
    docs = list(yaml.safe_load_all(out.read_text()))
    assert _platform(docs)["exec-validate"]["pvcMount"][0]["mountPath"] == "/srv"
    assert _platform(docs)["exec-validate"]["pvcMount"][0]["constant"] == "deepfm-local"
    assert main(["pipeline", "compile", "-o", str(out), "--data-mount", "srv"]) == 2
    assert "data_mount must be an absolute path" in capsys.readouterr().err


def test_a_local_run_has_no_cluster_settings_and_no_schedule_placeholder(tmp_path):
    """kfp.local applies the spec's env and cannot resolve the scheduled-time placeholder
    (it fails on it): run-local compiles neither; its window is a parameter."""
    from pipelines.local_run import local_options

    path = tmp_path / "local.yaml"
    compile_pipeline(str(path), local_options())
    docs = list(yaml.safe_load_all(path.read_text()))
    assert len(docs) == 1 and "pipeline_job_schedule_time_utc" not in path.read_text()
    for step in ("validate", "features"):
        scheduled = docs[0]["root"]["dag"]["tasks"][step]["inputs"]["parameters"]["scheduled_at"]
        assert scheduled == {"runtimeValue": {"constant": ""}}
        assert _env(docs, step) == {}


# ------------------------------------------------------------ the rollout through KServe


def test_the_rollout_runs_after_push_only_when_a_service_is_named(tmp_path):
    """rollout: inside the blessed branch, after push, under its own condition on the
    inference_service parameter; it rolls out what push pushed to the run's destination,
    with its own resources, retries and pod timeout."""
    from pipelines.defaults import STEP_TIMEOUTS

    _, docs = _compile(tmp_path)
    spec = docs[0]
    tasks = _all_tasks(spec["root"]["dag"], spec)
    rollout_task, rollout_path = tasks["rollout"]
    push_task, push_path = tasks["push"]
    # nested: blessed branch -> the roll-out condition -> rollout
    assert rollout_path.startswith(push_path) and rollout_path != push_path
    branch = rollout_path.rstrip("/").split("/")[-1]
    branch_task = tasks[branch][0]
    assert branch_task["triggerPolicy"]["condition"] == (
        "inputs.parameter_values['pipelinechannel--inference_service'] != ''"
    )
    assert branch_task["dependentTasks"] == ["push"]
    assert branch_task["inputs"]["artifacts"]["pipelinechannel--push-pushed_model"] == {
        "taskOutputArtifact": {"outputArtifactKey": "pushed_model", "producerTask": "push"}
    }
    inputs = rollout_task["inputs"]
    assert inputs["artifacts"]["pushed_model"] == {
        "componentInputArtifact": "pipelinechannel--push-pushed_model"
    }
    assert {k: v["componentInputParameter"] for k, v in inputs["parameters"].items()} == {
        "destination": "pipelinechannel--push_destination",
        "inference_service": "pipelinechannel--inference_service",
        "namespace": "pipelinechannel--inference_service_namespace",
        "canary_percent": "pipelinechannel--canary_percent",
    }
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["inference_service_namespace"]["defaultValue"] == "deepfm"
    assert params["canary_percent"]["defaultValue"] == 100
    r = _resources(spec)["rollout"]
    assert (r["resourceCpuRequest"], r["resourceMemoryLimit"]) == (
        STEP_RESOURCES["rollout"][0],
        STEP_RESOURCES["rollout"][3],
    )
    assert _retries(spec)["rollout"]["maxRetryCount"] == STEP_RETRIES["rollout"][0]
    deadline = _platform(docs)["exec-rollout"]["activeDeadlineSeconds"]
    assert deadline == str(STEP_TIMEOUTS["rollout"])
    # Vertex reads no pod deadline: the step is there without one (nothing refused)
    compile_pipeline(str(tmp_path / "v.yaml"), PipelineOptions(platform="vertex"))
    vertex = yaml.safe_load((tmp_path / "v.yaml").read_text())
    assert "rollout" in _all_tasks(vertex["root"]["dag"], vertex)


@pytest.mark.parametrize(
    "destination, canary, message",
    [
        ("/var/lib/deepfm/models/deepfm", 100, "push_destination='/var/lib/deepfm/models/deepfm'"),
        ("s3://b/deepfm", 100, "rolls out models pushed to gs:// only"),
        ("gs://b/deepfm", 101, "canary_percent must be in 0..100, got 101"),
    ],
)
def test_the_rollout_step_refuses_what_cannot_work_in_one_line(
    tmp_path, destination, canary, message
):
    from kfp.dsl import Artifact

    from components.rollout import rollout

    artifact = Artifact(name="pushed_model", uri=str(tmp_path / "pushed"), metadata={})
    with pytest.raises(SystemExit) as e:
        rollout.python_func(
            pushed_model=artifact, destination=destination, inference_service="deepfm",
            canary_percent=canary,
        )  # fmt: skip
    assert message in str(e.value) and "\n" not in str(e.value)
    assert "inference_service=deepfm/deepfm" in str(e.value)
    assert artifact.metadata == {}


def test_the_rollout_step_outside_a_cluster_names_what_is_missing(tmp_path, monkeypatch):
    from kfp.dsl import Artifact

    from components.rollout import rollout

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    monkeypatch.setenv("HOME", str(tmp_path))
    artifact = Artifact(name="pushed_model", uri=str(tmp_path / "pushed"), metadata={})
    with pytest.raises(SystemExit, match="no Kubernetes API to reach"):
        rollout.python_func(pushed_model=artifact, destination="gs://b/deepfm")


def test_cli_compile_spark_sets_the_driver_host_and_the_executors_image(tmp_path, capsys):
    out = tmp_path / "p.yaml"
    argv = ["pipeline", "compile", "-o", str(out), "--image", "reg.example/deepfm:3"]
    assert main([*argv, "--spark", "--overlay", "local"]) in (0, None)
    docs = list(yaml.safe_load_all(out.read_text()))
    platform = _platform(docs)
    for step in ("validate", "features"):
        assert platform[f"exec-{step}"]["fieldPathAsEnv"] == [
            {"fieldPath": "status.podIP", "name": "SPARK_DRIVER_HOST"}
        ]
        assert platform[f"exec-{step}"]["configMapAsVolume"][0]["configMapName"] == (
            "feast-config-spark"
        )
        assert _env(docs, step)["DEEPFM_IMAGE"] == "reg.example/deepfm:3"
        assert _env(docs, step)["FEAST_FS_YAML_FILE_PATH"] == "/etc/feast/feature_store.yaml"
    for step in ("train", "evaluate", "push"):
        assert "fieldPathAsEnv" not in platform[f"exec-{step}"]
        assert "DEEPFM_IMAGE" not in _env(docs, step)
    # without --spark: feast-config, no driver settings
    assert main(argv) in (0, None)
    docs = list(yaml.safe_load_all(out.read_text()))
    assert "fieldPathAsEnv" not in _platform(docs)["exec-features"]
    assert _platform(docs)["exec-features"]["configMapAsVolume"][0]["configMapName"] == (
        "feast-config"
    )
    assert "DEEPFM_IMAGE" not in _env(docs, "features")
    assert main([*argv, "--spark", "--overlay", "none"]) == 2
    assert "spark: the Spark profile" in capsys.readouterr().err
