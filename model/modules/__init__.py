"""Reusable network blocks: the factorization machine and the MLP."""

from model.modules.fm import FactorizationMachine
from model.modules.mlp import MLP, Perceptron

__all__ = ["MLP", "FactorizationMachine", "Perceptron"]
