"""Test AUC of DeepFM with the project's defaults against a plain PyTorch DeepFM, on three
regimes, median of seeds, each model's epoch chosen on a validation split.

    python benchmarks/quality.py [--seeds 1,2,3] [--regimes sample,retail,onehot]
        [--sample-rows 100000] [--retail-rows 100000] [--onehot-rows 60000] [--old]

Regimes (each split by time: the last ``--test-fraction`` is the test set, never seen
before the end; of the rest, the last 10% is the validation split that picks the epoch):

- ``sample``: the synthetic ad-click generator (``feature_repo/sample_data.py``) and
  ``configs/deepfm.yaml``;
- ``retail``: the retail generator (``feature_repo/retail_data.py``) and the model section
  of its feature spec with ``configs/deepfm.yaml``'s model and training settings;
- ``onehot``: a generated small-data set of 10 one-hot fields (2 to 1,000 values) whose
  click logit has first-order effects and FM-style pairwise interactions, batch 256: many
  epochs before it overfits.

Models: ``ours`` is ``model.train.train`` with the config's defaults (up to
``--max-epochs`` epochs, early stopping on the validation split, the best epoch kept);
``plain`` is a textbook DeepFM written here (one ``nn.Embedding`` per field, N(0, 0.01),
dense gradients, one ``torch.optim.Adam`` lr 0.001), trained on the same rows and batches
and stopped by the same rule on the same validation split; ``--old`` adds ``ours`` with
the earlier defaults (sparse Adagrad lr 0.02, tables uniform in +-sqrt(1/rows), the wide
part too). Prints one JSON line per run and then a markdown table of the medians.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# first: idle OpenMP threads sleep in every runtime loaded after it (see model/threads.py)
from model import threads  # noqa: E402, F401, I001  # isort: skip

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

import model.deepfm as deepfm_module  # noqa: E402
from model.config import config_from_dict  # noqa: E402
from model.features import FeatureEncoder  # noqa: E402
from model.metrics import auc  # noqa: E402
from model.train import time_split, train, validation_split  # noqa: E402
from training.config import read_config_dict  # noqa: E402

CONFIG = ROOT / "configs" / "deepfm.yaml"
ONEHOT_SIZES = [2, 3, 5, 7, 10, 20, 50, 100, 300, 1000]


# ----------------------------------------------------------------------- regimes


def sample_regime(rows: int, seed: int, tmp: Path) -> tuple[dict, pd.DataFrame]:
    from feature_repo import sample_data

    paths = sample_data.generate(rows, seed=seed, out_dir=tmp / f"sample{seed}")
    return read_config_dict(CONFIG), pd.read_parquet(paths["flat"])


def retail_regime(rows: int, seed: int, tmp: Path) -> tuple[dict, pd.DataFrame]:
    from feature_repo import retail_data
    from feature_repo.spec import load_spec

    out = retail_data.generate(rows, seed=seed, out_dir=tmp / f"retail{seed}")
    section = load_spec(ROOT / "feature_repo" / "retail_features.yaml").model_section()
    cfg = read_config_dict(CONFIG)
    cfg["features"], cfg["feature_groups"] = section["features"], section["feature_groups"]
    cfg["data"] = {"label": section["label"], "timestamp": section["timestamp"]}
    cfg["model"]["metrics"] = ["auc", "logloss"]
    return cfg, pd.read_parquet(out["paths"]["flat"])


def onehot_regime(rows: int, seed: int, tmp: Path) -> tuple[dict, pd.DataFrame]:
    """10 one-hot fields; logit = first-order effects + sum over field pairs of
    <v_i, v_j> (latent dim 4), shifted so that 20% of the logits are positive (a click
    rate of about 25%). The click model is fixed
    (seed 7), the rows drawn by ``seed``."""
    world = np.random.default_rng(7)
    first = [world.normal(0, 0.5, n) for n in ONEHOT_SIZES]
    latent = [world.normal(0, 0.35, (n, 4)) for n in ONEHOT_SIZES]
    probs = [world.dirichlet(np.ones(n) * 0.7) for n in ONEHOT_SIZES]  # skewed values
    rng = np.random.default_rng(seed)
    ids = [rng.choice(n, size=rows, p=p) for n, p in zip(ONEHOT_SIZES, probs, strict=True)]
    logit = sum(f[i] for f, i in zip(first, ids, strict=True))
    v = np.stack([lat[i] for lat, i in zip(latent, ids, strict=True)], axis=1)  # [N, F, 4]
    logit = logit + 0.5 * (v.sum(1) ** 2 - (v**2).sum(1)).sum(1)
    shift = np.quantile(logit, 0.8)
    label = (rng.random(rows) < 1 / (1 + np.exp(-(logit - shift)))).astype(np.int64)
    names = [f"c{j}" for j in range(len(ONEHOT_SIZES))]
    ts = pd.Timestamp("2026-01-01", tz="UTC") + pd.to_timedelta(np.arange(rows), unit="s")
    df = pd.DataFrame({**dict(zip(names, ids, strict=True)), "label": label, "ts": ts})
    feats = [
        {"name": c, "type": "id", "num_buckets": n, "embedding_dim": 16}
        for c, n in zip(names, ONEHOT_SIZES, strict=True)
    ]
    cfg = read_config_dict(CONFIG)
    cfg["features"] = feats
    cfg["feature_groups"] = {"wide": names, "deep": names}
    cfg["data"] = {"label": "label", "timestamp": "ts"}
    cfg["model"]["metrics"] = ["auc", "logloss"]
    cfg["train"]["batch_size"] = 256
    return cfg, df


REGIMES = {"sample": sample_regime, "retail": retail_regime, "onehot": onehot_regime}


# ------------------------------------------------------------------ plain DeepFM


class PlainDeepFM(nn.Module):
    """A textbook DeepFM over the encoder's tensors: per field an ``nn.Embedding`` of the
    FM/deep dim and one of dim 1 (first order), N(0, 0.01); multi-valued fields pooled as
    configured; dense numbers into the MLP."""

    def __init__(self, spec, dim: int, hidden: list[int]) -> None:
        super().__init__()
        fields = spec.sparse + spec.multi
        self.mean = [m.pooling == "mean" for m in spec.multi]
        self.first = nn.ModuleList(nn.Embedding(f.num_embeddings + 1, 1) for f in fields)
        self.emb = nn.ModuleList(nn.Embedding(f.num_embeddings + 1, dim) for f in fields)
        for e in [*self.first, *self.emb]:
            nn.init.normal_(e.weight, std=0.01)
        layers, width = [], len(fields) * dim + len(spec.dense)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def _field(self, table: nn.Embedding, sparse, multi, i: int) -> torch.Tensor:
        ns = sparse.shape[1]
        if i < ns:
            return table(sparse[:, i])
        ids = multi[:, i - ns]  # [B, L], -1 = padding
        valid = (ids >= 0).unsqueeze(-1).float()
        pooled = (table(ids.clamp_min(0)) * valid).sum(1)
        if self.mean[i - ns]:
            pooled = pooled / valid.sum(1).clamp_min(1.0)
        return pooled

    def forward(self, sparse, multi, dense) -> torch.Tensor:
        n = len(self.emb)
        first = sum(self._field(self.first[i], sparse, multi, i) for i in range(n))
        v = torch.stack([self._field(self.emb[i], sparse, multi, i) for i in range(n)], dim=1)
        fm = 0.5 * (v.sum(1).square() - v.square().sum(1)).sum(1, keepdim=True)
        deep = self.mlp(torch.cat([v.flatten(1), dense], dim=1))
        return (first + fm + deep).squeeze(1)


def train_plain(cfg, train_df, valid_df, test_df, seed: int, max_epochs: int) -> dict:
    """The plain model, same batches as ours (the trainer's shuffle), early stopping by the
    same rule (patience ``train.early_stop_patience``) on the same validation split."""
    enc = FeatureEncoder(cfg).fit(train_df)
    tr, va, te = (enc.transform(d) for d in (train_df, valid_df, test_df))
    label = cfg.data.label
    y = torch.from_numpy(train_df[label].to_numpy(np.float32))
    torch.manual_seed(seed)
    dim = cfg.features[0].embedding_dim
    net = PlainDeepFM(enc.input_spec(), dim, cfg.model.deep.hidden_units)
    opt = torch.optim.Adam(net.parameters(), lr=0.001)
    bs, n = cfg.train.batch_size, len(y)

    def scores(x) -> np.ndarray:
        with torch.no_grad():
            return torch.sigmoid(net(x.sparse, x.multi, x.dense)).numpy()

    best, best_epoch, best_state, history = -math.inf, 0, None, []  # validation AUCs
    for epoch in range(max_epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        for s in range(0, n, bs):
            rows = perm[s : s + bs]
            b = tr.index(rows)
            loss = nn.functional.binary_cross_entropy_with_logits(
                net(b.sparse, b.multi, b.dense), y[rows]
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        v = auc(valid_df[label].to_numpy(), scores(va))
        history.append(v)
        if v > best:
            best, best_epoch = v, epoch + 1
            best_state = copy.deepcopy(net.state_dict())
        if epoch + 1 - best_epoch >= cfg.train.early_stop_patience:
            break
    net.load_state_dict(best_state)
    return {
        "test_auc": auc(test_df[label].to_numpy(), scores(te)),
        "valid_auc": best,
        "best_epoch": best_epoch,
        "epochs_run": len(history),
    }


# ---------------------------------------------------------------------- ours


def _old_init(original):
    """EmbeddingTable.__init__ followed by the earlier default init: every field's rows
    (deep and wide parts) uniform in +-sqrt(1/rows)."""

    def init(self, *args, **kwargs):
        original(self, *args, **kwargs)
        with torch.no_grad():
            start = 0
            for rows in self.field_rows:
                bound = math.sqrt(1.0 / rows)
                nn.init.uniform_(self.embedding.weight[start : start + rows], -bound, bound)
                start += rows

    return init


def train_ours(cfg, train_df, test_df, old: bool) -> dict:
    original = deepfm_module.EmbeddingTable.__init__
    if old:
        deepfm_module.EmbeddingTable.__init__ = _old_init(original)
    try:
        result = train(cfg, train_df, test_df, progress=False)
    finally:
        deepfm_module.EmbeddingTable.__init__ = original
    return {
        "test_auc": result.metrics["auc"],
        "valid_auc": result.history[result.best_epoch - 1]["valid_auc"],
        "best_epoch": result.best_epoch,
        "epochs_run": len(result.history),
    }


# ---------------------------------------------------------------------- main


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", default="1,2,3")
    p.add_argument("--regimes", default="sample,retail,onehot")
    p.add_argument("--sample-rows", type=int, default=100_000)
    p.add_argument("--retail-rows", type=int, default=100_000)
    p.add_argument("--onehot-rows", type=int, default=60_000)
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--max-epochs", type=int, default=0, help="0: the config's num_epochs")
    p.add_argument("--old", action="store_true", help="also the earlier defaults")
    p.add_argument("--no-plain", action="store_true")
    p.add_argument("--set", action="append", default=[], help="KEY=VALUE for ours (YAML)")
    args = p.parse_args()
    import yaml

    seeds = [int(s) for s in args.seeds.split(",")]
    rows = {"sample": args.sample_rows, "retail": args.retail_rows, "onehot": args.onehot_rows}
    results: dict[tuple[str, str], list[dict]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for regime in args.regimes.split(","):
            for seed in seeds:
                data, df = REGIMES[regime](rows[regime], seed, Path(tmp))
                data["train"]["seed"] = seed
                if args.max_epochs:
                    data["train"]["num_epochs"] = args.max_epochs
                for item in args.set:
                    key, _, value = item.partition("=")
                    node = data
                    *parents, leaf = key.split(".")
                    for part in parents:
                        node = node.setdefault(part, {})
                    node[leaf] = yaml.safe_load(value)
                cfg = config_from_dict(data)
                train_df, test_df = time_split(df, cfg.data.timestamp, args.test_fraction)
                runs = {"ours": partial(train_ours, cfg, train_df, test_df, old=False)}
                if args.old:
                    old = copy.deepcopy(data)
                    old["train"]["sparse_optimizer"] = {"type": "adagrad", "lr": 0.02}
                    old_cfg = config_from_dict(old)
                    runs["ours, old defaults"] = partial(
                        train_ours, old_cfg, train_df, test_df, old=True
                    )
                if not args.no_plain:
                    fit, valid = validation_split(cfg, train_df)
                    epochs = cfg.train.num_epochs
                    runs["plain"] = partial(train_plain, cfg, fit, valid, test_df, seed, epochs)
                for name, fn in runs.items():
                    t0 = time.perf_counter()
                    out = fn()
                    out.update(regime=regime, model=name, seed=seed, rows=len(df))
                    out["seconds"] = round(time.perf_counter() - t0, 1)
                    print(json.dumps(out), flush=True)
                    results.setdefault((regime, name), []).append(out)
    print()
    print(
        "| regime | model | test AUC, median of seeds | per seed | validation AUC, median "
        "| best epoch (epochs run) |"
    )
    print("|---|---|---|---|---|---|")
    for (regime, name), outs in results.items():
        aucs = [o["test_auc"] for o in outs]
        per_seed = ", ".join(f"{a:.4f}" for a in aucs)
        valid = statistics.median(o["valid_auc"] for o in outs)
        epochs = ", ".join(f"{o['best_epoch']} ({o['epochs_run']})" for o in outs)
        print(
            f"| {regime} | {name} | **{statistics.median(aucs):.4f}** | {per_seed} "
            f"| {valid:.4f} | {epochs} |"
        )


if __name__ == "__main__":
    main()
