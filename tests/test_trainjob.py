"""training/trainjob.py: the TrainJob it builds, the node script it runs, and
``run_trainjob`` / ``train_with_trainjob`` against a fake Kubernetes API on 127.0.0.1 (the
CustomObjects and pod endpoints the kubernetes client calls) and gcp-storage-emulator."""

from __future__ import annotations

import hashlib
import http.server
import json
import math
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import urllib.parse
from pathlib import Path

import pytest
from google.cloud import storage
from kubernetes import client

from training import trainjob
from training.trainjob import TrainJobError, run_trainjob, trainjob_manifest

IMAGE = "registry.example/deepfm:1"
GCS = {
    "train_uri": "gs://bkt/data/train.parquet",
    "eval_uri": "gs://bkt/data/eval.parquet",
    "model_uri": "gs://bkt/runs/1/model",
}
SHARED = {
    "train_uri": "/kfp-workspace/run/train.parquet",
    "eval_uri": "/kfp-workspace/run/eval.parquet",
    "model_uri": "/kfp-workspace/run/model",
}


def manifest(**kwargs) -> dict:
    args = {"name": "deepfm-train-1", "image": IMAGE, "num_nodes": 2, "gpus_per_node": 4}
    return trainjob_manifest(**(args | GCS | kwargs))


