"""Kubeflow pipeline components: one file per step (the plain function and its
``@dsl.component`` face). The steps arrive with the pipeline issue."""
