"""Multi-node DeepFM training as a Kubeflow Trainer v2 ``TrainJob`` (API
``trainer.kubeflow.org/v1alpha1``, Trainer >= v2.2, runtime ``torch-distributed``).

The ``torch-distributed`` ClusterTrainingRuntime runs ``numNodes`` pods (replicated job and
container both named ``node``) and gives each the ``PET_*`` variables that ``torchrun`` reads
as its defaults (``PET_NNODES``, ``PET_NPROC_PER_NODE``, ``PET_NODE_RANK``, ``PET_MASTER_ADDR``,
``PET_MASTER_PORT``); the TrainJob's ``trainer.command`` replaces the runtime's command. So a
node runs exactly the README's multi-node command, its flags coming from the runtime:

    torchrun -m pipelines.cli train --config configs/deepfm.yaml --data TRAIN \\
        --eval-data EVAL --model-dir MODEL --device cuda

Data exchange (the pods see neither the launcher's disk nor each other's):

- **gs:// URIs**: each node downloads the train/eval parquet once before ``torchrun``
  (``python -m training.trainjob stage-in``) and node 0, whose rank-0 process wrote the
  model directory, uploads it after (``stage-out``, MANIFEST.json last). Credentials come
  from Workload Identity on the pods' service account.
- **paths on a shared volume** (ReadWriteMany, e.g. the KFP workspace PVC mounted through
  ``volumes``/``volume_mounts``): ``torchrun`` reads and writes them directly.

Entry points:

- ``trainjob_manifest(...) -> dict``: the TrainJob.
- ``run_trainjob(manifest, namespace, timeout_s) -> TrainJobStatus``: create it, wait for its
  ``Complete`` or ``Failed`` condition; on failure or timeout raise ``TrainJobError`` with the
  condition's reason and the tail of each node's log.
- ``train_with_trainjob(...)``: the body of the pipeline's train step when it trains on a
  TrainJob (stage the data, run, fetch and verify the model directory, return its metrics).
- ``python -m training.trainjob manifest|run|stage-in|stage-out``.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

GROUP = "trainer.kubeflow.org"
VERSION = "v1alpha1"
PLURAL = "trainjobs"
API_VERSION = f"{GROUP}/{VERSION}"
DEFAULT_RUNTIME = "torch-distributed"
DEFAULT_NAMESPACE = "deepfm"
DEFAULT_SERVICE_ACCOUNT = "deepfm-pipeline"  # manifests/base/serviceaccounts.yaml
DEFAULT_CONFIG = "configs/deepfm.yaml"  # relative to the image's working directory, /app
NODE = "node"  # the runtime's replicated job and trainer container
ACCELERATOR = "nvidia.com/gpu"
PATCH_MANAGER = "deepfm-pipeline/trainjob"  # owner of our entry in spec.runtimePatches
# The Trainer webhook refuses these in trainer.env: the torch plugin sets them.
RESERVED_ENV = frozenset(
    {"PET_NNODES", "PET_NPROC_PER_NODE", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT"}
)
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"  # on every pod of the TrainJob
# Node pods are named <name>-node-<i>-<j>; keep them within a 63-character DNS label.
MAX_NAME = 50
NAME = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
STAGE_DIR = "/tmp/deepfm-trainjob"  # per-pod scratch for gs:// data and the model
LABELS = {"app.kubernetes.io/part-of": "deepfm-pipeline", "app.kubernetes.io/component": "train"}
NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class TrainJobError(RuntimeError):
    """The TrainJob could not be created, failed, or did not finish in time. The message
    names the job, the condition's reason and message, and ends with the nodes' log tails."""

    def __init__(self, message: str, *, name: str, state: str, logs: str = "") -> None:
        super().__init__(message + (f"\n{logs}" if logs else ""))
        self.name = name
        self.state = state
        self.logs = logs


@dataclass
class TrainJobStatus:
    """A finished TrainJob: ``state`` is ``Complete``; ``elapsed_s`` in seconds."""

    name: str
    namespace: str
    state: str
    elapsed_s: float
    conditions: list[dict] = field(default_factory=list)


# --------------------------------------------------------------------------- the manifest


def is_gcs(uri: str) -> bool:
    return uri.startswith("gs://")


def _check_uri(what: str, uri: str) -> None:
    if not uri:
        raise ValueError(f"{what} is empty")
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", uri) and not is_gcs(uri):
        raise ValueError(f"{what} {uri!r}: use gs://bucket/path or a path on a shared volume")


def node_command(
    train_uri: str,
    eval_uri: str,
    model_uri: str,
    config: str,
    *,
    device: str,
    epochs: int = 0,
    batch_size: int = 0,
    extra_args: Sequence[str] = (),
) -> list[str]:
    """What each node runs. Paths on a shared volume: ``torchrun -m pipelines.cli train``
    itself (``deepfm train``, i.e. ``training.run.run_training``, the train component's
    function, in each process; ``extra_args`` are more of its flags); gs:// URIs: that line
    inside a bash script that stages the data in first and, on node 0, the model directory
    out after."""
    data = {"train": train_uri, "eval": eval_uri}
    local = {k: f"{STAGE_DIR}/{k}.parquet" if is_gcs(v) else v for k, v in data.items()}
    model_dir = f"{STAGE_DIR}/model" if is_gcs(model_uri) else model_uri
    train = ["torchrun", "-m", "pipelines.cli", "train", "--config", config]
    train += ["--data", local["train"], "--eval-data", local["eval"], "--model-dir", model_dir]
    train += ["--device", device]
    if epochs > 0:
        train += ["--epochs", str(epochs)]
    if batch_size > 0:
        train += ["--batch-size", str(batch_size)]
    train += list(extra_args)
    if not any(is_gcs(u) for u in (train_uri, eval_uri, model_uri)):
        return train
    lines = ["set -euo pipefail"]
    for key, uri in data.items():
        if is_gcs(uri):
            lines.append(
                shlex.join(["python", "-m", "training.trainjob", "stage-in", uri, local[key]])
            )
    lines.append(shlex.join(train))
    if is_gcs(model_uri):
        stage_out = shlex.join(
            ["python", "-m", "training.trainjob", "stage-out", model_dir, model_uri]
        )
        # rank 0 (local rank 0 of node 0) writes the model directory
        lines.append(f'if [ "${{PET_NODE_RANK:-0}}" = 0 ]; then {stage_out}; fi')
    return ["bash", "-c", "\n".join(lines)]


def trainjob_manifest(
    name: str,
    image: str,
    num_nodes: int,
    gpus_per_node: int,
    train_uri: str,
    eval_uri: str,
    model_uri: str,
    config: str = DEFAULT_CONFIG,
    namespace: str = DEFAULT_NAMESPACE,
    *,
    epochs: int = 0,
    batch_size: int = 0,
    extra_args: Sequence[str] = (),
    runtime: str = DEFAULT_RUNTIME,
    service_account: str | None = DEFAULT_SERVICE_ACCOUNT,
    cpu: str = "8",
    memory: str = "32Gi",
    accelerator: str = ACCELERATOR,
    resources: dict | None = None,
    env: Sequence[dict] | None = None,
    node_selector: dict[str, str] | None = None,
    tolerations: Sequence[dict] | None = None,
    affinity: dict | None = None,
    volumes: Sequence[dict] | None = None,
    volume_mounts: Sequence[dict] | None = None,
    suspend: bool = False,
    active_deadline_s: int | None = None,
) -> dict:
    """The TrainJob that trains DeepFM on ``num_nodes`` pods with ``gpus_per_node`` GPUs
    each (0: CPU, one gloo process per node), one process per GPU.

    ``train_uri``/``eval_uri`` are parquet files and ``model_uri`` the model directory to
    write, each gs:// or a path on a volume all nodes mount (``volumes``/``volume_mounts``).
    ``resources`` (a ResourceRequirements dict, e.g. a KFP ``TaskConfig.resources``)
    replaces the ``cpu``/``memory``/GPU requests; its ``accelerator`` limit then sets the
    GPUs. ``env``, ``node_selector``, ``tolerations``, ``affinity``, ``volumes`` and
    ``volume_mounts`` use the Kubernetes JSON field names. ``suspend`` creates it suspended
    (a template to start with ``spec.suspend: false``); ``active_deadline_s`` makes the
    cluster fail it after that many seconds.

    Raises:
        ValueError: naming the bad argument.
    """
    if not NAME.fullmatch(name) or len(name) > MAX_NAME:
        raise ValueError(
            f"TrainJob name {name!r}: lower-case letters, digits and '-', starting with a "
            f"letter, at most {MAX_NAME} characters"
        )
    if num_nodes < 1:
        raise ValueError(f"num_nodes must be >= 1, got {num_nodes}")
    if resources:
        limits = resources.get("limits") or {}
        gpus_per_node = int(limits.get(accelerator, 0))
    elif gpus_per_node < 0:
        raise ValueError(f"gpus_per_node must be >= 0, got {gpus_per_node}")
    for what, uri in (("train_uri", train_uri), ("eval_uri", eval_uri), ("model_uri", model_uri)):
        _check_uri(what, uri)
    env = list(env or [])
    reserved = sorted({e["name"] for e in env} & RESERVED_ENV)
    if reserved:
        raise ValueError(f"env: {', '.join(reserved)} are set by the Trainer's torch plugin")
    if not resources:
        requests = {"cpu": cpu, "memory": memory}
        limits = {"memory": memory}
        if gpus_per_node:
            limits[accelerator] = str(gpus_per_node)
        resources = {"requests": requests, "limits": limits}
    device = "cuda" if gpus_per_node else "cpu"
    command = node_command(
        train_uri,
        eval_uri,
        model_uri,
        config,
        device=device,
        epochs=epochs,
        batch_size=batch_size,
        extra_args=extra_args,
    )
    trainer = {
        "image": image,
        "command": command,
        "numNodes": num_nodes,
        "numProcPerNode": gpus_per_node or 1,
        "resourcesPerNode": resources,
    }
    if env:
        trainer["env"] = env
    spec: dict[str, Any] = {"runtimeRef": {"name": runtime}, "trainer": trainer}
    pod: dict[str, Any] = {}
    if service_account:
        pod["serviceAccountName"] = service_account
    for key, value in (
        ("nodeSelector", node_selector),
        ("tolerations", tolerations),
        ("affinity", affinity),
        ("volumes", volumes),
    ):
        if value:
            pod[key] = value if isinstance(value, dict) else list(value)
    if volume_mounts:
        pod["containers"] = [{"name": NODE, "volumeMounts": list(volume_mounts)}]
    if pod:
        job = {"name": NODE, "template": {"spec": {"template": {"spec": pod}}}}
        spec["runtimePatches"] = [
            {
                "manager": PATCH_MANAGER,
                "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [job]}}},
            }
        ]
    if suspend:
        spec["suspend"] = True
    if active_deadline_s:
        spec["activeDeadlineSeconds"] = int(active_deadline_s)
    return {
        "apiVersion": API_VERSION,
        "kind": "TrainJob",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(LABELS)},
        "spec": spec,
    }


def to_yaml(manifest: dict) -> str:
    """The manifest as YAML, multi-line strings (the node script) as literal blocks."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, text)
    return yaml.dump(manifest, Dumper=Dumper, sort_keys=False, width=100)