def pod_patch(job: dict) -> dict:
    (patch,) = job["spec"]["runtimePatches"]
    assert patch["manager"] == trainjob.PATCH_MANAGER
    (node,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert node["name"] == "node"
    return node["template"]["spec"]["template"]["spec"]


# --------------------------------------------------------------------------- the manifest


def test_manifest_for_gpus_and_gcs():
    job = manifest(namespace="ml", epochs=2, batch_size=4096)
    assert job["apiVersion"] == "trainer.kubeflow.org/v1alpha1" and job["kind"] == "TrainJob"
    assert job["metadata"]["name"] == "deepfm-train-1" and job["metadata"]["namespace"] == "ml"
    spec = job["spec"]
    assert spec["runtimeRef"] == {"name": "torch-distributed"}
    trainer = spec["trainer"]
    assert trainer["image"] == IMAGE and trainer["numNodes"] == 2
    assert trainer["numProcPerNode"] == 4  # one process per GPU
    assert trainer["resourcesPerNode"] == {
        "requests": {"cpu": "8", "memory": "32Gi"},
        "limits": {"memory": "32Gi", "nvidia.com/gpu": "4"},
    }
    assert "env" not in trainer
    bash, dash_c, script = trainer["command"]
    assert (bash, dash_c) == ("bash", "-c")
    lines = script.splitlines()
    assert lines[0] == "set -euo pipefail"
    assert lines[1:3] == [
        "python -m training.trainjob stage-in gs://bkt/data/train.parquet "
        "/tmp/deepfm-trainjob/train.parquet",
        "python -m training.trainjob stage-in gs://bkt/data/eval.parquet "
        "/tmp/deepfm-trainjob/eval.parquet",
    ]
    assert lines[3] == (
        "torchrun -m pipelines.cli train --config configs/deepfm.yaml "
        "--data /tmp/deepfm-trainjob/train.parquet --eval-data /tmp/deepfm-trainjob/eval.parquet "
        "--model-dir /tmp/deepfm-trainjob/model --device cuda --epochs 2 --batch-size 4096"
    )
    assert "stage-out /tmp/deepfm-trainjob/model gs://bkt/runs/1/model" in lines[4]
    assert pod_patch(job) == {"serviceAccountName": "deepfm-pipeline"}
    assert "suspend" not in spec and "activeDeadlineSeconds" not in spec


def test_manifest_on_a_shared_volume_runs_torchrun_itself():
    volume = {"name": "ws", "persistentVolumeClaim": {"claimName": "run-pvc"}}
    mount = {"name": "ws", "mountPath": "/kfp-workspace"}
    job = manifest(**SHARED, volumes=[volume], volume_mounts=[mount], extra_args=["--resume"])
    assert job["spec"]["trainer"]["command"] == [
        "torchrun", "-m", "pipelines.cli", "train", "--config", "configs/deepfm.yaml",
        "--data", SHARED["train_uri"], "--eval-data", SHARED["eval_uri"],
        "--model-dir", SHARED["model_uri"], "--device", "cuda", "--resume",
    ]  # fmt: skip
    pod = pod_patch(job)
    assert pod["volumes"] == [volume]
    assert pod["containers"] == [{"name": "node", "volumeMounts": [mount]}]


def test_manifest_on_cpus_runs_one_gloo_process_per_node():
    trainer = manifest(gpus_per_node=0, cpu="4", memory="8Gi")["spec"]["trainer"]
    assert trainer["numProcPerNode"] == 1
    assert trainer["resourcesPerNode"] == {
        "requests": {"cpu": "4", "memory": "8Gi"},
        "limits": {"memory": "8Gi"},
    }
    assert "--device cpu" in trainer["command"][2]


def test_kfp_task_config_is_forwarded():
    """A KFP ``TaskConfig`` (resources from set_accelerator_*/set_*_limit, env, placement)
    lands in the TrainJob; its GPU limit sets the processes per node."""
    resources = {"limits": {"nvidia.com/gpu": "2", "memory": "64Gi"}, "requests": {"cpu": "16"}}
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    affinity = {"nodeAffinity": {}}
    env = [{"name": "NCCL_DEBUG", "value": "INFO"}]
    job = manifest(
        resources=resources,
        env=env,
        tolerations=[toleration],
        node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
        affinity=affinity,
        service_account=None,
    )
    trainer = job["spec"]["trainer"]
    assert trainer["resourcesPerNode"] == resources and trainer["numProcPerNode"] == 2
    assert trainer["env"] == env
    assert pod_patch(job) == {
        "nodeSelector": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
        "tolerations": [toleration],
        "affinity": affinity,
    }


def test_nothing_to_patch_means_no_runtime_patch_and_options():
    spec = manifest(service_account=None, suspend=True, active_deadline_s=3600)["spec"]
    assert "runtimePatches" not in spec
    assert spec["suspend"] is True and spec["activeDeadlineSeconds"] == 3600


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"name": "Deepfm"}, "TrainJob name 'Deepfm'"),
        ({"name": "9-train"}, "starting with a letter"),
        ({"name": "a" * 51}, "at most 50 characters"),
        ({"num_nodes": 0}, "num_nodes must be >= 1"),
        ({"gpus_per_node": -1}, "gpus_per_node must be >= 0"),
        ({"train_uri": "s3://bkt/train.parquet"}, "train_uri 's3://bkt/train.parquet'"),
        ({"model_uri": ""}, "model_uri is empty"),
        ({"env": [{"name": "PET_NNODES", "value": "3"}]}, "PET_NNODES are set by the Trainer"),
    ],
)
def test_bad_arguments_are_named(change, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        manifest(**change)


def fake_tools(bin_dir: Path, log: Path) -> dict[str, str]:
    """``python`` and ``torchrun`` that append their argv to ``log``, first on PATH."""
    bin_dir.mkdir()
    for tool in ("python", "torchrun"):
        exe = bin_dir / tool
        exe.write_text(f'#!/bin/sh\necho "{tool} $*" >> {log}\n')
        exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return {"PATH": f"{bin_dir}:{os.environ['PATH']}"}


@pytest.mark.parametrize(("rank", "uploads"), [("0", True), ("1", False)])
def test_node_script_stages_in_trains_and_node_0_stages_out(tmp_path, rank, uploads):
    log = tmp_path / "calls.log"
    env = fake_tools(tmp_path / "bin", log) | {"PET_NODE_RANK": rank}
    command = manifest(extra_args=["--set", "train.batch_size=1 024"])["spec"]["trainer"]["command"]
    subprocess.run(command, env=env, check=True, timeout=30)
    calls = log.read_text().splitlines()
    assert [c.split()[:4] for c in calls[:2]] == [
        ["python", "-m", "training.trainjob", "stage-in"]
    ] * 2
    assert calls[2].startswith("torchrun -m pipelines.cli train ")
    assert calls[2].endswith("--set train.batch_size=1 024")  # one argument, quoted
    assert (len(calls) == 4) is uploads
    if uploads:
        assert calls[3].split()[3:] == ["stage-out", "/tmp/deepfm-trainjob/model", GCS["model_uri"]]


def test_node_script_stops_when_training_fails(tmp_path):
    log = tmp_path / "calls.log"
    env = fake_tools(tmp_path / "bin", log) | {"PET_NODE_RANK": "0"}
    (tmp_path / "bin" / "torchrun").write_text("#!/bin/sh\nexit 3\n")
    out = subprocess.run(manifest()["spec"]["trainer"]["command"], env=env, timeout=30)
    assert out.returncode == 3
    assert not any("stage-out" in line for line in log.read_text().splitlines())


def test_manifest_command_line_prints_yaml(capsys):
    import yaml

    argv = ["manifest", "--name", "deepfm-train-1", "--image", IMAGE, "--num-nodes", "2"]
    argv += ["--gpus-per-node", "4", "--train-uri", GCS["train_uri"], "--suspend"]
    argv += ["--eval-uri", GCS["eval_uri"], "--model-uri", GCS["model_uri"], "--", "--resume"]
    assert trainjob.main(argv) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == manifest(suspend=True, extra_args=["--resume"])
    assert trainjob.main([*argv[:-2], "--num-nodes", "0"]) == 2
    assert "num_nodes must be >= 1" in capsys.readouterr().err


# --------------------------------------------------------------------------- fake Kubernetes


class FakeKubernetes:
    """TrainJobs and their pods on 127.0.0.1, answering the calls of the kubernetes client:

        POST   /apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs
        GET    /apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs/{name}
        DELETE /apis/trainer.kubeflow.org/v1alpha1/namespaces/{ns}/trainjobs/{name}
        GET    /api/v1/namespaces/{ns}/pods?labelSelector=jobset.sigs.k8s.io/jobset-name=...
        GET    /api/v1/namespaces/{ns}/pods/{pod}/log?container=node&tailLines=N

    Each GET of a TrainJob moves it one step along ``states`` (then it stays at the last);
    ``on_state[state](job)`` runs when a job reaches ``state``.
    """

    def __init__(self, states: list[str], on_state: dict | None = None) -> None:
        self.states = states
        self.on_state = on_state or {}
        self.jobs: dict[tuple[str, str], dict] = {}
        self.gets: dict[tuple[str, str], int] = {}
        self.requests: list[tuple[str, str]] = []
        self.create_status = 201
        self.logs = {"node-0": "epoch 1 ...\nRuntimeError: CUDA out of memory", "node-1": "ok"}
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def reply(self, status: int, body, content_type="application/json") -> None:
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def route(self, method: str) -> None:
                url = urllib.parse.urlparse(self.path)
                fake.requests.append((method, self.path))
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                status, out = fake.answer(method, url.path, urllib.parse.parse_qs(url.query), body)
                self.reply(
                    status, out, "application/json" if not isinstance(out, str) else "text/plain"
                )

            def do_GET(self) -> None:
                self.route("GET")

            def do_POST(self) -> None:
                self.route("POST")

            def do_DELETE(self) -> None:
                self.route("DELETE")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> FakeKubernetes:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def api_client(self) -> client.ApiClient:
        return client.ApiClient(client.Configuration(host=self.url))

    @staticmethod
    def status(code: int, reason: str, message: str) -> dict:
        return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": reason,
                "message": message, "code": code}  # fmt: skip

    def conditions(self, state: str) -> list[dict]:
        created = {"type": "Created", "status": "True", "reason": "JobsCreated", "message": ""}
        if state == "Pending":
            return []
        if state == "Running":
            return [created]
        if state == "Complete":
            return [created, {"type": "Complete", "status": "True", "reason": "JobsCompleted",
                              "message": "TrainJob is completed"}]  # fmt: skip
        return [created, {"type": "Failed", "status": "True", "reason": "JobsFailed",
                          "message": "jobset failed: node-0 exited with code 1"}]  # fmt: skip

    def answer(self, method: str, path: str, query: dict, body):
        jobs = re.fullmatch(
            r"/apis/trainer\.kubeflow\.org/v1alpha1/namespaces/([^/]+)/trainjobs(?:/([^/]+))?",
            path,
        )
        if jobs:
            ns, name = jobs.groups()
            if method == "POST":
                key = (ns, body["metadata"]["name"])
                if self.create_status != 201:
                    return self.create_status, self.status(
                        self.create_status, "Forbidden", 'trainjobs.trainer.kubeflow.org is '
                        'forbidden: User "system:serviceaccount:ml:default" cannot create'
                    )  # fmt: skip
                if key in self.jobs:
                    return 409, self.status(409, "AlreadyExists", f"{key[1]} already exists")
                self.jobs[key] = body
                return 201, body
            key = (ns, name)
            if key not in self.jobs:
                return 404, self.status(404, "NotFound", f'trainjobs "{name}" not found')
            if method == "DELETE":
                del self.jobs[key]
                return 200, self.status(200, "", "deleted") | {"status": "Success"}
            step = self.gets.get(key, 0)
            self.gets[key] = step + 1
            state = self.states[min(step, len(self.states) - 1)]
            if state in self.on_state and self.jobs[key].get("reached") != state:
                self.jobs[key]["reached"] = state
                self.on_state[state](self.jobs[key])
            return 200, self.jobs[key] | {"status": {"conditions": self.conditions(state)}}
        pods = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods(?:/([^/]+)/log)?", path)
        if pods:
            ns, pod = pods.groups()
            if pod:
                assert query["container"] == ["node"]
                return 200, self.logs[pod]
            name = query["labelSelector"][0].removeprefix(f"{trainjob.JOBSET_NAME_LABEL}=")
            items = [
                {
                    "metadata": {
                        "name": p,
                        "namespace": ns,
                        "labels": {trainjob.JOBSET_NAME_LABEL: name},
                    },
                    "spec": {"containers": [{"name": "node", "image": IMAGE}]},
                    "status": {"phase": "Failed"},
                }  # fmt: skip
                for p in self.logs
                if (ns, name) in self.jobs
            ]
            return 200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}
        return 404, self.status(404, "NotFound", path)


