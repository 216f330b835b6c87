"""Defaults of the pipeline and its commands, importable without kfp, pandas or torch.

``deepfm --help`` shows these; the modules that use them (``pipelines.pipeline``,
``pipelines.local_run``) import them from here, so the help and the code cannot disagree.
This module imports the standard library (and the light ``components`` package) only.
"""

from __future__ import annotations

from pathlib import Path

from components import BASE_IMAGE
from components.settings import (  # noqa: F401 (the names the pipeline mounts)
    FEAST_CONFIG_FILE,
    FEAST_CONFIG_MOUNT,
    FEAST_CONFIGMAP,
    OVERLAY_ENV,
    OVERLAY_VOLUMES,
    SETTINGS_CONFIGMAP,
    STORE_SETTINGS,
)

PIPELINE_NAME = "deepfm-ctr"
# Where the cluster keeps models (manifests/ set this bucket up); override per run or at
# compile time with --push-destination.
DEFAULT_DESTINATION = "gs://deepfm-models/deepfm"
# The feature repo inside the image (the Dockerfile copies the project to /app).
DEFAULT_FEATURE_REPO = "/app/feature_repo"
DEFAULT_IMAGE = BASE_IMAGE
DEFAULT_ACCELERATOR_TYPE = "nvidia.com/gpu"
# Where the compiled spec runs: a Kubeflow Pipelines server (Kubernetes: node selectors,
# tolerations and pod timeouts in a platform document) or Vertex AI Pipelines (one
# document; the machine is picked from the limits and the accelerator).
PLATFORMS = ("kubeflow", "vertex")
DEFAULT_PLATFORM = "kubeflow"
# Vertex AI names accelerators by its AcceleratorType enum; these are its GPUs (TPUs and
# the retired K80 left out: the trainer runs PyTorch on CUDA).
VERTEX_ACCELERATOR_TYPES = (
    "NVIDIA_TESLA_T4",
    "NVIDIA_L4",
    "NVIDIA_TESLA_V100",
    "NVIDIA_TESLA_P100",
    "NVIDIA_TESLA_P4",
    "NVIDIA_TESLA_A100",
    "NVIDIA_A100_80GB",
    "NVIDIA_H100_80GB",
    "NVIDIA_H100_MEGA_80GB",
    "NVIDIA_H200_141GB",
    "NVIDIA_B200",
    "NVIDIA_GB200",
    "NVIDIA_RTX_PRO_6000",
)
# On Kubernetes an accelerator is an extended resource name (vendor-domain/resource).
KUBEFLOW_ACCELERATOR_EXAMPLES = ("nvidia.com/gpu", "amd.com/gpu")
DEFAULT_ACCELERATOR_TYPES = {"kubeflow": DEFAULT_ACCELERATOR_TYPE, "vertex": "NVIDIA_L4"}
DEFAULT_TRAIN_CPU = "4"
DEFAULT_TRAIN_MEMORY = "16G"
DEFAULT_TRAINER = "local"
DEFAULT_NUM_NODES = 2

# The tasks of the pipeline (their names in the compiled spec; "train" also names the
# TrainJob launcher, whose resources go to each node).
STEPS = (
    "validate",
    "require-valid-data",
    "features",
    "train",
    "evaluate",
    "push",
    "rollout",
    "record-not-pushed",
)
# Each task's (cpu request, cpu limit, memory request, memory limit). Memory limit =
# request: a step over its request is killed at once rather than when the node runs short.
# train's come from --train-cpu/--train-memory (limits = requests).
STEP_RESOURCES = {
    "validate": ("1", "2", "4G", "4G"),
    "require-valid-data": ("100m", "500m", "256M", "256M"),
    "features": ("2", "4", "8G", "8G"),
    "evaluate": ("2", "4", "8G", "8G"),
    "push": ("500m", "1", "1G", "1G"),
    "rollout": ("100m", "500m", "256M", "256M"),
    "record-not-pushed": ("100m", "500m", "256M", "256M"),
}
# Retries where a failure is transient: (retries, first backoff, backoff factor). The
# feature store's offline source and the registry's bucket are remote; a GPU node may be
# preempted; the InferenceService may change between the rollout's read and its patch.
STEP_RETRIES = {
    "features": (3, "60s", 2.0),
    "train": (2, "300s", 2.0),
    "push": (3, "30s", 2.0),
    "rollout": (2, "30s", 2.0),
}
RETRY_MAX_DURATION = "3600s"
# Default timeouts in seconds, in a spec compiled for a cluster (an overlay: the pod's
# activeDeadlineSeconds); --timeout sets others. The rollout reads and patches one object.
STEP_TIMEOUTS = {"rollout": 600}
# The optional rollout step's run parameters: the InferenceService ("" = no rollout), its
# namespace (the manifests' deepfm) and the share of traffic the new model gets at first.
DEFAULT_INFERENCE_SERVICE_NAMESPACE = "deepfm"
DEFAULT_CANARY_PERCENT = 100

# What a cluster gives the steps (manifests/): the overlay whose ConfigMaps and volume claim
# the compiled spec mounts by name (kfp-kubernetes), or "none" (no cluster settings: a
# kfp.local run, Vertex AI). The names are the manifests' own; tests/test_manifests.py and
# tests/test_pipeline.py check that they agree.
OVERLAYS = ("gcp", "local", "none")
DEFAULT_OVERLAY = "gcp"
# The local overlay's model registry (its DEEPFM_MODEL_URI), on the deepfm-local volume.
LOCAL_OVERLAY_DESTINATION = "/var/lib/deepfm/models/deepfm"

# ``deepfm pipeline run-local``: this checkout's folders.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCAL_PIPELINE_ROOT = PROJECT_ROOT / "local_outputs"
LOCAL_REGISTRY = PROJECT_ROOT / "artifacts" / "registry"
LOCAL_FEATURE_REPO = PROJECT_ROOT / "feature_repo"

# The environment variable the CLI sets to its log level (DEBUG with -v, else INFO), so
# that processes it starts (kfp.local's tasks) log alike.
LOG_LEVEL_ENV = "DEEPFM_LOG_LEVEL"
