"""Tests of the training losses (model/losses.py) and the evaluation metrics (model/metrics.py)
against direct references."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from model import metrics
from model.config import BinaryCrossEntropy, L2Loss, LossConfig, SoftmaxCrossEntropy
from model.losses import compute_loss

# ------------------------------------------------------------------------ losses


def bce_loss(smoothing: float = 0.0) -> LossConfig:
    return LossConfig(binary_cross_entropy=BinaryCrossEntropy(label_smoothing=smoothing))


def softmax_loss(smoothing: float = 0.0) -> LossConfig:
    return LossConfig(softmax_cross_entropy=SoftmaxCrossEntropy(label_smoothing=smoothing))


def l2_loss() -> LossConfig:
    return LossConfig(l2_loss=L2Loss())


def manual_bce(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-sample -(t log sigmoid(z) + (1 - t) log(1 - sigmoid(z))), in float64."""
    p = 1.0 / (1.0 + torch.exp(-z.double()))
    t = t.double()
    return -(t * torch.log(p) + (1 - t) * torch.log(1 - p))


@pytest.fixture
def binary_batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(7)
    z = torch.randn(16, generator=gen) * 2
    y = torch.randint(0, 2, (16,), generator=gen)
    return z, y


def test_loss_config_kind() -> None:
    assert bce_loss().kind == "binary_cross_entropy"
    assert softmax_loss().kind == "softmax_cross_entropy"
    assert l2_loss().kind == "l2_loss"


def test_bce_equals_manual_formula(binary_batch) -> None:
    z, y = binary_batch
    loss = compute_loss({"logits": z}, y, bce_loss())
    assert loss.shape == ()
    expected = manual_bce(z, y).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_bce_hand_value() -> None:
    # logit 0 -> p = 0.5 -> loss log 2 whatever the label
    loss = compute_loss({"logits": torch.zeros(3)}, torch.tensor([0, 1, 1]), bce_loss())
    assert loss.item() == pytest.approx(math.log(2.0), rel=1e-6)


@pytest.mark.parametrize("s", [0.1, 0.3])
def test_bce_label_smoothing_target(binary_batch, s: float) -> None:
    z, y = binary_batch
    loss = compute_loss({"logits": z}, y, bce_loss(s))
    target = y.double() * (1 - s) + 0.5 * s
    assert loss.item() == pytest.approx(manual_bce(z, target).mean().item(), rel=1e-6)
    # smoothing changes the value (the test can see a missing smoothing)
    assert loss.item() != pytest.approx(manual_bce(z, y).mean().item(), rel=1e-4)


def test_bce_label_smoothing_hand_value() -> None:
    # s = 0.2: label 1 -> target 1 * 0.8 + 0.5 * 0.2 = 0.9
    z = torch.tensor([3.0])
    loss = compute_loss({"logits": z}, torch.tensor([1]), bce_loss(0.2))
    p = 1 / (1 + math.exp(-3.0))
    assert loss.item() == pytest.approx(-(0.9 * math.log(p) + 0.1 * math.log(1 - p)), rel=1e-6)


def test_sample_weights_weighted_mean(binary_batch) -> None:
    z, y = binary_batch
    w = torch.linspace(0.1, 3.0, len(z))
    loss = compute_loss({"logits": z}, y, bce_loss(), sample_weights=w)
    per = manual_bce(z, y)
    expected = (per * w.double()).sum() / w.double().sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # the weighting matters on this batch
    assert loss.item() != pytest.approx(per.mean().item(), rel=1e-3)


@pytest.mark.parametrize("scale", [0.01, 1.0, 7.5, 1000.0])
def test_sample_weights_normalised_to_mean_one(binary_batch, scale: float) -> None:
    z, y = binary_batch
    w = torch.linspace(0.5, 2.0, len(z))
    base = compute_loss({"logits": z}, y, bce_loss(), sample_weights=w)
    scaled = compute_loss({"logits": z}, y, bce_loss(), sample_weights=w * scale)
    assert scaled.item() == pytest.approx(base.item(), rel=1e-5)


def test_unit_weights_equal_unweighted(binary_batch) -> None:
    z, y = binary_batch
    plain = compute_loss({"logits": z}, y, bce_loss())
    ones = compute_loss({"logits": z}, y, bce_loss(), sample_weights=torch.full((16,), 3.0))
    assert ones.item() == pytest.approx(plain.item(), rel=1e-6)


