"""Tests of the network blocks (model/modules): the FM term and the MLP."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from model.modules import MLP, FactorizationMachine, Perceptron
from model.modules.mlp import create_activation, normalize_dropout

# ---------------------------------------------------------------------------- FM


def fm_brute_force(x: torch.Tensor) -> torch.Tensor:
    """sum over field pairs i < j of x_i * x_j (element-wise): [B, N, D] -> [B, D]."""
    b, n, d = x.shape
    out = torch.zeros(b, d, dtype=x.dtype)
    for i, j in itertools.combinations(range(n), 2):
        out += x[:, i, :] * x[:, j, :]
    return out


@pytest.mark.parametrize("shape", [(1, 2, 1), (3, 2, 5), (4, 3, 2), (5, 7, 4), (2, 12, 8)])
def test_fm_equals_pairwise_sum(shape: tuple[int, int, int]) -> None:
    gen = torch.Generator().manual_seed(sum(shape))
    x = torch.randn(*shape, generator=gen, dtype=torch.float64)
    out = FactorizationMachine()(x)
    assert out.shape == (shape[0], shape[2])
    torch.testing.assert_close(out, fm_brute_force(x), rtol=1e-12, atol=1e-12)


def test_fm_hand_example() -> None:
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    torch.testing.assert_close(FactorizationMachine()(x), torch.tensor([[3.0, 8.0]]))


def test_fm_three_fields_hand_example() -> None:
    # pairs: 1*2 + 1*3 + 2*3 = 11 and 0*1 + 0*(-1) + 1*(-1) = -1
    x = torch.tensor([[[1.0, 0.0], [2.0, 1.0], [3.0, -1.0]]])
    torch.testing.assert_close(FactorizationMachine()(x), torch.tensor([[11.0, -1.0]]))


def test_fm_single_field_gives_zeros() -> None:
    x = torch.randn(4, 1, 6, generator=torch.Generator().manual_seed(0))
    out = FactorizationMachine()(x)
    assert out.shape == (4, 6)
    torch.testing.assert_close(out, torch.zeros(4, 6), rtol=0, atol=1e-6)


def test_fm_has_no_parameters() -> None:
    assert list(FactorizationMachine().parameters()) == []


# --------------------------------------------------------------------------- MLP


def layer_types(mlp: MLP) -> list[list[type[nn.Module]]]:
    return [[type(m) for m in layer] for layer in mlp.mlp]


def linears(mlp: MLP) -> list[nn.Linear]:
    return [layer[0] for layer in mlp.mlp]


def test_mlp_layer_order_with_batchnorm() -> None:
    mlp = MLP(8, [6, 4], use_bn=True, dropout_ratio=0.2)
    assert all(isinstance(layer, Perceptron) for layer in mlp.mlp)
    assert layer_types(mlp) == [[nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]] * 2
    assert [(lin.in_features, lin.out_features) for lin in linears(mlp)] == [(8, 6), (6, 4)]
    assert [layer[1].num_features for layer in mlp.mlp] == [6, 4]


def test_mlp_layer_order_with_layernorm() -> None:
    mlp = MLP(8, [6, 4, 3], use_ln=True, dropout_ratio=0.1, activation="nn.Tanh")
    assert layer_types(mlp) == [[nn.Linear, nn.LayerNorm, nn.Tanh, nn.Dropout]] * 3
    assert [layer[1].normalized_shape for layer in mlp.mlp] == [(6,), (4,), (3,)]


def test_mlp_plain_layer_is_linear_then_activation() -> None:
    mlp = MLP(5, [3])
    assert layer_types(mlp) == [[nn.Linear, nn.ReLU]]


def test_mlp_no_bias_with_batchnorm_even_if_bias_true() -> None:
    mlp = MLP(4, [3, 2], use_bn=True, bias=True)
    assert all(lin.bias is None for lin in linears(mlp))


def test_mlp_bias_when_requested_without_batchnorm() -> None:
    assert all(lin.bias is not None for lin in linears(MLP(4, [3, 2], bias=True)))
    assert all(lin.bias is not None for lin in linears(MLP(4, [3, 2], bias=True, use_ln=True)))


def test_mlp_no_bias_when_bias_false() -> None:
    assert all(lin.bias is None for lin in linears(MLP(4, [3, 2], bias=False)))
    assert all(lin.bias is None for lin in linears(MLP(4, [3, 2], bias=False, use_ln=True)))


def test_mlp_bn_and_ln_together_raise() -> None:
    with pytest.raises(ValueError, match="use_bn and use_ln"):
        MLP(4, [3], use_bn=True, use_ln=True)
    with pytest.raises(ValueError, match="use_bn and use_ln"):
        Perceptron(4, 3, use_bn=True, use_ln=True)


def dropout_ps(mlp: MLP) -> list[float | None]:
    """Each layer's dropout probability, None where the layer has no Dropout."""
    out: list[float | None] = []
    for layer in mlp.mlp:
        drops = [m for m in layer if isinstance(m, nn.Dropout)]
        assert len(drops) <= 1
        out.append(drops[0].p if drops else None)
    return out


def test_mlp_dropout_per_layer() -> None:
    mlp = MLP(4, [8, 6, 2], dropout_ratio=[0.1, 0.2, 0.3])
    assert dropout_ps(mlp) == [0.1, 0.2, 0.3]
    for layer in mlp.mlp:
        assert isinstance(layer[-1], nn.Dropout)


