"""Kubeflow pipeline components: one file per step. Each file holds the plain function
that does the work (importable and unit-tested without Kubeflow) and its thin
``@dsl.component`` face, which only imports and calls it.

Every component runs in the project image (``BASE_IMAGE``, replaced at compile time by
``deepfm pipeline compile --image``) and installs nothing at run time.
"""

BASE_IMAGE = "ghcr.io/deepfm-pipeline/deepfm:latest"
