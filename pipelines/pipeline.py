"""The DeepFM Kubeflow pipeline: wiring only.

    validate -> features -> train -> evaluate -> dsl.If(blessed): push [-> rollout]
                                                 dsl.Else: record

rollout (KServe: the InferenceService's storage URI and canary traffic) runs only when the
run's ``inference_service`` parameter is set.

Compile-time options (``PipelineOptions``: platform, image, GPUs, node selector,
tolerations, each task's resources, retries and timeouts) shape the tasks; run-time
parameters (window, feature repo, model config, gate thresholds, push destination,
epoch/batch overrides) have defaults that work when a run is started from the Kubeflow UI
in a cluster set up as in ``manifests/``.

What a step reads from the cluster is declared here (``_cluster_inputs``, kfp-kubernetes):
the ``deepfm-settings`` keys, ``feast-config`` and the overlay's data claim, by the names of
``manifests/``; the steps check them (``components/settings.py``). With ``spark`` they mount
the Spark profile's ConfigMap and get the driver's pod IP and the executors' image. On
Vertex AI (no platform document) the same settings are the steps' own variables. An empty
``window_end`` is the run's scheduled time, resolved by KFP per run, so runs over different
windows never share a cached step.
"""

import re
from dataclasses import dataclass, field

from kfp import compiler, dsl, kubernetes

from components.evaluate import evaluate
from components.features import features
from components.push import push, record_not_pushed
from components.rollout import rollout
from components.settings import (
    FEAST_CONFIG_ENV,
    FEAST_SPARK_CONFIGMAP,
    SPARK_DRIVER_HOST_ENV,
    SPARK_IMAGE_ENV,
    VERTEX,
    VERTEX_SETTINGS,
    gcs_path,
)
from components.train import train, train_trainjob
from components.validate import require_valid_data, validate
from pipelines.defaults import (
    DEFAULT_ACCELERATOR_TYPES,
    DEFAULT_CANARY_PERCENT,
    DEFAULT_DESTINATION,
    DEFAULT_FEATURE_REPO,
    DEFAULT_IMAGE,
    DEFAULT_INFERENCE_SERVICE_NAMESPACE,
    DEFAULT_NUM_NODES,
    DEFAULT_OVERLAY,
    DEFAULT_PLATFORM,
    DEFAULT_TRAIN_CPU,
    DEFAULT_TRAIN_MEMORY,
    DEFAULT_TRAINER,
    FEAST_CONFIG_FILE,
    FEAST_CONFIG_MOUNT,
    FEAST_CONFIGMAP,
    KUBEFLOW_ACCELERATOR_EXAMPLES,
    LOCAL_OVERLAY_DESTINATION,
    OVERLAY_ENV,
    OVERLAY_VOLUMES,
    OVERLAYS,
    PIPELINE_NAME,
    PLATFORMS,
    RETRY_MAX_DURATION,
    SETTINGS_CONFIGMAP,
    STEP_RESOURCES,
    STEP_RETRIES,
    STEP_TIMEOUTS,
    STEPS,
    STORE_SETTINGS,
    VERTEX_ACCELERATOR_TYPES,
)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")  # an environment variable's name
# A Kubernetes extended resource name: vendor-domain/resource, e.g. nvidia.com/gpu.
_K8S_RESOURCE = re.compile(
    r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$"
)


@dataclass
class Toleration:
    key: str
    operator: str = "Exists"
    value: str | None = None
    effect: str | None = None


@dataclass(frozen=True)
class Resources:
    """A task's CPU and memory (Kubernetes quantities: "500m", "2", "256M", "8G")."""

    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str


