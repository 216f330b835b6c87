"""The DeepFM library: config, feature encoding, modules, model, training, metrics, export.

Importing it (any of its modules) first makes OpenMP's idle threads sleep instead of spin
(``model.threads``): PyTorch reads the policy once, when it loads, so the library sets it
before anything of it imports ``torch``."""

from model import threads as _threads  # noqa: F401 - before torch, see model.threads
