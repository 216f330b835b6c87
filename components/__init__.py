"""Kubeflow pipeline components: one file per step. Each file holds the plain function
that does the work (importable and unit-tested without Kubeflow) and its thin
``@component`` face, which only imports and calls it.

Every component runs in the project image (``BASE_IMAGE``, replaced at compile time by
``deepfm pipeline compile --image``) and installs nothing at run time.
"""

import os

BASE_IMAGE = "ghcr.io/deepfm-pipeline/deepfm:latest"


def component(func=None, *, trainjob: bool = False):
    """``@dsl.component`` in the project image, with no run-time installs.

    ``trainjob=True`` passes the task's resources, tolerations, node selector, affinity,
    env and volumes through to the step (``task_config``) instead of its own pod, for a step
    that launches a Kubeflow Trainer TrainJob with them.

    Inside a running component KFP sets ``_KFP_RUNTIME=true`` and ``kfp.dsl`` then has no
    ``component`` decorator; a face's body imports its own module there, so the plain
    function is returned unchanged."""

    def decorate(f):
        if os.environ.get("_KFP_RUNTIME", "false") == "true":
            return f
        from kfp import dsl

        options = {}
        if trainjob:
            field = dsl.TaskConfigField
            options["task_config_passthroughs"] = [
                field.RESOURCES,
                field.KUBERNETES_TOLERATIONS,
                field.KUBERNETES_NODE_SELECTOR,
                field.KUBERNETES_AFFINITY,
                dsl.TaskConfigPassthrough(field=field.ENV, apply_to_task=True),
                dsl.TaskConfigPassthrough(field=field.KUBERNETES_VOLUMES, apply_to_task=True),
            ]
        return dsl.component(base_image=BASE_IMAGE, install_kfp_package=False, **options)(f)

    return decorate if func is None else decorate(func)
