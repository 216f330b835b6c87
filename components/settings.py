"""What a step compiled for a cluster gets from it, and the check of it in the step's
first second.

A step reads the feature store's configuration and the feature sources only through what
the compiled spec declares (``pipelines/pipeline.py``, kfp-kubernetes), under the names of
``manifests/``:

- ``FEAST_FS_YAML_FILE_PATH`` (a plain variable of the spec) names ``feature_store.yaml`` of
  the ConfigMap ``feast-config``, mounted as a volume at ``FEAST_CONFIG_MOUNT``;
- the keys ``STORE_SETTINGS`` of the ConfigMap ``deepfm-settings``, as variables (Feast
  fills ``${DEEPFM_REDIS_ADDRESS}`` ... of its config from them; ``DEEPFM_DATA_DIR`` is the
  folder of the sources);
- the overlay's volume claim holding the sources (``OVERLAY_VOLUMES``), at that folder;
- ``DEEPFM_OVERLAY``, the overlay the spec was compiled for; it marks a cluster step.

On Vertex AI Pipelines (no Kubernetes platform document) the same variables are plain
variables of the spec (``deepfm pipeline compile --platform vertex --store-setting
KEY=VALUE``), ``DEEPFM_OVERLAY`` is ``vertex`` and the files are on Cloud Storage, which
Vertex AI mounts at ``/gcs/BUCKET`` (``VERTEX_SETTINGS``: the defaults).

``check_cluster_settings`` fails a step at once, with one line naming the missing setting
and where it is set, instead of a Feast or file error minutes later. A step without
``DEEPFM_OVERLAY`` (``deepfm pipeline run-local``) uses the feature repo's own config.

Standard library only: ``pipelines/defaults.py`` imports these names for the parser.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

OVERLAY_ENV = "DEEPFM_OVERLAY"
FEAST_CONFIG_ENV = "FEAST_FS_YAML_FILE_PATH"  # Feast's own variable
DATA_DIR_ENV = "DEEPFM_DATA_DIR"
SETTINGS_CONFIGMAP = "deepfm-settings"
FEAST_CONFIGMAP = "feast-config"
FEAST_CONFIG_FILE = "feature_store.yaml"
FEAST_CONFIG_MOUNT = "/etc/feast"
# The keys of deepfm-settings a feature-store step gets as environment variables (optional
# in the pod spec, so a missing one is named here rather than leaving the pod pending).
STORE_SETTINGS = (
    "DEEPFM_DATA_DIR",
    "DEEPFM_GCS_BUCKET",
    "DEEPFM_REDIS_ADDRESS",
    "DEEPFM_FEAST_OFFLINE_HOST",
)
# Per overlay: the claim holding the feature sources, where it is mounted (the overlay's
# DEEPFM_DATA_DIR is on it), the pod annotations it needs, the steps that mount it and the
# manifest defining it. gcp: the data bucket through GKE's Cloud Storage FUSE CSI driver;
# local: the one volume of the laptop overlay, which also holds the Feast registry and the
# model registry.
OVERLAY_VOLUMES = {
    "gcp": {
        "claim": "deepfm-data",
        "mount": "/var/lib/deepfm/data",
        "annotations": {"gke-gcsfuse/volumes": "true"},
        "steps": ("validate", "features"),
        "manifest": "manifests/overlays/gcp/data-bucket.yaml",
    },
    "local": {
        "claim": "deepfm-local",
        "mount": "/var/lib/deepfm",
        "annotations": {},
        "steps": ("validate", "features", "evaluate", "push"),
        "manifest": "manifests/overlays/local/storage.yaml",
    },
}
# Vertex AI: the settings a spec compiled for it gives validate and features by default
# (gs:// paths become /gcs/BUCKET/..., Vertex AI's Cloud Storage FUSE mount); BUCKET is
# the bucket of the push destination. The feature_store.yaml there is a copy of the one the
# steps should use (its ${VAR}s set with --store-setting too).
VERTEX = "vertex"
VERTEX_SETTINGS = {
    "FEAST_FS_YAML_FILE_PATH": "gs://{bucket}/feast/feature_store.yaml",
    "DEEPFM_DATA_DIR": "gs://{bucket}/feast/data",
    "DEEPFM_GCS_BUCKET": "{bucket}",
}
VERTEX_GCS_MOUNT = "/gcs"
VERTEX_FLAG = "deepfm pipeline compile --platform vertex --store-setting"
# The Spark profile on a cluster (manifests/spark, deepfm pipeline compile --spark):
# validate and features mount its ConfigMap instead of feast-config and run the Spark
# driver in their pod: its address (the pod's IP, downward API) and the executors' image.
FEAST_SPARK_CONFIGMAP = "feast-config-spark"
SPARK_DRIVER_HOST_ENV = "SPARK_DRIVER_HOST"
SPARK_IMAGE_ENV = "DEEPFM_IMAGE"
_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_UNRESOLVED = "{{$."  # a KFP placeholder the runner did not resolve (kfp.local)


class ClusterSettingError(SystemExit):
    """A setting the cluster should give a step is missing: one line, no traceback."""


def _settings_file(overlay: str) -> str:
    return f"manifests/overlays/{overlay}/settings.env"


def gcs_path(value: str) -> str:
    """A gs://BUCKET/PATH as Vertex AI mounts it (/gcs/BUCKET/PATH); anything else as is."""
    if value.startswith("gs://"):
        return f"{VERTEX_GCS_MOUNT}/{value.removeprefix('gs://')}"
    return value