def test_zero_weights_give_zero_loss(binary_batch) -> None:
    z, y = binary_batch
    loss = compute_loss({"logits": z}, y, bce_loss(), sample_weights=torch.zeros(16))
    assert loss.item() == 0.0


def test_weights_zero_out_samples() -> None:
    z = torch.tensor([0.5, -1.0, 2.0])
    y = torch.tensor([1, 0, 0])
    w = torch.tensor([1.0, 0.0, 1.0])
    loss = compute_loss({"logits": z}, y, bce_loss(), sample_weights=w)
    expected = manual_bce(z[[0, 2]], y[[0, 2]]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)


def test_softmax_ce_equals_reference() -> None:
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(10, 4, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (10,), generator=gen)
    loss = compute_loss({"logits": logits}, y, softmax_loss())
    log_p = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    expected = -log_p[torch.arange(10), y].mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)
    torch.testing.assert_close(loss, torch.nn.functional.cross_entropy(logits, y))


def test_softmax_ce_label_smoothing_and_weights() -> None:
    gen = torch.Generator().manual_seed(4)
    logits = torch.randn(8, 3, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=gen)
    w = torch.rand(8, generator=gen, dtype=torch.float64) + 0.1
    s = 0.2
    loss = compute_loss({"logits": logits}, y.float(), softmax_loss(s), sample_weights=w)
    log_p = torch.log_softmax(logits, dim=1)
    per = (1 - s) * -log_p[torch.arange(8), y] + s * -log_p.mean(dim=1)
    expected = (per * w).sum() / w.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-10)


def test_l2_equals_mean_squared_error() -> None:
    gen = torch.Generator().manual_seed(5)
    pred = torch.randn(12, generator=gen)
    y = torch.randn(12, generator=gen)
    loss = compute_loss({"y": pred}, y, l2_loss())
    assert loss.item() == pytest.approx(((pred - y) ** 2).mean().item(), rel=1e-6)
    hand = compute_loss({"y": torch.tensor([1.0, 2.0])}, torch.tensor([0, 4]), l2_loss())
    assert hand.item() == pytest.approx((1 + 4) / 2)


def test_l2_with_weights() -> None:
    pred = torch.tensor([1.0, 2.0, 3.0])
    y = torch.tensor([0.0, 0.0, 0.0])
    w = torch.tensor([1.0, 2.0, 3.0])
    loss = compute_loss({"y": pred}, y, l2_loss(), sample_weights=w)
    assert loss.item() == pytest.approx((1 * 1 + 2 * 4 + 3 * 9) / 6, rel=1e-6)


def test_loss_backpropagates(binary_batch) -> None:
    z, y = binary_batch
    z = z.clone().requires_grad_(True)
    compute_loss({"logits": z}, y, bce_loss()).backward()
    expected = (torch.sigmoid(z.detach()) - y.float()) / len(z)
    torch.testing.assert_close(z.grad, expected)


# ----------------------------------------------------------------------- metrics


def auc_brute_force(labels: np.ndarray, scores: np.ndarray) -> float:
    """Fraction of ordered (positive, negative) pairs ranked right; ties count 1/2."""
    pos = scores[labels == 1]
    neg = scores[labels == 0]
    total = 0.0
    for p, n in itertools.product(pos, neg):
        total += 1.0 if p > n else 0.5 if p == n else 0.0
    return total / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(5))
def test_auc_equals_pair_count_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 60
    labels = rng.integers(0, 2, n)
    scores = np.round(rng.random(n), 1)  # many ties
    assert len(np.unique(scores)) < n
    assert metrics.auc(labels, scores) == pytest.approx(auc_brute_force(labels, scores), abs=1e-12)


def test_auc_hand_values() -> None:
    assert metrics.auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert metrics.auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4])) == 0.0
    assert metrics.auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    # pairs (p=0.3 vs 0.1, 0.3), (p=0.8 vs 0.1, 0.3): 1 + 0.5 + 1 + 1 = 3.5 of 4
    y = np.array([0, 1, 0, 1])
    assert metrics.auc(y, np.array([0.1, 0.3, 0.3, 0.8])) == pytest.approx(3.5 / 4)


@pytest.mark.parametrize("labels", [[1, 1, 1], [0, 0, 0, 0]])
def test_auc_one_class_is_nan(labels: list[int]) -> None:
    assert math.isnan(metrics.auc(np.array(labels), np.linspace(0, 1, len(labels))))


