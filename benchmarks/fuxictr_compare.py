"""Training speed and test AUC of the project's DeepFM against FuxiCTR's DeepFM (issue 14).

    pip install -c constraints.txt -e '.[bench]'      # FuxiCTR: only this script needs it
    python benchmarks/fuxictr_compare.py --rows 200000 --batch-size 4096 --epochs 1 --threads 2

Both models see the same rows (``--data`` flat parquet, or ``--rows`` sample rows generated
into a temporary folder by ``feature_repo.sample_data.generate``), the same fields (the
``--categorical`` id columns and the ``--numeric`` columns, encoded once by the project's
encoder fitted on the training rows), embedding dim, MLP hidden units, batch size, epochs,
threads and seed; the test set is the last ``--test-fraction`` by time (or ``split``).

- ours: the project's DeepFM through the project's training loop (``model.train.train``,
  the config of ``benchmarks/train_throughput.py``, no validation split: every epoch runs
  on every training row); samples/s of its training loop (encoding and evaluation
  excluded, batch assembly included);
- FuxiCTR: its DeepFM as its paper and docs define it, assembled here from the FuxiCTR
  wheel's own parts (the wheel does not ship ``model_zoo``): one ``FeatureEmbedding`` over
  all fields -> ``FactorizationMachine`` (LR + FM) + ``MLP_Block`` (flattened embeddings ->
  hidden units -> 1) -> sigmoid, trained by ``BaseModel.train_step`` (forward, BCE loss,
  backward, gradient clipping at ``fit``'s default norm 10, one Adam over all parameters,
  ``BaseModel.compile``'s optimizer). Numeric columns are FuxiCTR ``numeric`` fields (an
  embedding of the value, in the FM and the MLP), its own treatment. Each epoch's shuffled
  batches are built before its clock starts: only ``train_step`` is timed.

Both run in one process, so under the same OpenMP wait policy: ``model.threads`` (imported
first) makes idle threads sleep unless ``OMP_WAIT_POLICY`` is set; the JSON records it.
FuxiCTR's steps run on the threads ours take at that batch size (``step_threads`` in the
JSON: ``model.threads.step_threads``, fewer than ``--threads`` for small batches).

Prints ONE JSON line (``ours_train_samples_per_s``, ``fuxictr_train_samples_per_s``, their
``ratio``, each one's ``test_auc`` / ``test_logloss``, batch size, threads, rows) and appends
it to ``--out`` (default ``benchmarks/results/fuxictr_compare.jsonl``). ``--repeats N``
alternates the two trainings N times (a shared machine's speed drifts within minutes) and
reports the median samples/s of each, the per-pair ratios, and the AUCs of the first pair.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import OrderedDict
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

# first (through train_throughput): idle OpenMP threads sleep (see model/threads.py)
import train_throughput as tt  # noqa: E402, I001  # isort: skip

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from model.config import config_from_dict  # noqa: E402
from model.features import FeatureEncoder  # noqa: E402
from model.metrics import auc, logloss  # noqa: E402
from model.train import score, time_split, train  # noqa: E402

INSTALL = "pip install -c constraints.txt -e '.[bench]'"
DEFAULT_OUT = HERE / "results" / "fuxictr_compare.jsonl"
# the sample's columns, as `make bench` trains on them
SAMPLE_LABEL = "clk"
SAMPLE_CATEGORICAL = (
    "user_id,adgroup_id,pid,age_level,gender,shopping_level,occupation,city_level,"
    "cms_segid,cate_id,campaign_id,customer_id,brand"
)
SAMPLE_NUMERIC = "price"


def import_fuxictr():
    """FuxiCTR's parts, or exit 2 with the install command when the wheel is missing."""
    try:
        from fuxictr.features import FeatureMap
        from fuxictr.pytorch.layers import FactorizationMachine, FeatureEmbedding, MLP_Block
        from fuxictr.pytorch.models import BaseModel
    except ImportError as err:
        print(
            f"error: fuxictr is not installed ({err.name}); install it: {INSTALL}", file=sys.stderr
        )
        sys.exit(2)
    return FeatureMap, FeatureEmbedding, FactorizationMachine, MLP_Block, BaseModel


def feature_map(categorical: dict[str, int], numeric: list[str], label: str, dim: int, tmp):
    """A FuxiCTR ``FeatureMap`` of the given fields: ``categorical`` name -> vocabulary size
    (every row trainable: the project's row 0, "missing", is a value, not padding)."""
    FeatureMap = import_fuxictr()[0]
    fmap = FeatureMap("fuxictr_compare", str(tmp))
    fmap.features = OrderedDict(
        [
            (n, {"type": "categorical", "source": "", "vocab_size": v})
            for n, v in categorical.items()
        ]
        + [(n, {"type": "numeric", "source": ""}) for n in numeric]
    )
    fmap.labels = [label]
    fmap.default_emb_dim = dim
    fmap.num_fields = fmap.get_num_fields()
    fmap.set_column_index()
    return fmap