def check_cluster_settings(
    needs_feast: bool, environ: Mapping[str, str] | None = None
) -> str | None:
    """Check what a cluster step reads before it reads anything; returns the overlay, or
    None outside a cluster (no ``DEEPFM_OVERLAY``: nothing to check).

    ``needs_feast``: the step opens the feature store (its config file and every
    ``${VAR}`` in it), besides reading the sources in ``DEEPFM_DATA_DIR``.

    Raises:
        ClusterSettingError: one line naming the setting and where it is set, e.g.
            ``DEEPFM_DATA_DIR is not set: the ConfigMap deepfm-settings key DEEPFM_DATA_DIR
            (manifests/overlays/gcp/settings.env)``.
    """
    env = os.environ if environ is None else environ
    overlay = env.get(OVERLAY_ENV, "")
    if not overlay:
        return None

    def setting(name: str, referenced_by: str = "") -> str:
        value = env.get(name, "")
        if not value:
            by = f", which {referenced_by} references" if referenced_by else ""
            if name in (SPARK_DRIVER_HOST_ENV, SPARK_IMAGE_ENV):
                raise ClusterSettingError(
                    f"{name} is not set{by}: the Spark profile's pipeline spec sets it "
                    "(deepfm pipeline compile --spark)"
                )
            if overlay == VERTEX:
                raise ClusterSettingError(f"{name} is not set{by}: {VERTEX_FLAG} {name}=VALUE")
            raise ClusterSettingError(
                f"{name} is not set: the ConfigMap {SETTINGS_CONFIGMAP} key {name}"
                f"{by} ({_settings_file(overlay)})"
            )
        return value

    data_dir = setting(DATA_DIR_ENV)
    if not Path(data_dir).is_dir() and overlay == VERTEX:
        raise ClusterSettingError(
            f"{DATA_DIR_ENV}={data_dir} is not a folder: the sources' gs:// folder, which "
            f"Vertex AI mounts under {VERTEX_GCS_MOUNT}/ ({VERTEX_FLAG} {DATA_DIR_ENV}=gs://...)"
        )
    if not Path(data_dir).is_dir():
        volume = OVERLAY_VOLUMES.get(overlay, {})
        claim = volume.get("claim", "the data volume")
        raise ClusterSettingError(
            f"{DATA_DIR_ENV}={data_dir} is not a folder: the volume claim {claim} mounted "
            f"there ({volume.get('manifest', 'manifests/')}) and the ConfigMap "
            f"{SETTINGS_CONFIGMAP} key {DATA_DIR_ENV} ({_settings_file(overlay)})"
        )
    if needs_feast:
        config = env.get(FEAST_CONFIG_ENV, "")
        where = (
            f"the ConfigMap {FEAST_CONFIGMAP} key {FEAST_CONFIG_FILE} "
            f"(manifests/overlays/{overlay}/{FEAST_CONFIG_FILE})"
        )
        if SPARK_IMAGE_ENV in env:  # compiled with --spark
            where = (
                f"the ConfigMap {FEAST_SPARK_CONFIGMAP} key {FEAST_CONFIG_FILE} "
                "(manifests/spark/feature-store.yaml)"
            )
        if overlay == VERTEX:
            where = (
                f"a feature_store.yaml on Cloud Storage ({VERTEX_FLAG} {FEAST_CONFIG_ENV}=gs://...)"
            )
        if not config:
            raise ClusterSettingError(
                f"{FEAST_CONFIG_ENV} is not set: the pipeline spec sets it to {where} "
                "mounted as a volume (deepfm pipeline compile)"
            )
        path = Path(config)
        if not path.is_file():
            raise ClusterSettingError(
                f"{FEAST_CONFIG_ENV}={config} does not exist: {where}, mounted at {path.parent}"
            )
        text = "\n".join(line.split("#", 1)[0] for line in path.read_text().splitlines())
        for name in dict.fromkeys(_VARIABLE.findall(text)):  # comments left out
            setting(name, referenced_by=str(path))
    return overlay


def window_end_of_run(window_end: str, scheduled_at: str) -> str:
    """The end of the run's window: ``window_end`` when given, else the run's scheduled
    time (KFP fills ``scheduled_at`` from ``{{$.pipeline_job_schedule_time_utc}}``, so runs
    over different windows have different task inputs, and cache keys), else "" (now: a
    runner that leaves the placeholder as it is, such as kfp.local)."""
    if window_end:
        return window_end
    if not scheduled_at or scheduled_at.startswith(_UNRESOLVED):
        return ""
    return scheduled_at