def test_run_trainjob_waits_for_complete():
    job = manifest()
    with FakeKubernetes(["Pending", "Running", "Running", "Complete"]) as k8s:
        status = run_trainjob(job, "ml", timeout_s=30, api_client=k8s.api_client(), poll_s=0.01)
        created = k8s.jobs[("ml", "deepfm-train-1")]
    assert status.state == "Complete" and status.name == "deepfm-train-1"
    assert status.namespace == "ml" and status.elapsed_s >= 0
    assert [c["type"] for c in status.conditions] == ["Created", "Complete"]
    assert created["spec"] == job["spec"] and created["metadata"]["namespace"] == "ml"
    methods = [m for m, _ in k8s.requests]
    assert methods == ["POST", "GET", "GET", "GET", "GET"]


def test_run_trainjob_failure_names_the_reason_and_shows_node_logs():
    with FakeKubernetes(["Running", "Failed"]) as k8s, pytest.raises(TrainJobError) as info:
        run_trainjob(manifest(), "ml", timeout_s=30, api_client=k8s.api_client(), poll_s=0.01)
    error = info.value
    assert error.state == "Failed" and error.name == "deepfm-train-1"
    text = str(error)
    assert text.startswith("TrainJob ml/deepfm-train-1 failed after ")
    assert "JobsFailed: jobset failed: node-0 exited with code 1" in text
    assert "--- node-0 (Failed) ---\nepoch 1 ...\nRuntimeError: CUDA out of memory" in text
    assert "--- node-1 (Failed) ---\nok" in text
    assert any("tailLines=100" in path for _, path in k8s.requests)