@dataclass
class PipelineOptions:
    """Compile-time settings of the tasks (not visible as run parameters)."""

    # "kubeflow" or "vertex" (Vertex AI Pipelines: one YAML document, no Kubernetes
    # settings; a task's machine is picked from its limits and accelerator)
    platform: str = DEFAULT_PLATFORM
    image: str = DEFAULT_IMAGE
    gpus: int = 0
    # None: the platform's default (nvidia.com/gpu on kubeflow, NVIDIA_L4 on vertex)
    accelerator_type: str | None = None
    train_cpu: str = DEFAULT_TRAIN_CPU
    train_memory: str = DEFAULT_TRAIN_MEMORY
    node_selector: dict[str, str] = field(default_factory=dict)
    tolerations: list[Toleration] = field(default_factory=list)
    push_destination: str = DEFAULT_DESTINATION
    feature_repo: str = DEFAULT_FEATURE_REPO
    # "local": train in the step's own pod; "trainjob": the step launches a Kubeflow
    # Trainer TrainJob of num_nodes nodes (the GPUs, node selector and tolerations above
    # apply to each node) and collects its model (needs a gs:// pipeline root).
    trainer: str = DEFAULT_TRAINER
    num_nodes: int = DEFAULT_NUM_NODES
    # per task (a name of defaults.STEPS): overrides of its CPU/memory, of its number of
    # retries (0: none) and its timeout in seconds (kubeflow only: the pod's
    # activeDeadlineSeconds; kfp 2.17 has no per-task timeout that Vertex reads)
    resources: dict[str, Resources] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=dict)
    timeouts: dict[str, int] = field(default_factory=dict)
    # The cluster the steps get their feature store settings and sources from: the
    # overlay of manifests/ whose ConfigMaps (deepfm-settings, feast-config) and volume
    # claim the spec mounts by name; "none": no cluster settings (kfp.local, Vertex AI).
    # "": gcp on kubeflow, none on vertex.
    overlay: str = ""
    # Where the overlay's data claim and feast-config are mounted ("": the manifests'
    # /var/lib/deepfm/... and /etc/feast); the data mount must hold DEEPFM_DATA_DIR.
    data_mount: str = ""
    feast_config_mount: str = FEAST_CONFIG_MOUNT
    # Vertex AI: the feature store settings of validate and features (their environment;
    # gs:// paths become Vertex AI's /gcs/ mount), over components.settings.VERTEX_SETTINGS
    # (on the push destination's bucket). On kubeflow the overlay's ConfigMaps give them.
    store_settings: dict[str, str] = field(default_factory=dict)
    # The Spark profile (manifests/spark): validate and features mount feast-config-spark
    # instead of feast-config and run the Spark driver in their pod (SPARK_DRIVER_HOST = the
    # pod's IP, DEEPFM_IMAGE = image for the executors). Kubeflow with an overlay only.
    spark: bool = False
    # window_end "" = the run's scheduled time, which KFP and Vertex AI resolve per run;
    # False: "" = now (kfp.local cannot resolve the placeholder)
    scheduled_window: bool = True

    def __post_init__(self) -> None:
        if self.overlay and self.overlay not in OVERLAYS:
            raise ValueError(f"overlay must be one of {', '.join(OVERLAYS)}, got {self.overlay!r}")
        for name in ("data_mount", "feast_config_mount"):
            value = getattr(self, name)
            if value and not value.startswith("/"):
                raise ValueError(f"{name} must be an absolute path, got {value!r}")
        if self.platform not in PLATFORMS:
            raise ValueError(
                f"platform must be one of {', '.join(PLATFORMS)}, got {self.platform!r}"
            )
        if self.trainer not in ("local", "trainjob"):
            raise ValueError(f"trainer must be 'local' or 'trainjob', got {self.trainer!r}")
        if self.num_nodes < 1:
            raise ValueError(f"num_nodes must be >= 1, got {self.num_nodes}")
        if self.gpus < 0:
            raise ValueError(f"gpus must be >= 0, got {self.gpus}")
        _check_accelerator(self.platform, self.accelerator)
        for what, mapping in [
            ("resources", self.resources),
            ("retries", self.retries),
            ("timeouts", self.timeouts),
        ]:
            unknown = sorted(set(mapping) - set(STEPS))
            if unknown:
                raise ValueError(
                    f"{what}: unknown step {', '.join(unknown)}; the steps: {', '.join(STEPS)}"
                )
        for step, n in self.retries.items():
            if n < 0:
                raise ValueError(f"retries of {step} must be >= 0, got {n}")
        for step, seconds in self.timeouts.items():
            if seconds < 1:
                raise ValueError(f"timeout of {step} must be >= 1 second, got {seconds}")
        for name, value in self.store_settings.items():
            if not _ENV_NAME.match(name):
                raise ValueError(f"--store-setting {name!r}: not a variable name (A-Z, 0-9, _)")
            if not value:
                raise ValueError(f"--store-setting {name}: the value is empty")
        if self.store_settings and self.platform != "vertex":
            raise ValueError(
                f"--store-setting {', '.join(self.store_settings)}: Vertex AI only; on "
                f"kubeflow the overlay's ConfigMap {SETTINGS_CONFIGMAP} gives them"
            )
        if self.spark and self.cluster_overlay == "none":
            raise ValueError(
                "spark: the Spark profile runs its executors as pods of the cluster "
                "(manifests/spark); compile for kubeflow with an overlay (gcp, local)"
            )
        if self.platform == "vertex":
            kubernetes_only = {
                "node selectors": self.node_selector,
                "tolerations": self.tolerations,
                "timeouts": self.timeouts,
                "the trainjob trainer": self.trainer == "trainjob",
                "the Spark profile": self.spark,
                f"the {self.overlay} overlay's ConfigMaps and volumes": self.overlay
                not in ("", "none"),
            }
            used = [name for name, value in kubernetes_only.items() if value]
            if used:
                raise ValueError(
                    f"{' and '.join(used)}: Kubernetes only, which Vertex AI Pipelines does "
                    "not read (a step's machine comes from its CPU/memory limits and "
                    "accelerator type): leave them out or compile for kubeflow"
                )

    @property
    def cluster_overlay(self) -> str:
        """The overlay the steps mount settings from: the given one, else the platform's
        default (gcp on kubeflow, none on vertex)."""
        if self.overlay:
            return self.overlay
        return DEFAULT_OVERLAY if self.platform == "kubeflow" else "none"

    @property
    def destination(self) -> str:
        """The default push destination: the given one; with the local overlay and the
        (gs://) default, the overlay's model registry on its volume."""
        if self.cluster_overlay == "local" and self.push_destination == DEFAULT_DESTINATION:
            return LOCAL_OVERLAY_DESTINATION
        return self.push_destination

    @property
    def vertex_settings(self) -> dict[str, str]:
        """The variables validate and features get on Vertex AI: the defaults on the push
        destination's bucket (else the default one's), the given ones over them."""
        destination = self.destination
        if not destination.startswith("gs://"):
            destination = DEFAULT_DESTINATION
        bucket = destination.removeprefix("gs://").split("/", 1)[0]
        settings = {k: v.format(bucket=bucket) for k, v in VERTEX_SETTINGS.items()}
        settings.update(self.store_settings)
        return {k: gcs_path(v) for k, v in settings.items()}

    @property
    def accelerator(self) -> str:
        """The accelerator type: the given one, else the platform's default."""
        return self.accelerator_type or DEFAULT_ACCELERATOR_TYPES[self.platform]

    def step_resources(self, step: str) -> Resources:
        if step in self.resources:
            return self.resources[step]
        if step == "train":
            return Resources(self.train_cpu, self.train_cpu, self.train_memory, self.train_memory)
        return Resources(*STEP_RESOURCES[step])


