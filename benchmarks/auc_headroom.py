"""Where a trained model stands against the sample generator's true click model.

    python benchmarks/auc_headroom.py --model MODEL_DIR [--rows 1000000] [--seed 0]
        [--start 2026-11-01] [--days 8] [--test-fraction 0.1]

The sample generator (``feature_repo/sample_data.py``) draws each click from a known logit,
a sum of terms (per-user and per-ad biases, category and level biases, latent
level x ad interactions, the interest boost, the price penalty). On the test rows (the
last ``--test-fraction`` by time of the same ``(rows, seed)`` set the model was trained
on) this prints ONE JSON line: the model's AUC, the Bayes AUC (of the true logit), and per
term what the model misses of it: the least-squares fit of the true logit on
``[model logit, term, 1]`` gives the term's weight left over once the model's logit is
known (0: the model has learned the term; 1: none of it), and the AUC of the model's
logit plus that leftover (how much AUC learning the rest of the term would add).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# first: idle OpenMP threads sleep in every runtime loaded after it (see model/threads.py)
from model import threads  # noqa: E402, F401, I001  # isort: skip

import numpy as np  # noqa: E402

from feature_repo import sample_data  # noqa: E402
from model.export import load  # noqa: E402
from model.metrics import auc  # noqa: E402


def _terms(model: sample_data.ClickModel) -> dict[str, sample_data.ClickModel]:
    """The click model without each term (the true logit less it)."""
    zeros = np.zeros_like
    return {
        "user_bias": replace(model, user_bias=zeros(model.user_bias)),
        "ad_quality": replace(model, ad_quality=zeros(model.ad_quality)),
        "cate_bias": replace(model, cate_bias=zeros(model.cate_bias)),
        "latent_interactions": replace(
            model, level_vec={k: zeros(v) for k, v in model.level_vec.items()}
        ),
        "interest_boost": replace(model, interest_boost=0.0),
        "price_penalty": replace(model, price_slope=0.0),
    }


def headroom(
    model_dir: str, rows: int, seed: int, test_fraction: float, start: str, days: int
) -> dict:
    sample = sample_data._simulate(rows, seed, start, days)
    flat, truth = sample.frames["flat"], sample.model
    order = np.argsort(flat["event_timestamp"].to_numpy(), kind="stable")
    test = flat.iloc[np.sort(order[int((1 - test_fraction) * len(order)) :])]
    test = test.reset_index(drop=True)
    labels = test["clk"].to_numpy()
    p = np.clip(load(model_dir).predict(test).astype(np.float64).ravel(), 1e-12, 1 - 1e-12)
    logit = np.log(p / (1 - p))
    true = sample_data._click_logit(test, truth)
    out: dict = {
        "model": model_dir,
        "rows": rows,
        "seed": seed,
        "test_rows": len(test),
        "model_auc": round(auc(labels, p), 5),
        "bayes_auc": round(auc(labels, true), 5),
        "terms": {},
    }
    for name, without in _terms(truth).items():
        term = true - sample_data._click_logit(test, without)
        fit = np.linalg.lstsq(np.c_[logit, term, np.ones_like(logit)], true, rcond=None)[0]
        out["terms"][name] = {
            "std": round(float(term.std()), 4),
            "left_over": round(float(fit[1]), 3),
            "auc_with_the_rest": round(auc(labels, logit + fit[1] / fit[0] * term), 5),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="model directory trained on the set")
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--start", default="2026-11-01", help="as given to deepfm data generate")
    ap.add_argument("--days", type=int, default=8)
    ap.add_argument("--test-fraction", type=float, default=0.1)
    a = ap.parse_args(argv)
    print(json.dumps(headroom(a.model, a.rows, a.seed, a.test_fraction, a.start, a.days)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