@pytest.mark.parametrize("ratio", [0.25, [0.25]])
def test_mlp_single_dropout_broadcasts(ratio: float | list[float]) -> None:
    assert dropout_ps(MLP(4, [8, 6, 2], dropout_ratio=ratio)) == [0.25, 0.25, 0.25]


def test_mlp_zero_dropout_adds_no_module() -> None:
    mlp = MLP(4, [8, 6, 2], dropout_ratio=[0.0, 0.5, 0.0])
    assert dropout_ps(mlp) == [None, 0.5, None]
    for ratio in (None, 0.0, [], [0.0]):
        mlp = MLP(4, [8, 2], dropout_ratio=ratio)
        assert not any(isinstance(m, nn.Dropout) for m in mlp.modules()), ratio


@pytest.mark.parametrize("ratio", [[0.1, 0.2], [0.1, 0.2, 0.3, 0.4]])
def test_mlp_dropout_wrong_length_raises(ratio: list[float]) -> None:
    with pytest.raises(ValueError, match="dropout_ratio has"):
        MLP(4, [8, 6, 2], dropout_ratio=ratio)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, [0.1, 1.5]])
def test_mlp_dropout_out_of_range_raises(ratio: float | list[float]) -> None:
    with pytest.raises(ValueError, match="outside"):
        MLP(4, [8, 6], dropout_ratio=ratio)


def test_normalize_dropout() -> None:
    assert normalize_dropout(None, 3) == [0.0, 0.0, 0.0]
    assert normalize_dropout(0.5, 2) == [0.5, 0.5]
    assert normalize_dropout([0.5], 2) == [0.5, 0.5]
    assert normalize_dropout([0.1, 0.2], 2) == [0.1, 0.2]


def test_activation_relu() -> None:
    assert type(create_activation("nn.ReLU")) is nn.ReLU
    assert layer_types(MLP(3, [2], activation="nn.ReLU")) == [[nn.Linear, nn.ReLU]]


def test_activation_with_keyword_argument() -> None:
    act = create_activation("nn.LeakyReLU(negative_slope=0.1)")
    assert isinstance(act, nn.LeakyReLU)
    assert act.negative_slope == pytest.approx(0.1)
    mlp = MLP(3, [2, 2], activation="nn.LeakyReLU(negative_slope=0.1)")
    acts = [layer[1] for layer in mlp.mlp]
    assert all(isinstance(a, nn.LeakyReLU) and a.negative_slope == 0.1 for a in acts)
    x = torch.tensor([[-2.0, 3.0]])
    torch.testing.assert_close(act(x), torch.tensor([[-0.2, 3.0]]))


@pytest.mark.parametrize("spec", ["", None])
def test_no_activation(spec: str | None) -> None:
    assert create_activation(spec) is None
    mlp = MLP(3, [4, 2], activation=spec, use_bn=True)
    assert layer_types(mlp) == [[nn.Linear, nn.BatchNorm1d]] * 2


@pytest.mark.parametrize("spec", ["nn.Swishy", "relu6", "nn.Softmax"])
def test_unknown_activation_raises(spec: str) -> None:
    with pytest.raises(ValueError, match="unknown activation"):
        create_activation(spec)
    with pytest.raises(ValueError, match="unknown activation"):
        MLP(3, [2], activation=spec)


def test_activation_positional_argument_raises() -> None:
    with pytest.raises(ValueError, match="keyword"):
        create_activation("nn.LeakyReLU(0.1)")


def test_mlp_output_dim_and_forward_shape() -> None:
    torch.manual_seed(0)
    for hidden in ([5], [16, 7], [9, 8, 3]):
        mlp = MLP(6, hidden, use_bn=True, dropout_ratio=0.1)
        assert mlp.output_dim() == hidden[-1]
        assert mlp(torch.randn(4, 6)).shape == (4, hidden[-1])


def test_mlp_forward_equals_manual() -> None:
    torch.manual_seed(1)
    mlp = MLP(5, [4, 3], activation="nn.ReLU")
    x = torch.randn(6, 5)
    (l1, l2) = linears(mlp)
    h = torch.relu(x @ l1.weight.T + l1.bias)
    expected = torch.relu(h @ l2.weight.T + l2.bias)
    torch.testing.assert_close(mlp(x), expected)


def test_mlp_forward_with_batchnorm_in_eval_equals_manual() -> None:
    torch.manual_seed(2)
    mlp = MLP(5, [3], use_bn=True, activation="")
    bn = mlp.mlp[0][1]
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([0.5, -1.0, 2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 1.0, 0.25]))
        bn.weight.copy_(torch.tensor([2.0, 1.0, -1.0]))
        bn.bias.copy_(torch.tensor([0.0, 1.0, 0.5]))
    mlp.eval()
    x = torch.randn(4, 5)
    z = x @ mlp.mlp[0][0].weight.T
    expected = (z - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    torch.testing.assert_close(mlp(x), expected)


def test_mlp_empty_hidden_units_raise() -> None:
    with pytest.raises(ValueError, match="at least one layer"):
        MLP(4, [])


def test_mlp_non_positive_sizes_raise() -> None:
    with pytest.raises(ValueError, match="positive"):
        MLP(4, [3, -2])
    with pytest.raises(ValueError, match="positive"):
        MLP(4, [0])
    with pytest.raises(ValueError, match="in_features"):
        MLP(0, [3])
