"""benchmarks/quality.py: the regimes it generates and the models it compares, on a few
thousand rows (the README's table comes from the full run)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import model.deepfm as deepfm_module
from model.config import config_from_dict
from model.train import time_split, validation_split

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def quality():
    spec = importlib.util.spec_from_file_location("quality", ROOT / "benchmarks" / "quality.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_onehot_regime_ours_old_and_plain(quality, tmp_path) -> None:
    data, df = quality.onehot_regime(4000, seed=1, tmp=tmp_path)
    label, ts = data["data"]["label"], data["data"]["timestamp"]
    assert len(df) == 4000 and 0.2 < df[label].mean() < 0.3
    assert df[ts].is_monotonic_increasing
    sizes = [df[f["name"]].max() + 1 for f in data["features"]]
    assert all(s <= f["num_buckets"] for s, f in zip(sizes, data["features"], strict=True))
    data["train"].update(num_epochs=3, num_threads=1)
    data["model"]["deep"]["hidden_units"] = [16]
    cfg = config_from_dict(data)
    train_df, test_df = time_split(df, ts, 0.2)
    original = deepfm_module.EmbeddingTable.__init__
    ours = quality.train_ours(cfg, train_df, test_df, old=False)
    old = quality.train_ours(cfg, train_df, test_df, old=True)
    assert deepfm_module.EmbeddingTable.__init__ is original  # the old init is undone
    fit, valid = validation_split(cfg, train_df)
    plain = quality.train_plain(cfg, fit, valid, test_df, seed=1, max_epochs=3)
    for out in (ours, old, plain):
        assert 0.55 < out["test_auc"] <= 1 and 0.55 < out["valid_auc"] <= 1
        assert 1 <= out["best_epoch"] <= out["epochs_run"] <= 3
    assert ours["test_auc"] != old["test_auc"]  # the old defaults are another model
