"""Early stopping on a validation split held out of the training rows (model.train).

With ``train.num_epochs > 1`` the last ``train.validation_fraction`` of the training rows by
time picks the epoch; training stops once it has not improved for
``train.early_stop_patience`` epochs and the best epoch's weights are kept. The eval rows
never choose. Data: ``tests/toy_data.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.config import config_from_dict
from model.train import train, validation_split
from tests.toy_data import toy_config, toy_table, write_config
from training.run import TrainRequest, run_training


def test_one_best_epoch_stops_after_the_second_and_keeps_the_first(tmp_path) -> None:
    # the validation rows (the last 10% by time) have flipped labels: every epoch that
    # learns the training rows better ranks them worse, so epoch 1 is the best
    df = toy_table(invert_after=0.9)
    shuffled = df.sample(frac=1.0, random_state=0)  # the split goes by time, not row order
    shuffled.to_parquet(tmp_path / "train.parquet")
    config = write_config(tmp_path / "c.yaml", toy_config(num_epochs=10))
    out = tmp_path / "model"
    summary = run_training(TrainRequest(config, tmp_path / "train.parquet", out, device="cpu"))

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["best_epoch"] == summary["best_epoch"] == 1
    assert metrics["epochs_run"] == 2  # stopped after the second
    assert metrics["rows_valid"] == 600 and metrics["rows_train"] == 6000
    valid = [h["valid_auc"] for h in metrics["history"]]
    assert valid[1] < valid[0] < 0.5

    # the saved weights are epoch 1's: a one-epoch run on the same rows gives them exactly
    cfg = config_from_dict(toy_config(num_epochs=1))
    one = train(cfg, df.iloc[:5400], valid_df=df.iloc[5400:], progress=False)
    saved = torch.load(out / "weights.pt", weights_only=True)
    expected = one.model.state_dict()
    assert set(saved) <= set(expected)
    for name, tensor in saved.items():
        assert torch.equal(tensor, expected[name]), name
    assert one.history[0]["valid_auc"] == valid[0]


def test_improving_epochs_all_run_and_the_eval_rows_never_choose() -> None:
    df = toy_table()
    # eval rows whose labels are flipped: by them epoch 1 would be best
    eval_df = toy_table(rows=2000, seed=1, invert_after=0.0)
    cfg = config_from_dict(toy_config(num_epochs=3))
    result = train(cfg, df, eval_df, progress=False)
    valid = [h["valid_auc"] for h in result.history]
    evals = [h["eval_auc"] for h in result.history]
    assert len(result.history) == 3 and result.best_epoch == 3
    assert valid[0] < valid[1] < valid[2]
    assert evals[0] > evals[2]  # the eval rows disagree, and are ignored
    assert result.metrics["auc"] == pytest.approx(evals[2])
    assert result.rows_valid == 600


def test_validation_split_is_the_last_fraction_by_time_and_one_epoch_holds_none_out() -> None:
    df = toy_table(rows=1000).sample(frac=1.0, random_state=1)
    cfg = config_from_dict(toy_config(num_epochs=2, validation_fraction=0.2))
    rest, valid = validation_split(cfg, df)
    assert len(valid) == 200 and len(rest) == 800
    assert valid["ts"].min() > rest["ts"].max()
    assert sorted(np.concatenate([rest["ts"], valid["ts"]])) == sorted(df["ts"])
    one = train(config_from_dict(toy_config(num_epochs=1)), df, progress=False)
    assert one.rows_valid == 0 and one.best_epoch == 1 and "valid_auc" not in one.history[0]
    # without a timestamp: the last rows in table order
    no_ts = toy_config(num_epochs=2)
    no_ts["data"]["timestamp"] = None
    rest, valid = validation_split(config_from_dict(no_ts), df)
    assert valid.equals(df.iloc[900:].reset_index(drop=True))


def test_a_validation_split_of_one_label_class_is_not_used(caplog) -> None:
    """Its AUC could not pick an epoch: every row trains, every epoch runs, the last is
    kept, and a warning says so; a given validation table of one class is refused."""
    df = toy_table(rows=1000)
    df.loc[900:, "y"] = 0  # the last 10% by time: no click
    cfg = config_from_dict(toy_config(num_epochs=2))
    with caplog.at_level("WARNING", logger="deepfm.train"):
        result = train(cfg, df, progress=False)
    assert "train.validation_fraction: the last 100 training rows hold one label class" in (
        caplog.text
    )
    assert result.rows_valid == 0 and result.best_epoch == 2 and len(result.history) == 2
    assert result.train_samples == 2 * 1000
    with pytest.raises(ValueError, match=r"^the validation split \(100 rows\) holds one label"):
        train(cfg, df.iloc[:900], valid_df=df.iloc[900:], progress=False)