def fuxictr_deepfm(fmap, dim: int, hidden: list[int], lr: float, seed: int, tmp):
    """FuxiCTR's DeepFM assembled from the wheel's classes, compiled with Adam + BCE and
    initialised by ``BaseModel.reset_parameters`` (Xavier-normal linears, N(0, 1e-4) tables)."""
    _, FeatureEmbedding, FactorizationMachine, MLP_Block, BaseModel = import_fuxictr()

    class FuxiDeepFM(BaseModel):
        def __init__(self) -> None:
            super().__init__(
                fmap, model_id="DeepFM", gpu=-1, verbose=0, model_root=str(tmp), metrics=["AUC"]
            )
            self.embedding_layer = FeatureEmbedding(fmap, dim)
            self.fm = FactorizationMachine(fmap)
            self.mlp = MLP_Block(
                input_dim=fmap.sum_emb_out_dim(),
                hidden_units=list(hidden),
                hidden_activations="ReLU",
                output_dim=1,
            )
            self.compile(optimizer="adam", loss="binary_crossentropy", lr=lr)
            self.reset_parameters()
            self.model_to_device()
            self._max_gradient_norm = 10.0  # BaseModel.fit's default, read by train_step

        def forward(self, inputs: dict) -> dict:
            X = self.get_inputs(inputs)
            emb = self.embedding_layer(X)  # (batch, fields, dim)
            logit = self.fm(X, emb) + self.mlp(emb.flatten(start_dim=1))
            return {"y_pred": self.output_activation(logit)}

    torch.manual_seed(seed)
    return FuxiDeepFM()


def column_dict(names: list[str], sparse, dense, cats: int) -> dict[str, torch.Tensor]:
    """FuxiCTR's batch layout (column name -> 1-D tensor) of encoded rows, contiguous."""
    out = {n: sparse[:, i].contiguous() for i, n in enumerate(names[:cats])}
    out.update({n: dense[:, j].contiguous() for j, n in enumerate(names[cats:])})
    return out


def train_fuxictr(model, columns: dict, y: torch.Tensor, label: str, batch: int, epochs: int):
    """``epochs`` passes of ``BaseModel.train_step`` over shuffled batches; returns each
    epoch's seconds inside ``train_step`` only (its batches are built before its clock)."""
    n, seconds = len(y), []
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))
        shuffled = {k: v[perm] for k, v in columns.items()}
        shuffled[label] = y[perm]
        batches = [{k: v[s : s + batch] for k, v in shuffled.items()} for s in range(0, n, batch)]
        t0 = time.perf_counter()
        for b in batches:
            model.train_step(b)
        seconds.append(time.perf_counter() - t0)
    return seconds


def predict_fuxictr(model, columns: dict, batch: int) -> np.ndarray:
    model.eval()
    n = len(next(iter(columns.values())))
    with torch.no_grad():
        out = [
            model({k: v[s : s + batch] for k, v in columns.items()})["y_pred"].reshape(-1)
            for s in range(0, n, batch)
        ]
    return torch.cat(out).numpy().astype(np.float64)


