"""The optional rollout step: after a push, KServe is told to serve the new current model
(``serving.rollout``: the InferenceService's storage URI and canary traffic), instead of each
serving replica polling the registry's pointer.

Wire it after ``push`` inside the pipeline's ``dsl.If(blessed)`` branch; the step's service
account needs ``get`` and ``patch`` on ``inferenceservices.serving.kserve.io`` in the
service's namespace (manifests/overlays/gcp/inferenceservice-rollout-rbac.yaml).
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
    metadata; returns the version served."""
    from serving.rollout import rollout_current

    done = rollout_current(destination, inference_service, namespace, canary_percent)
    pushed_model.metadata.update(
        rolled_out=1,
        inference_service=f"{done.namespace}/{done.name}",
        rollout_version=done.version,
        canary_percent=canary_percent,
        changed=int(done.patch is not None),
    )
    return done.version