def _check_accelerator(platform: str, accelerator: str) -> None:
    if platform == "vertex":
        if accelerator not in VERTEX_ACCELERATOR_TYPES:
            raise ValueError(
                f"accelerator type {accelerator!r} is not a Vertex AI accelerator; "
                f"valid on vertex: {', '.join(VERTEX_ACCELERATOR_TYPES)}"
            )
    elif not _K8S_RESOURCE.match(accelerator):
        raise ValueError(
            f"accelerator type {accelerator!r} is not a Kubernetes resource name; valid on "
            f"kubeflow: a vendor-domain/resource name such as "
            f"{', '.join(KUBEFLOW_ACCELERATOR_EXAMPLES)} (pick the GPU model with "
            "--node-selector; Vertex AI's names such as NVIDIA_L4 need --platform vertex)"
        )


def _configure(task, step: str, opts: PipelineOptions):
    """The task's image, CPU/memory, retry policy and (kubeflow) timeout."""
    task.set_container_image(opts.image)
    r = opts.step_resources(step)
    try:
        if opts.platform == "kubeflow":
            task.set_cpu_request(r.cpu_request).set_memory_request(r.memory_request)
        # Vertex AI reads the limits only: they pick the step's machine
        task.set_cpu_limit(r.cpu_limit).set_memory_limit(r.memory_limit)
    except ValueError as e:  # kfp's message names neither the step nor the value
        raise ValueError(
            f"{step}: cpu {r.cpu_request}/{r.cpu_limit}, memory "
            f"{r.memory_request}/{r.memory_limit}: {e}"
        ) from e
    retries, backoff, factor = STEP_RETRIES.get(step, (0, "0s", 2.0))
    retries = opts.retries.get(step, retries)
    if retries > 0:
        task.set_retry(
            retries,
            backoff_duration=backoff,
            backoff_factor=factor,
            backoff_max_duration=RETRY_MAX_DURATION,
        )
    timeout = opts.timeouts.get(step)
    if timeout is None and opts.cluster_overlay != "none":  # compiled for a Kubeflow cluster
        timeout = STEP_TIMEOUTS.get(step)
    if timeout:
        kubernetes.set_timeout(task, timeout)
    _cluster_inputs(task, step, opts)
    return task