def test_run_trainjob_timeout_deletes_the_job():
    with FakeKubernetes(["Running"]) as k8s:
        with pytest.raises(TrainJobError, match=r"did not finish within 0s \(state: Created\)"):
            run_trainjob(manifest(), "ml", timeout_s=0.2, api_client=k8s.api_client(), poll_s=0.05)
        assert ("ml", "deepfm-train-1") not in k8s.jobs
        assert [m for m, _ in k8s.requests].count("DELETE") == 1


def test_run_trainjob_attaches_to_an_existing_job():
    with FakeKubernetes(["Complete"]) as k8s:
        k8s.jobs[("ml", "deepfm-train-1")] = manifest()
        status = run_trainjob(manifest(), "ml", timeout_s=5, api_client=k8s.api_client())
    assert status.state == "Complete"


def test_run_trainjob_refused_create_is_named():
    with FakeKubernetes(["Complete"]) as k8s:
        k8s.create_status = 403
        with pytest.raises(TrainJobError, match="could not be created: trainjobs.trainer") as info:
            run_trainjob(manifest(), "ml", timeout_s=5, api_client=k8s.api_client())
    assert info.value.state == "NotCreated" and "cannot create" in str(info.value)


# --------------------------------------------------------------------------- staging and the step


@pytest.fixture(scope="module")
def emulator():
    from gcp_storage_emulator.server import create_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="bkt")
    server.start()
    yield server, f"http://127.0.0.1:{port}"
    server.stop()