def load_data(args, tmp: Path) -> pd.DataFrame:
    if args.data:
        return pd.read_parquet(args.data)
    from feature_repo.sample_data import generate

    return pd.read_parquet(generate(args.rows, seed=args.data_seed, out_dir=tmp / "sample")["flat"])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    tt.add_config_args(p)  # the data and model settings of train_throughput.py
    defaults = {
        "data": None,
        "label": SAMPLE_LABEL,
        "categorical": SAMPLE_CATEGORICAL,
        "numeric": SAMPLE_NUMERIC,
    }
    for action in p._actions:
        if action.dest in defaults:  # optional here: the generated sample is the default
            action.required, action.default = False, defaults[action.dest]
    p.add_argument("--rows", type=int, default=200_000, help="sample rows to generate")
    p.add_argument("--data-seed", type=int, default=0, help="seed of the generated sample")
    p.add_argument("--test-fraction", type=float, default=0.1)
    p.add_argument("--repeats", type=int, default=1, help="alternate the two trainings N times")
    p.add_argument("--out", default=str(DEFAULT_OUT), help="JSONL to append to ('' = none)")
    p.add_argument("--note", default="", help="stored with the run, e.g. 'shared machine'")
    args = p.parse_args(argv)
    if args.rows < 100:
        p.error("--rows must be at least 100")
    if args.data and not Path(args.data).is_file():
        p.error(f"--data: no such file: {args.data}")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.precision != "fp32":
        p.error("--precision: only fp32 is compared (FuxiCTR's train_step has no autocast)")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    import_fuxictr()  # fail before the data is built
    torch.set_num_threads(args.threads)
    hidden = [int(h) for h in args.hidden.split(",")]
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        df = load_data(args, tmp)
        if "split" in df.columns:
            train_df = df[df["split"] == "train"].reset_index(drop=True)
            test_df = df[df["split"] == "test"].reset_index(drop=True)
        else:
            train_df, test_df = time_split(df, args.timestamp, args.test_fraction)
        settings = tt.build_config(args)
        settings["train"]["validation_fraction"] = 0.0  # every epoch on every row, as FuxiCTR
        cfg = config_from_dict(settings)
        labels = test_df[args.label].to_numpy()

        enc = FeatureEncoder(cfg).fit(train_df)
        spec = enc.input_spec()
        cats = {s.name: s.num_embeddings for s in spec.sparse}
        names = [*cats, *spec.dense]
        tr, te = enc.transform(train_df), enc.transform(test_df)
        train_cols = column_dict(names, tr.sparse, tr.dense, len(cats))
        test_cols = column_dict(names, te.sparse, te.dense, len(cats))
        y = torch.from_numpy(train_df[args.label].to_numpy(np.float32))
        fmap = feature_map(cats, list(spec.dense), args.label, args.embedding_dim, tmp)

        # the threads a training step of ours uses at this batch size (model.threads)
        step_threads = tt.threads.step_threads(
            args.batch_size, args.threads, cfg.train.min_samples_per_thread
        )
        ours_sps, fuxi_sps, first = [], [], {}
        for r in range(args.repeats):
            result = train(cfg, train_df, None, device="cpu", progress=False)
            ours_sps.append(result.samples_per_s)
            model = fuxictr_deepfm(fmap, args.embedding_dim, hidden, args.dense_lr, args.seed, tmp)
            # FuxiCTR's steps on the threads ours take (fewer for small batches), then back
            torch.set_num_threads(step_threads)
            try:
                seconds = train_fuxictr(
                    model, train_cols, y, args.label, args.batch_size, args.epochs
                )
            finally:
                torch.set_num_threads(args.threads)
            fuxi_sps.append(len(y) * args.epochs / sum(seconds))
            if r == 0:
                ours_p = score(result.model, result.encoder.transform(test_df), 65536)
                fuxi_p = predict_fuxictr(model, test_cols, 65536)
                first = {
                    "ours_test_auc": round(auc(labels, ours_p), 5),
                    "fuxictr_test_auc": round(auc(labels, fuxi_p), 5),
                    "ours_test_logloss": round(logloss(labels, ours_p), 5),
                    "fuxictr_test_logloss": round(logloss(labels, fuxi_p), 5),
                    "ours_epoch_samples_per_s": [
                        round(h["train_samples_per_s"], 1) for h in result.history
                    ],
                    "fuxictr_epoch_samples_per_s": [round(len(y) / s, 1) for s in seconds],
                }
    import fuxictr

    ours, fuxi = statistics.median(ours_sps), statistics.median(fuxi_sps)
    out = {
        "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "ours_train_samples_per_s": round(ours, 1),
        "fuxictr_train_samples_per_s": round(fuxi, 1),
        "ratio": round(ours / fuxi, 3),
        **first,
        "batch_size": args.batch_size,
        "threads": args.threads,
        "step_threads": step_threads,
        "host": tt.host(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "torch_runtime_spins": tt.threads.torch_runtime_spins(),
        "rows_train": len(train_df),
        "rows_test": len(test_df),
        "epochs": args.epochs,
        "embedding_dim": args.embedding_dim,
        "hidden": hidden,
        "fields": names,
        "repeats": args.repeats,
        "ours_runs": [round(s, 1) for s in ours_sps],
        "fuxictr_runs": [round(s, 1) for s in fuxi_sps],
        "pair_ratios": [round(a / b, 3) for a, b in zip(ours_sps, fuxi_sps, strict=True)],
        "data": args.data or f"sample rows={args.rows} seed={args.data_seed}",
        "torch": torch.__version__,
        "fuxictr": fuxictr.__version__,
        "note": args.note,
    }
    line = json.dumps(out)
    print(line)
    if args.out:
        with open(args.out, "a") as f:
            f.write(line + "\n")
    return out


if __name__ == "__main__":
    main()
