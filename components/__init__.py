"""Kubeflow pipeline components: one file per step. Each file holds the plain function
that does the work (importable and unit-tested without Kubeflow) and its thin
``@component`` face, which only imports and calls it.

Every component runs in the project image (``BASE_IMAGE``, replaced at compile time by
``deepfm pipeline compile --image``) and installs nothing at run time.
"""

import os

BASE_IMAGE = "ghcr.io/deepfm-pipeline/deepfm:latest"


def component(func):
    """``@dsl.component`` in the project image, with no run-time installs.

    Inside a running component KFP sets ``_KFP_RUNTIME=true`` and ``kfp.dsl`` then has no
    ``component`` decorator; a face's body imports its own module there, so the plain
    function is returned unchanged."""
    if os.environ.get("_KFP_RUNTIME", "false") == "true":
        return func
    from kfp import dsl

    return dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)(func)
