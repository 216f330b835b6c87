"""The optional rollout step: after a push, KServe is told to serve the new current model
(``serving.rollout``: the InferenceService's storage URI and canary traffic), instead of each
serving replica polling the registry's pointer.

The pipeline runs it after ``push`` inside its ``dsl.If(blessed)`` branch when the run's
``inference_service`` parameter is set (``pipelines/pipeline.py``). It needs a gs://
destination (KServe's storage initializer downloads the model from there) and the Kubernetes
API of the cluster serving the model: the step's service account (``deepfm-pipeline``) needs
``get`` and ``patch`` on ``inferenceservices.serving.kserve.io`` in the service's namespace
(manifests/overlays/gcp/inferenceservice-rollout-rbac.yaml).
"""

from kfp.dsl import Artifact, Input

from components import component


@component
def rollout(
    pushed_model: Input[Artifact],
    destination: str,
    inference_service: str = "deepfm",
    namespace: str = "deepfm",
    canary_percent: int = 100,
) -> str:
    """Make InferenceService ``namespace/inference_service`` serve the model current at
    ``destination`` (the version ``push`` just made current) with ``canary_percent`` of the
    traffic (100: all of it). Records the version and the patch on ``pushed_model``'s
    metadata; returns the version served. A setting that cannot work stops the step with
    one line naming the pipeline parameter (no traceback)."""
    where = f"inference_service={namespace}/{inference_service}"
    if not destination.startswith("gs://"):
        raise SystemExit(
            f"push_destination={destination!r}: {where} rolls out models pushed to gs:// "
            "only (KServe's storage initializer downloads them from the bucket); push to "
            "gs://BUCKET/PREFIX or leave inference_service empty"
        )
    if not 0 <= canary_percent <= 100:
        raise SystemExit(f"canary_percent must be in 0..100, got {canary_percent} ({where})")

    from serving.rollout import custom_objects_api, rollout_current

    try:
        api = custom_objects_api()
    except ValueError:
        raise SystemExit(
            f"{where}: no Kubernetes API to reach (neither the pod's service account nor "
            "$KUBECONFIG): the rollout step runs in the cluster that serves the model "
            "(Kubeflow Pipelines)"
        ) from None
    try:
        done = rollout_current(destination, inference_service, namespace, canary_percent, api)
    except ValueError as e:
        raise SystemExit(f"{where}: {e}") from None
    pushed_model.metadata.update(
        rolled_out=1,
        inference_service=f"{done.namespace}/{done.name}",
        rollout_version=done.version,
        canary_percent=canary_percent,
        changed=int(done.patch is not None),
    )
    print(f"InferenceService {done.namespace}/{done.name} serves {done.version}")
    return done.version