@pytest.fixture
def gcs(emulator, monkeypatch) -> storage.Bucket:
    server, host = emulator
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", host)
    yield storage.Client().bucket("bkt")
    server.wipe(keep_buckets=True)


def fake_model_dir(path: Path, auc: float = 0.71) -> Path:
    """A model directory that passes ``verify_model_dir``: files, metrics, MANIFEST last."""
    path.mkdir(parents=True)
    (path / "weights.pt").write_bytes(b"\x00" * 1000)
    (path / "metrics.json").write_text(json.dumps({"auc": auc, "history": [{"epoch": 1}]}))
    files = {
        p.name: {"size": p.stat().st_size, "sha256": hashlib.sha256(p.read_bytes()).hexdigest()}
        for p in sorted(path.iterdir())
    }
    (path / "MANIFEST.json").write_text(json.dumps({"format_version": 1, "files": files}))
    return path


def test_stage_out_and_in_through_gcs(gcs, tmp_path, monkeypatch):
    model = fake_model_dir(tmp_path / "model")
    (model / "checkpoints").mkdir()
    (model / "checkpoints" / "step-10.pt").write_bytes(b"ckpt")
    uploaded: list[str] = []
    upload = storage.Blob.upload_from_filename

    def record(self, filename, *args, **kwargs):
        uploaded.append(self.name)
        return upload(self, filename, *args, **kwargs)

    monkeypatch.setattr(storage.Blob, "upload_from_filename", record)
    assert trainjob.stage_out(model, "gs://bkt/runs/1/model") == "gs://bkt/runs/1/model"
    assert uploaded[-1] == "runs/1/model/MANIFEST.json"
    assert sorted(uploaded) == [
        "runs/1/model/MANIFEST.json",
        "runs/1/model/checkpoints/step-10.pt",
        "runs/1/model/metrics.json",
        "runs/1/model/weights.pt",
    ]
    back = trainjob.stage_in("gs://bkt/runs/1/model", tmp_path / "back")
    assert sorted(p.relative_to(back).as_posix() for p in back.rglob("*") if p.is_file()) == [
        "MANIFEST.json", "checkpoints/step-10.pt", "metrics.json", "weights.pt"
    ]  # fmt: skip
    assert (back / "weights.pt").read_bytes() == (model / "weights.pt").read_bytes()
    single = trainjob.stage_in("gs://bkt/runs/1/model/metrics.json", tmp_path / "m.json")
    assert single.read_text() == (model / "metrics.json").read_text()
    with pytest.raises(FileNotFoundError, match="gs://bkt/nothing: no object"):
        trainjob.stage_in("gs://bkt/nothing", tmp_path / "x")


