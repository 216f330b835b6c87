"""Defaults of the pipeline and its commands, importable without kfp, pandas or torch.

``deepfm --help`` shows these; the modules that use them (``pipelines.pipeline``,
``pipelines.local_run``) import them from here, so the help and the code cannot disagree.
This module imports the standard library (and the light ``components`` package) only.
"""

from __future__ import annotations

from pathlib import Path

from components import BASE_IMAGE

PIPELINE_NAME = "deepfm-ctr"
# Where the cluster keeps models (manifests/ set this bucket up); override per run or at
# compile time with --push-destination.
DEFAULT_DESTINATION = "gs://deepfm-models/deepfm"
# The feature repo inside the image (the Dockerfile copies the project to /app).
DEFAULT_FEATURE_REPO = "/app/feature_repo"
DEFAULT_IMAGE = BASE_IMAGE
DEFAULT_ACCELERATOR_TYPE = "nvidia.com/gpu"
DEFAULT_TRAIN_CPU = "4"
DEFAULT_TRAIN_MEMORY = "16G"
DEFAULT_TRAINER = "local"
DEFAULT_NUM_NODES = 2

# ``deepfm pipeline run-local``: this checkout's folders.
PROJECT_ROOT = Path(__file__).resolve().parents[1]
LOCAL_PIPELINE_ROOT = PROJECT_ROOT / "local_outputs"
LOCAL_REGISTRY = PROJECT_ROOT / "artifacts" / "registry"
LOCAL_FEATURE_REPO = PROJECT_ROOT / "feature_repo"

# The environment variable the CLI sets to its log level (DEBUG with -v, else INFO), so
# that processes it starts (kfp.local's tasks) log alike.
LOG_LEVEL_ENV = "DEEPFM_LOG_LEVEL"
