"""Multi-layer perceptron with TorchEasyRec's layer order.

Each layer is ``Linear (no bias when BatchNorm) -> BatchNorm1d | LayerNorm -> activation ->
Dropout``; every layer, the last included, is activated. ``dropout_ratio`` is per layer, a
single value broadcasts to all layers.
"""

from __future__ import annotations

import ast
from collections.abc import Sequence

import torch
from torch import nn

# Activations a config may name, as TorchEasyRec spells them ("nn.ReLU"); parameters go in
# parentheses: "nn.LeakyReLU(negative_slope=0.1)".
_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "ReLU": nn.ReLU,
    "LeakyReLU": nn.LeakyReLU,
    "PReLU": nn.PReLU,
    "ELU": nn.ELU,
    "GELU": nn.GELU,
    "SiLU": nn.SiLU,
    "Sigmoid": nn.Sigmoid,
    "Tanh": nn.Tanh,
}


def create_activation(spec: str | None) -> nn.Module | None:
    """``"nn.ReLU"`` -> ``nn.ReLU()``; ``"nn.LeakyReLU(negative_slope=0.1)"`` with its
    keyword arguments; ``""`` or ``None`` -> no activation. Unknown names raise ValueError."""
    if not spec:
        return None
    text = spec.strip()
    name, _, arg_text = text.partition("(")
    short = name.strip().removeprefix("torch.").removeprefix("nn.")
    if short not in _ACTIVATIONS:
        raise ValueError(
            f"unknown activation {spec!r}; expected one of "
            + ", ".join(f"nn.{a}" for a in _ACTIVATIONS)
        )
    kwargs = {}
    if arg_text:
        if not arg_text.endswith(")"):
            raise ValueError(f"activation {spec!r}: missing ')'")
        call = ast.parse(f"f({arg_text}", mode="eval").body
        if not isinstance(call, ast.Call) or call.args:
            raise ValueError(f"activation {spec!r}: only keyword arguments are allowed")
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    try:
        return _ACTIVATIONS[short](**kwargs)
    except TypeError as e:  # an argument the activation does not take
        raise ValueError(f"activation {spec!r}: {e}") from None


def normalize_dropout(
    dropout_ratio: float | Sequence[float] | None, num_layers: int
) -> list[float]:
    """Per-layer dropout: ``None``/``[]`` -> zeros, one value -> broadcast, else one per layer."""
    if dropout_ratio is None:
        ratios = [0.0] * num_layers
    elif isinstance(dropout_ratio, int | float):
        ratios = [float(dropout_ratio)] * num_layers
    else:
        ratios = [float(r) for r in dropout_ratio]
        if len(ratios) == 0:
            ratios = [0.0] * num_layers
        elif len(ratios) == 1:
            ratios = ratios * num_layers
    if len(ratios) != num_layers:
        raise ValueError(
            f"dropout_ratio has {len(ratios)} values but hidden_units has {num_layers} layers"
        )
    for r in ratios:
        if not 0.0 <= r < 1.0:
            raise ValueError(f"dropout_ratio {r} is outside [0, 1)")
    return ratios


class Perceptron(nn.Sequential):
    """One MLP layer: ``[B, in_features] -> [B, out_features]``."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        activation: str | None = "nn.ReLU",
        use_bn: bool = False,
        dropout_ratio: float = 0.0,
        use_ln: bool = False,
    ) -> None:
        if use_bn and use_ln:
            raise ValueError("use_bn and use_ln cannot both be true in one MLP")
        layers: list[nn.Module] = [nn.Linear(in_features, out_features, bias=bias and not use_bn)]
        if use_bn:
            layers.append(nn.BatchNorm1d(out_features))
        if use_ln:
            layers.append(nn.LayerNorm(out_features))
        act = create_activation(activation)
        if act is not None:
            layers.append(act)
        if dropout_ratio > 0:
            layers.append(nn.Dropout(dropout_ratio))
        super().__init__(*layers)


class MLP(nn.Module):
    """Stacked perceptrons: ``[B, in_features] -> [B, hidden_units[-1]]``.

    Example: ``MLP(32, [64, 16], use_bn=True, dropout_ratio=0.1)`` is
    Linear(32, 64, bias=False) -> BN -> ReLU -> Dropout -> Linear(64, 16, bias=False) -> BN ->
    ReLU -> Dropout.

    ``mlp`` is the ``nn.Sequential`` of its ``Perceptron`` layers, each an ``nn.Sequential``
    that starts with its ``Linear``.
    """

    def __init__(
        self,
        in_features: int,
        hidden_units: Sequence[int],
        bias: bool = True,
        activation: str | None = "nn.ReLU",
        use_bn: bool = False,
        dropout_ratio: float | Sequence[float] | None = None,
        use_ln: bool = False,
    ) -> None:
        super().__init__()
        if in_features <= 0:
            raise ValueError(f"MLP in_features must be positive, got {in_features}")
        if not hidden_units:
            raise ValueError("MLP hidden_units must list at least one layer")
        if any(int(h) <= 0 for h in hidden_units):
            raise ValueError(f"MLP hidden_units must be positive, got {list(hidden_units)}")
        if use_bn and use_ln:
            raise ValueError("use_bn and use_ln cannot both be true in one MLP")
        ratios = normalize_dropout(dropout_ratio, len(hidden_units))
        dims = [in_features, *[int(h) for h in hidden_units]]
        self.hidden_units = dims[1:]
        self.mlp = nn.Sequential(
            *[
                Perceptron(dims[i], dims[i + 1], bias, activation, use_bn, ratios[i], use_ln)
                for i in range(len(hidden_units))
            ]
        )

    def output_dim(self) -> int:
        """Width of the output: ``hidden_units[-1]``."""
        return self.hidden_units[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)