def _cluster_inputs(task, step: str, opts: PipelineOptions) -> None:
    """What the step reads from the cluster, declared in the spec (kfp-kubernetes) under
    the names of manifests/: the deepfm-settings keys as variables and feast-config as a
    volume (features), the overlay's data claim and its pod annotations. The ConfigMaps are
    optional in the pod spec: a missing one fails the step at once, naming the setting
    (components/settings.py), instead of leaving the pod pending."""
    overlay = opts.cluster_overlay
    if opts.platform == VERTEX and step in ("validate", "features"):
        # no platform document: the settings are the spec's own variables
        task.set_env_variable(OVERLAY_ENV, VERTEX)
        for name, value in opts.vertex_settings.items():
            task.set_env_variable(name, value)
    if overlay == "none":
        return
    kubernetes.add_pod_label(task, "app.kubernetes.io/part-of", "deepfm-pipeline")
    if step in ("validate", "features"):
        task.set_env_variable(OVERLAY_ENV, overlay)
        kubernetes.use_config_map_as_env(
            task,
            SETTINGS_CONFIGMAP,
            config_map_key_to_env={k: k for k in STORE_SETTINGS},
            optional=True,
        )
    if step == "features" or (opts.spark and step == "validate"):
        # the Spark profile: validation reads the sources through Spark too
        kubernetes.use_config_map_as_volume(
            task,
            FEAST_SPARK_CONFIGMAP if opts.spark else FEAST_CONFIGMAP,
            mount_path=opts.feast_config_mount,
            optional=True,
        )
        task.set_env_variable(FEAST_CONFIG_ENV, f"{opts.feast_config_mount}/{FEAST_CONFIG_FILE}")
    if opts.spark and step in ("validate", "features"):
        # the driver runs in the step's pod (client mode): executors reach it at its IP
        kubernetes.use_field_path_as_env(task, SPARK_DRIVER_HOST_ENV, "status.podIP")
        task.set_env_variable(SPARK_IMAGE_ENV, opts.image)
    volume = OVERLAY_VOLUMES[overlay]
    if step in volume["steps"]:
        kubernetes.mount_pvc(task, volume["claim"], opts.data_mount or volume["mount"])
        for key, value in volume["annotations"].items():
            kubernetes.add_pod_annotation(task, key, value)


