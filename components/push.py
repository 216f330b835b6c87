"""The push step (TFX's Pusher): a blessed model goes to the registry, pointer last
(``registry.model_registry``); an unblessed one is recorded as not pushed and the run goes on.

Both write TFX's PushedModel facts on their ``pushed_model`` artifact's metadata:
``pushed`` (1 or 0), and ``version`` and ``uri`` or the ``reason``.
"""

from kfp.dsl import Artifact, Input, Model, Output

from components import component


@component
def push(
    model: Input[Model],
    destination: str,
    auc: float,
    pushed_model: Output[Artifact],
    version: str = "",
) -> str:
    """Push the model directory at ``model.path`` to ``destination`` (a local path or
    ``gs://bucket/prefix``) as ``version`` ("" = UTC time plus the manifest's hash) and make it
    current, recording ``auc`` in the pointer. Returns the version folder's uri."""
    from registry.model_registry import push_model

    pointer = push_model(model.path, destination, version or None, metrics={"auc": auc})
    pushed_model.metadata.update(
        pushed=1,
        version=pointer["version"],
        uri=pointer["uri"],
        manifest_sha256=pointer["manifest_sha256"],
    )
    return pointer["uri"]


@component
def record_not_pushed(
    auc: float,
    baseline_auc: float,
    reason: str,
    pushed_model: Output[Artifact],
):
    """TFX's _MarkNotPushed: the registry is left as it is and the run does not fail."""
    pushed_model.metadata.update(pushed=0, reason=reason, auc=auc, baseline_auc=baseline_auc)
    print(f"not pushed: {reason} (auc {auc}, baseline auc {baseline_auc})")