def grouped_auc_brute_force(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> float:
    num = 0.0
    den = 0
    for g in np.unique(groups):
        m = groups == g
        y = labels[m]
        if y.min() == y.max():
            continue
        num += m.sum() * auc_brute_force(y, scores[m])
        den += m.sum()
    return num / den


@pytest.mark.parametrize("seed", range(4))
def test_grouped_auc_equals_weighted_per_group_auc(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n = 120
    groups = rng.integers(0, 8, n)
    labels = rng.integers(0, 2, n)
    labels[groups == 3] = 1  # a one-class group, skipped
    labels[groups == 5] = 0  # another
    scores = np.round(rng.random(n), 1)
    got = metrics.grouped_auc(labels, scores, groups)
    assert got == pytest.approx(grouped_auc_brute_force(labels, scores, groups), abs=1e-12)


def test_grouped_auc_hand_value_and_string_keys() -> None:
    groups = np.array(["a", "a", "a", "b", "b", "c", "c"])
    labels = np.array([1, 0, 0, 1, 0, 1, 1])
    scores = np.array([0.9, 0.1, 0.95, 0.2, 0.8, 0.3, 0.4])
    # a: positive 0.9 beats 0.1, loses to 0.95 -> 1/2 (size 3); b: 0 (size 2); c skipped
    expected = (3 * 0.5 + 2 * 0.0) / 5
    assert metrics.grouped_auc(labels, scores, groups) == pytest.approx(expected)


def test_grouped_auc_all_groups_one_class_is_nan() -> None:
    got = metrics.grouped_auc(np.array([1, 1, 0, 0]), np.array([0.1, 0.2, 0.3, 0.4]), [1, 1, 2, 2])
    assert math.isnan(got)


def test_logloss_equals_manual() -> None:
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 50)
    p = rng.random(50) * 0.98 + 0.01
    expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert metrics.logloss(y, p) == pytest.approx(expected, rel=1e-12)
    w = rng.random(50)
    expected_w = -np.sum(w * (y * np.log(p) + (1 - y) * np.log(1 - p))) / w.sum()
    assert metrics.logloss(y, p, weights=w) == pytest.approx(expected_w, rel=1e-12)


def test_logloss_clips_extreme_probabilities() -> None:
    got = metrics.logloss(np.array([1, 0]), np.array([0.0, 1.0]))
    assert math.isfinite(got)
    assert got == pytest.approx(-math.log(1e-7), rel=1e-6)


@pytest.mark.parametrize("rate_num", [1, 3, 5])
def test_normalized_entropy_of_base_rate_predictor_is_one(rate_num: int) -> None:
    y = np.array([1] * rate_num + [0] * (10 - rate_num))
    p = np.full(10, y.mean())
    assert metrics.normalized_entropy(y, p) == pytest.approx(1.0, rel=1e-9)


def test_normalized_entropy_better_predictor_below_one() -> None:
    y = np.array([1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.1, 0.2, 0.1, 0.05])
    rate = 2 / 6
    base = -(rate * math.log(rate) + (1 - rate) * math.log(1 - rate))
    expected = metrics.logloss(y, p) / base
    assert metrics.normalized_entropy(y, p) == pytest.approx(expected, rel=1e-12)
    assert expected < 1


def test_calibration_is_mean_prediction_over_positive_rate() -> None:
    y = np.array([1, 0, 0, 1, 0])
    p = np.array([0.2, 0.3, 0.1, 0.6, 0.3])
    assert metrics.calibration(y, p) == pytest.approx(np.mean(p) / 0.4)
    assert math.isnan(metrics.calibration(np.zeros(3), np.array([0.1, 0.2, 0.3])))


def test_binary_metrics_collects_named_metrics() -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 40)
    p = rng.random(40)
    g = rng.integers(0, 4, 40)
    out = metrics.binary_metrics(y, p, ["auc", "logloss", "grouped_auc", "calibration"], g)
    assert out["auc"] == metrics.auc(y, p)
    assert out["logloss"] == metrics.logloss(y, p)
    assert out["grouped_auc"] == metrics.grouped_auc(y, p, g)
    assert out["calibration"] == metrics.calibration(y, p)
    assert out["count"] == 40.0
    assert out["positive_rate"] == pytest.approx(y.mean())
    with pytest.raises(ValueError, match="grouped_auc"):
        metrics.binary_metrics(y, p, ["grouped_auc"])
