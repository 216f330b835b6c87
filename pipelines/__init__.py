"""The Kubeflow pipeline, its compile/upload/run commands, and the ``deepfm`` CLI."""
