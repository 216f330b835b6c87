"""A small generated click table for the training-loop tests (early stopping, resume): four
id fields whose values add random effects to the click logit, and a timestamp per row.
Its column names are its own (none of the example datasets')."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

FIELDS = [f"f{i}" for i in range(4)]
VALUES = 50


def toy_table(rows: int = 6000, seed: int = 0, invert_after: float = 1.0) -> pd.DataFrame:
    """``rows`` rows in time order; the labels of the rows after the first
    ``invert_after`` fraction are flipped (1 - label), so that a model that learns the
    earlier rows better ranks those later rows worse. Every seed draws other rows of the
    same click model."""
    effects = np.random.default_rng(12345).normal(0.0, 1.0, (len(FIELDS), VALUES))  # fixed
    rng = np.random.default_rng(seed)
    ids = {f: rng.integers(0, VALUES, rows) for f in FIELDS}
    logit = sum(effects[i][ids[f]] for i, f in enumerate(FIELDS)) - 0.5
    label = (rng.random(rows) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    cut = int(round(rows * invert_after))
    label[cut:] = 1 - label[cut:]
    ts = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(rows), unit="s")
    return pd.DataFrame({**ids, "y": label, "ts": ts})


def toy_config(**train: Any) -> dict:
    """The plain config data of a small DeepFM over ``toy_table``'s columns."""
    feats = [{"name": f, "type": "id", "num_buckets": VALUES, "embedding_dim": 4} for f in FIELDS]
    return {
        "features": feats,
        "feature_groups": {"wide": FIELDS, "deep": FIELDS},
        "model": {"deep": {"hidden_units": [16]}, "metrics": ["auc", "logloss"]},
        "data": {"label": "y", "timestamp": "ts"},
        "train": {"batch_size": 256, "num_threads": 1, **train},
    }


def write_config(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data))
    return path