def test_stage_in_and_out_between_local_folders(tmp_path):
    model = fake_model_dir(tmp_path / "model")
    trainjob.stage_out(model, str(tmp_path / "out"))
    assert (tmp_path / "out" / "MANIFEST.json").read_bytes() == (
        model / "MANIFEST.json"
    ).read_bytes()
    copied = trainjob.stage_in(str(tmp_path / "out"), tmp_path / "again")
    assert sorted(p.name for p in copied.iterdir()) == sorted(p.name for p in model.iterdir())
    with pytest.raises(FileNotFoundError):
        trainjob.stage_in(str(tmp_path / "missing"), tmp_path / "y")


def test_train_step_on_gcs(gcs, tmp_path):
    """The train step's body with a GCS pipeline root: the job gets the artifacts' gs:// URIs,
    writes the model to the output's URI; the step fetches and verifies it."""
    written = fake_model_dir(tmp_path / "written")

    def train(job: dict) -> None:  # what node 0 does when the job completes
        script = job["spec"]["trainer"]["command"][2]
        assert "stage-in gs://bkt/artifacts/train_data" in script
        trainjob.stage_out(written, "gs://bkt/artifacts/model")

    with FakeKubernetes(["Running", "Complete"], on_state={"Complete": train}) as k8s:
        result = trainjob.train_with_trainjob(
            "gs://bkt/artifacts/train_data",
            "gs://bkt/artifacts/eval_data",
            str(tmp_path / "local" / "model"),
            model_uri="gs://bkt/artifacts/model",
            image=IMAGE,
            namespace="ml",
            name="deepfm-train-step",
            poll_s=0.01,
            api_client=k8s.api_client(),
        )
    assert result["auc"] == 0.71 and result["trainjob"] == "deepfm-train-step"
    assert result["history"] == [{"epoch": 1}] and result["trainjob_seconds"] >= 0
    local = tmp_path / "local" / "model"
    assert (local / "weights.pt").read_bytes() == (written / "weights.pt").read_bytes()


def test_train_step_on_a_workspace(tmp_path):
    """The train step's body with a shared workspace: local artifacts are copied there, the
    job reads and writes the workspace, the step copies the model to its output path."""
    (tmp_path / "in").mkdir()
    for name in ("train", "eval"):
        (tmp_path / "in" / f"{name}.parquet").write_bytes(name.encode())
    workspace = tmp_path / "kfp-workspace"
    seen = {}

    def train(job: dict) -> None:
        command = job["spec"]["trainer"]["command"]
        flags = dict(zip(command[4::2], command[5::2], strict=False))
        seen.update(flags)
        fake_model_dir(Path(flags["--model-dir"]), auc=0.69)

    mount = {"name": "kfp-workspace", "mountPath": str(workspace)}
    with FakeKubernetes(["Complete"], on_state={"Complete": train}) as k8s:
        result = trainjob.train_with_trainjob(
            str(tmp_path / "in" / "train.parquet"),
            str(tmp_path / "in" / "eval.parquet"),
            str(tmp_path / "out" / "model"),
            workspace=str(workspace),
            image=IMAGE,
            gpus_per_node=0,
            namespace="ml",
            name="deepfm-train-ws",
            volumes=[{"name": "kfp-workspace", "persistentVolumeClaim": {"claimName": "ws"}}],
            volume_mounts=[mount],
            api_client=k8s.api_client(),
        )
        job = k8s.jobs[("ml", "deepfm-train-ws")]
    stage = workspace / "deepfm-train-ws"
    assert seen["--data"] == str(stage / "train.parquet")
    assert (stage / "eval.parquet").read_bytes() == b"eval"
    assert seen["--model-dir"] == str(stage / "model") and seen["--device"] == "cpu"
    assert pod_patch(job)["containers"] == [{"name": "node", "volumeMounts": [mount]}]
    assert result["auc"] == 0.69
    assert (tmp_path / "out" / "model" / "MANIFEST.json").is_file()