# --------------------------------------------------------------------------- running it


def unique_name(prefix: str = "deepfm-train") -> str:
    """``deepfm-train-<8 hex>``: a fresh TrainJob name."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def current_namespace(default: str = DEFAULT_NAMESPACE) -> str:
    """The namespace of the pod this runs in (a pipeline step), else ``default``."""
    try:
        return NAMESPACE_FILE.read_text().strip() or default
    except OSError:
        return default


def kubernetes_client():
    """An ApiClient from the in-cluster service account, else from ~/.kube/config."""
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def _api_message(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    try:
        return json.loads(body)["message"]
    except (TypeError, ValueError, KeyError):
        return f"{getattr(exc, 'status', '')} {getattr(exc, 'reason', exc)}".strip()


def _condition(obj: dict, kind: str) -> dict | None:
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return c
    return None


def node_logs(api_client, name: str, namespace: str, tail_lines: int = 100) -> str:
    """The last ``tail_lines`` lines of each pod of TrainJob ``name``, one block per pod;
    a note instead when the pods or logs cannot be read (not an exception: this is
    diagnostics for an error already being raised)."""
    from kubernetes import client

    core = client.CoreV1Api(api_client)
    try:
        pods = core.list_namespaced_pod(namespace, label_selector=f"{JOBSET_NAME_LABEL}={name}")
    except client.ApiException as e:
        return f"(the pods of {name} could not be listed: {_api_message(e)})"
    if not pods.items:
        return f"(no pods of {name} found)"
    blocks = []
    for pod in sorted(pods.items, key=lambda p: p.metadata.name):
        containers = [c.name for c in pod.spec.containers]
        container = NODE if NODE in containers else containers[0]
        try:
            text = core.read_namespaced_pod_log(
                pod.metadata.name, namespace, container=container, tail_lines=tail_lines
            )
        except client.ApiException as e:
            text = f"(no log: {_api_message(e)})"
        blocks.append(f"--- {pod.metadata.name} ({pod.status.phase}) ---\n{text.rstrip()}")
    return "\n".join(blocks)


def run_trainjob(
    manifest: dict,
    namespace: str,
    timeout_s: float,
    *,
    api_client=None,
    poll_s: float = 15.0,
    log_lines: int = 100,
    delete_on_timeout: bool = True,
    echo=None,
) -> TrainJobStatus:
    """Create the TrainJob in ``namespace`` and wait up to ``timeout_s`` seconds for its
    ``Complete`` condition, polling every ``poll_s`` seconds. A TrainJob of that name that
    already exists is waited for instead (a retried step re-attaches to its job).

    Raises:
        TrainJobError: the API refused it, its ``Failed`` condition came (with the reason,
            the message and each node's log tail), or the time ran out (the job is then
            deleted unless ``delete_on_timeout`` is False).
    """
    from kubernetes import client

    echo = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    api_client = api_client or kubernetes_client()
    api = client.CustomObjectsApi(api_client)
    name = manifest["metadata"]["name"]
    body = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
    where = f"TrainJob {namespace}/{name}"
    start = time.monotonic()
    try:
        api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)
        echo(f"created {where}")
    except client.ApiException as e:
        if e.status != 409:
            raise TrainJobError(
                f"{where} could not be created: {_api_message(e)}", name=name, state="NotCreated"
            ) from None
        echo(f"{where} already exists: waiting for it")
    last = None
    while True:
        try:
            obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except client.ApiException as e:
            raise TrainJobError(
                f"{where} could not be read: {_api_message(e)}", name=name, state="Unknown"
            ) from None
        conditions = (obj.get("status") or {}).get("conditions") or []
        elapsed = time.monotonic() - start
        if _condition(obj, "Complete"):
            echo(f"{where} completed in {elapsed:.0f}s")
            return TrainJobStatus(name, namespace, "Complete", elapsed, conditions)
        failed = _condition(obj, "Failed")
        if failed:
            raise TrainJobError(
                f"{where} failed after {elapsed:.0f}s: {failed.get('reason', '')}: "
                f"{failed.get('message', '')}",
                name=name,
                state="Failed",
                logs=node_logs(api_client, name, namespace, log_lines),
            )
        state = ", ".join(c["type"] for c in conditions if c.get("status") == "True") or "pending"
        if state != last:
            echo(f"{where}: {state}")
            last = state
        if elapsed >= timeout_s:
            logs = node_logs(api_client, name, namespace, log_lines)
            if delete_on_timeout:
                try:
                    api.delete_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, name, propagation_policy="Foreground"
                    )
                except client.ApiException as e:
                    logs += f"\n(deleting {name} failed: {_api_message(e)})"
            raise TrainJobError(
                f"{where} did not finish within {timeout_s:.0f}s (state: {state})"
                + ("; deleted it" if delete_on_timeout else ""),
                name=name,
                state="Timeout",
                logs=logs,
            )
        time.sleep(max(0.0, min(poll_s, timeout_s - elapsed)))


# --------------------------------------------------------------------------- data staging


def stage_in(uri: str, dest: str | Path) -> Path:
    """Copy ``uri`` (gs://bucket/key or a local path) to ``dest``: one object/file to the
    file ``dest``, or every object under the prefix/folder into the folder ``dest``.

    Raises:
        FileNotFoundError: nothing is at ``uri``.
    """
    dest = Path(dest)
    if not is_gcs(uri):
        src = Path(uri)
        if src.is_dir():
            shutil.copytree(src, dest, dirs_exist_ok=True)
        elif src.is_file():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
        else:
            raise FileNotFoundError(f"{uri} does not exist")
        return dest
    from google.cloud import storage

    from registry.model_registry import split_gcs_uri

    bucket_name, key = split_gcs_uri(uri)
    bucket = storage.Client().bucket(bucket_name)
    blob = bucket.get_blob(key) if key else None
    if blob is not None:
        dest.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(dest))
        return dest
    prefix = f"{key}/" if key else ""
    found = False
    for item in bucket.list_blobs(prefix=prefix):
        if item.name.endswith("/"):
            continue  # a folder placeholder
        target = dest / item.name[len(prefix) :]
        target.parent.mkdir(parents=True, exist_ok=True)
        item.download_to_filename(str(target))
        found = True
    if not found:
        raise FileNotFoundError(f"{uri}: no object and no objects under it")
    return dest


def stage_out(src: str | Path, uri: str) -> str:
    """Copy the folder ``src`` to ``uri`` (gs://bucket/prefix or a local folder),
    ``MANIFEST.json`` last so a reader never sees a manifest before its files.

    Raises:
        FileNotFoundError: ``src`` is not a folder.
    """
    src = Path(src)
    if not src.is_dir():
        raise FileNotFoundError(f"{src} is not a folder")
    files = sorted(
        (p for p in src.rglob("*") if p.is_file()), key=lambda p: (p.name == "MANIFEST.json", p)
    )
    if not is_gcs(uri):
        for p in files:
            target = Path(uri) / p.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(p, target)
        return uri
    from google.cloud import storage

    from registry.model_registry import split_gcs_uri

    bucket_name, key = split_gcs_uri(uri)
    bucket = storage.Client().bucket(bucket_name)
    for p in files:
        name = "/".join(filter(None, (key, p.relative_to(src).as_posix())))
        bucket.blob(name).upload_from_filename(str(p))
    return uri


# --------------------------------------------------------------------------- the train step


def train_with_trainjob(
    train_data: str,
    eval_data: str,
    model_dir: str,
    *,
    image: str,
    model_config: str = DEFAULT_CONFIG,
    num_nodes: int = 2,
    gpus_per_node: int = 1,
    epochs: int = 0,
    batch_size: int = 0,
    model_uri: str | None = None,
    workspace: str | None = None,
    namespace: str | None = None,
    name: str | None = None,
    service_account: str | None = DEFAULT_SERVICE_ACCOUNT,
    timeout_s: float = 6 * 3600,
    poll_s: float = 15.0,
    resources: dict | None = None,
    env: Sequence[dict] | None = None,
    node_selector: dict[str, str] | None = None,
    tolerations: Sequence[dict] | None = None,
    affinity: dict | None = None,
    volumes: Sequence[dict] | None = None,
    volume_mounts: Sequence[dict] | None = None,
    api_client=None,
) -> dict:
    """Train on a TrainJob and leave the verified model directory in ``model_dir``.

    Either the data are gs:// URIs (a KFP artifact's ``.uri`` under a GCS pipeline root)
    and ``model_uri`` is the gs:// prefix the job writes the model to (e.g. the output
    Model's ``.uri``); or ``workspace`` is a folder on a ReadWriteMany volume that the job
    mounts too (``volumes``/``volume_mounts``, e.g. the KFP workspace): local
    ``train_data``/``eval_data`` are copied to ``<workspace>/<name>/`` and the model is
    written to ``<workspace>/<name>/model``. The other keyword arguments are those of
    ``trainjob_manifest`` (``resources`` ... ``volume_mounts``: a KFP ``TaskConfig``'s
    fields) and ``run_trainjob``. The namespace defaults to this pod's.

    Returns the model's metrics.json (``training.run.run_training``'s summary: ``auc``,
    ``logloss``, ..., ``rows_train``, ``history``) plus ``trainjob`` (the job's name) and
    ``trainjob_seconds``.

    Raises:
        ValueError: data that the job's pods could not see, or a bad argument.
        TrainJobError: the job failed or timed out.
    """
    name = name or unique_name()
    namespace = namespace or current_namespace()
    if workspace:
        stage = Path(workspace) / name
        data = {}
        for key, path in (("train", train_data), ("eval", eval_data)):
            data[key] = path if is_gcs(path) else str(stage_in(path, stage / f"{key}.parquet"))
        train_data, eval_data = data["train"], data["eval"]
        model_uri = model_uri or str(stage / "model")
    else:
        for what, uri in (("train_data", train_data), ("eval_data", eval_data)):
            if not is_gcs(uri):
                raise ValueError(
                    f"{what} {uri!r} is local to this pod: pass a gs:// URI, or a workspace "
                    "on a volume the TrainJob mounts"
                )
        if not model_uri or not is_gcs(model_uri):
            raise ValueError(f"model_uri {model_uri!r}: without a workspace it must be gs://")
    manifest = trainjob_manifest(
        name,
        image,
        num_nodes,
        gpus_per_node,
        train_data,
        eval_data,
        model_uri,
        model_config,
        namespace,
        epochs=epochs,
        batch_size=batch_size,
        service_account=service_account,
        resources=resources,
        env=env,
        node_selector=node_selector,
        tolerations=tolerations,
        affinity=affinity,
        volumes=volumes,
        volume_mounts=volume_mounts,
    )
    status = run_trainjob(manifest, namespace, timeout_s, api_client=api_client, poll_s=poll_s)
    if str(model_dir).rstrip("/") != model_uri.rstrip("/"):
        stage_in(model_uri, model_dir)
    from model.export import verify_model_dir

    verify_model_dir(model_dir)
    metrics = json.loads((Path(model_dir) / "metrics.json").read_text())
    return {**metrics, "trainjob": name, "trainjob_seconds": status.elapsed_s}


# --------------------------------------------------------------------------- command line


def _manifest_from_args(args: argparse.Namespace) -> dict:
    return trainjob_manifest(
        args.name or unique_name(),
        args.image,
        args.num_nodes,
        args.gpus_per_node,
        args.train_uri,
        args.eval_uri,
        args.model_uri,
        args.config,
        args.namespace,
        epochs=args.epochs,
        batch_size=args.batch_size,
        extra_args=args.extra,
        runtime=args.runtime,
        service_account=args.service_account or None,
        cpu=args.cpu,
        memory=args.memory,
        suspend=getattr(args, "suspend", False),
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m training.trainjob manifest|run|stage-in|stage-out``; exit 2 on bad
    input, 1 when the job fails."""
    parser = argparse.ArgumentParser(prog="python -m training.trainjob", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    job = argparse.ArgumentParser(add_help=False)
    job.add_argument("--name", help="TrainJob name (default: deepfm-train-<random>)")
    job.add_argument("--image", required=True, help="the project image")
    job.add_argument("--num-nodes", type=int, default=2)
    job.add_argument("--gpus-per-node", type=int, default=1, help="0: CPU")
    job.add_argument("--train-uri", required=True, help="gs:// or a shared-volume path")
    job.add_argument("--eval-uri", required=True)
    job.add_argument("--model-uri", required=True, help="where the model directory goes")
    job.add_argument("--config", default=DEFAULT_CONFIG)
    job.add_argument("--namespace", default=DEFAULT_NAMESPACE)
    job.add_argument("--runtime", default=DEFAULT_RUNTIME)
    job.add_argument("--service-account", default=DEFAULT_SERVICE_ACCOUNT)
    job.add_argument("--cpu", default="8", help="CPU request per node")
    job.add_argument("--memory", default="32Gi", help="memory per node")
    job.add_argument("--epochs", type=int, default=0)
    job.add_argument("--batch-size", type=int, default=0)
    job.add_argument("extra", nargs="*", help="after --: more `deepfm train` flags")
    man = sub.add_parser("manifest", parents=[job], help="print the TrainJob as YAML")
    man.add_argument("--suspend", action="store_true", help="create it suspended")
    run = sub.add_parser("run", parents=[job], help="create the TrainJob and wait for it")
    run.add_argument("--timeout", type=float, default=6 * 3600, help="seconds")
    sin = sub.add_parser("stage-in", help="copy gs://... (object or prefix) to a local path")
    sin.add_argument("uri")
    sin.add_argument("dest")
    sout = sub.add_parser("stage-out", help="copy a local folder to gs://... (MANIFEST last)")
    sout.add_argument("src")
    sout.add_argument("uri")
    args = parser.parse_args(argv)
    try:
        if args.command == "manifest":
            print(to_yaml(_manifest_from_args(args)), end="")
        elif args.command == "run":
            status = run_trainjob(_manifest_from_args(args), args.namespace, args.timeout)
            print(json.dumps(status.__dict__))
        elif args.command == "stage-in":
            print(stage_in(args.uri, args.dest))
        else:
            print(stage_out(args.src, args.uri))
    except (ValueError, FileNotFoundError) as e:
        print(f"{parser.prog} {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"{parser.prog} {args.command}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