def build_pipeline(options: PipelineOptions | None = None):
    """The ``@dsl.pipeline`` function for these compile-time options."""
    opts = options or PipelineOptions()

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="DeepFM CTR ranking: validate -> Feast features -> train -> "
        "evaluate/gate on AUC -> push the blessed model",
    )
    def deepfm_pipeline(
        feature_repo: str = opts.feature_repo,
        window_end: str = "",
        window_days: float = 7.0,
        eval_fraction: float = 0.1,
        model_config: str = "configs/deepfm.yaml",
        min_auc: float = 0.70,
        max_auc_drop: float = 0.005,
        push_destination: str = opts.destination,
        model_version: str = "",
        epochs: int = 0,
        batch_size: int = 0,
        inference_service: str = "",
        inference_service_namespace: str = DEFAULT_INFERENCE_SERVICE_NAMESPACE,
        canary_percent: int = DEFAULT_CANARY_PERCENT,
    ):
        # window_end "" = the run's scheduled time, resolved by KFP per run: runs over
        # different windows never share a cache entry, a re-run of one window may
        scheduled_at = (
            dsl.PIPELINE_JOB_SCHEDULE_TIME_UTC_PLACEHOLDER if opts.scheduled_window else ""
        )
        validated = validate(
            feature_repo=feature_repo,
            window_end=window_end,
            window_days=window_days,
            scheduled_at=scheduled_at,
        ).set_display_name("validate raw data")
        _configure(validated, "validate", opts)
        checked = require_valid_data(
            passed=validated.outputs["passed"], failures=validated.outputs["failures"]
        ).set_display_name("stop on invalid data")
        _configure(checked, "require-valid-data", opts)
        data = (
            features(
                feature_repo=feature_repo,
                window_end=window_end,
                window_days=window_days,
                eval_fraction=eval_fraction,
                scheduled_at=scheduled_at,
            )
            .after(checked)
            .set_display_name("features from Feast")
        )
        _configure(data, "features", opts)
        inputs = {
            "train_data": data.outputs["train_data"],
            "eval_data": data.outputs["eval_data"],
            "model_config": model_config,
            "epochs": epochs,
            "batch_size": batch_size,
        }
        if opts.trainer == "trainjob":
            trained = train_trainjob(
                **inputs, image=opts.image, num_nodes=opts.num_nodes, workspace_path=""
            ).set_display_name(f"train DeepFM on a {opts.num_nodes}-node TrainJob")
        else:
            trained = train(**inputs).set_display_name("train DeepFM")
        _configure(trained, "train", opts)
        if opts.gpus > 0:
            trained.set_accelerator_type(opts.accelerator).set_accelerator_limit(opts.gpus)
        for key, value in opts.node_selector.items():
            kubernetes.add_node_selector(trained, label_key=key, label_value=value)
        for t in opts.tolerations:
            kubernetes.add_toleration(
                trained, key=t.key, operator=t.operator, value=t.value, effect=t.effect
            )
        evaluated = evaluate(
            model=trained.outputs["model"],
            eval_data=data.outputs["eval_data"],
            push_destination=push_destination,
            min_auc=min_auc,
            max_auc_drop=max_auc_drop,
        ).set_display_name("evaluate and gate")
        _configure(evaluated, "evaluate", opts)
        with dsl.If(evaluated.outputs["blessed"] == True, name="blessed"):  # noqa: E712
            pushed = push(
                model=trained.outputs["model"],
                destination=push_destination,
                version=model_version,
                auc=evaluated.outputs["auc"],
            ).set_display_name("push blessed model")
            _configure(pushed, "push", opts)
            # KServe serves the pushed model (gs:// destinations) when a service is named
            with dsl.If(inference_service != "", name="roll-out"):
                rolled = rollout(
                    pushed_model=pushed.outputs["pushed_model"],
                    destination=push_destination,
                    inference_service=inference_service,
                    namespace=inference_service_namespace,
                    canary_percent=canary_percent,
                ).set_display_name("roll out through KServe")
                _configure(rolled, "rollout", opts)
        with dsl.Else(name="not-blessed"):
            recorded = record_not_pushed(
                auc=evaluated.outputs["auc"],
                baseline_auc=evaluated.outputs["baseline_auc"],
                reason="the evaluation did not bless the model",
            ).set_display_name("record: not pushed")
            _configure(recorded, "record-not-pushed", opts)

    return deepfm_pipeline


def compile_pipeline(path: str, options: PipelineOptions | None = None) -> str:
    """Write the pipeline spec (YAML) to ``path``; returns the path."""
    compiler.Compiler().compile(build_pipeline(options), package_path=path)
    return path