def test_train_step_refuses_data_the_job_cannot_see(tmp_path):
    with pytest.raises(ValueError, match="is local to this pod"):
        trainjob.train_with_trainjob(
            str(tmp_path / "train.parquet"), "gs://b/e", str(tmp_path / "m"), image=IMAGE
        )
    with pytest.raises(ValueError, match="without a workspace it must be gs://"):
        trainjob.train_with_trainjob("gs://b/t", "gs://b/e", str(tmp_path / "m"), image=IMAGE)


def test_train_step_rejects_a_corrupt_model(tmp_path):
    def corrupt(job: dict) -> None:
        model = fake_model_dir(Path(job["spec"]["trainer"]["command"][11]))
        (model / "weights.pt").write_bytes(b"changed")

    (tmp_path / "t.parquet").write_bytes(b"t")
    corrupted = FakeKubernetes(["Complete"], on_state={"Complete": corrupt})
    with corrupted as k8s, pytest.raises(ValueError, match="weights.pt does not match its sha256"):
        trainjob.train_with_trainjob(
            str(tmp_path / "t.parquet"),
            str(tmp_path / "t.parquet"),
            str(tmp_path / "out"),
            workspace=str(tmp_path / "ws"),
            image=IMAGE,
            namespace="ml",
            api_client=k8s.api_client(),
        )


@pytest.mark.slow
def test_node_command_trains_under_torchrun_with_the_runtimes_variables(gcs, tmp_path, monkeypatch):
    """What a TrainJob node runs, for real: stage the data in from gs://, torchrun with only
    the PET_* variables the torch-distributed runtime sets (2 gloo processes on CPU), node 0
    uploads a verifiable model directory."""
    import pandas as pd
    import yaml

    from feature_repo.sample_data import generate
    from model.export import verify_model_dir

    flat = pd.read_parquet(generate(20_000, 0, tmp_path / "data")["flat"])
    flat = flat.sort_values("event_timestamp")
    cut = int(len(flat) * 0.9)
    for name, rows in (("train", flat.iloc[:cut]), ("eval", flat.iloc[cut:])):
        rows.to_parquet(tmp_path / f"{name}.parquet")
        gcs.blob(f"data/{name}.parquet").upload_from_filename(str(tmp_path / f"{name}.parquet"))
    monkeypatch.setattr(trainjob, "STAGE_DIR", str(tmp_path / "stage"))
    command = manifest(gpus_per_node=0, num_nodes=1)["spec"]["trainer"]["command"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runtime = {"PET_NNODES": "1", "PET_NPROC_PER_NODE": "2", "PET_NODE_RANK": "0"}
    runtime |= {"PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": str(port)}
    bin_dir = str(Path(sys.executable).parent)
    env = os.environ | runtime | {"PATH": f"{bin_dir}:{os.environ['PATH']}"}
    out = subprocess.run(
        command, env=env, cwd=Path(__file__).parents[1], capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    (summary,) = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    batch = yaml.safe_load((Path(__file__).parents[1] / "configs/deepfm.yaml").read_text())
    # each process trains on its shard of the rows left after the validation split (the
    # last 10% by time), for the epochs run before early stopping
    fit = int(round(cut * 0.9))
    per_epoch = math.ceil(math.ceil(fit / 2) / batch["train"]["batch_size"])
    assert summary["global_step"] == per_epoch * summary["epochs_run"]
    back = trainjob.stage_in(GCS["model_uri"], tmp_path / "model")
    verify_model_dir(back)
    saved = json.loads((back / "metrics.json").read_text())
    assert saved["count"] == saved["rows_eval"] == len(flat) - cut
    assert set(saved) == set(summary) - {"model_dir"}  # what rank 0 printed, it wrote
