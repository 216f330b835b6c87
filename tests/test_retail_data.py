"""Tests of the retail example dataset (feature_repo/retail_data.py), its feature spec
(feature_repo/retail_features.yaml) and ``deepfm data generate --dataset retail``."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from feature_repo import retail_data
from feature_repo.retail_data import (
    CATEGORIES,
    CHANNELS,
    FEATURES,
    N_TOPICS,
    REGIONS,
    SCHEMAS,
    SEGMENTS,
    SPEC_PATH,
    auc,
    generate,
)
from feature_repo.spec import load_spec

ROWS = 20_000
START = pd.Timestamp("2026-11-01", tz="UTC")
DAYS = 8
TS = pd.DatetimeTZDtype("ns", "UTC")
PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEEPFM = Path(sys.executable).with_name("deepfm")

VISIT_DTYPES = {
    "customer_id": np.dtype("O"),
    "product_id": np.dtype("O"),
    "store_id": np.dtype("int64"),
    "channel": np.dtype("O"),
    "visit_ts": TS,
    "purchased": np.dtype("int64"),
}
CUSTOMER_DTYPES = {
    "age": pd.Int64Dtype(),
    "segment": np.dtype("O"),
    "is_member": np.dtype("bool"),
    "interests": np.dtype("O"),
}
PRODUCT_DTYPES = {
    "category": np.dtype("O"),
    "brand": np.dtype("O"),
    "price": np.dtype("float64"),
    "launch_year": pd.Int64Dtype(),
    "tags": np.dtype("O"),
}
STORE_DTYPES = {"region": np.dtype("O"), "floor_area": np.dtype("float64")}
EXPECTED_DTYPES = {
    "visits": VISIT_DTYPES,
    "customers": {"customer_id": np.dtype("O"), "updated_at": TS} | CUSTOMER_DTYPES,
    "products": {"product_id": np.dtype("O"), "updated_at": TS} | PRODUCT_DTYPES,
    "stores": {"store_id": np.dtype("int64"), "updated_at": TS} | STORE_DTYPES,
    # a visit before its customer's first profile version has null customer features
    "flat": VISIT_DTYPES
    | CUSTOMER_DTYPES
    | {"is_member": pd.BooleanDtype()}
    | PRODUCT_DTYPES
    | STORE_DTYPES,
    "truth": {"true_prob": np.dtype("float64")},
}
KEYS = {"customers": "customer_id", "products": "product_id", "stores": "store_id"}
VIEW_FEATURES = {
    "customers": list(CUSTOMER_DTYPES),
    "products": list(PRODUCT_DTYPES),
    "stores": list(STORE_DTYPES),
}


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> tuple[dict, dict[str, pd.DataFrame]]:
    out = tmp_path_factory.mktemp("retail")
    summary = generate(ROWS, seed=7, out_dir=out)
    frames = {name: pd.read_parquet(path) for name, path in summary["paths"].items()}
    return summary, frames


# ------------------------------------------------------------------------- the files


def test_writes_every_file_with_its_schema(generated):
    summary, frames = generated
    assert set(summary["paths"]) == set(SCHEMAS) == set(EXPECTED_DTYPES)
    for name, path in summary["paths"].items():
        assert path.name == f"{name}.parquet"
        assert pq.read_schema(path).remove_metadata() == SCHEMAS[name], name
        assert frames[name].dtypes.to_dict() == EXPECTED_DTYPES[name], name
    assert len(frames["visits"]) == len(frames["flat"]) == len(frames["truth"]) == ROWS


def test_summary(generated):
    summary, frames = generated
    assert summary["rows"] == ROWS
    assert summary["customers"] == frames["customers"]["customer_id"].nunique()
    assert summary["products"] == frames["products"]["product_id"].nunique()
    assert summary["stores"] == frames["stores"]["store_id"].nunique()
    assert summary["purchase_rate"] == pytest.approx(frames["visits"]["purchased"].mean())
    assert pd.Timestamp(summary["start"]) == START
    assert pd.Timestamp(summary["end"]) == START + pd.Timedelta(days=DAYS)


def test_ids_are_strings_for_customers_and_products_and_ints_for_stores(generated):
    _, frames = generated
    visits = frames["visits"]
    assert visits["customer_id"].str.fullmatch(r"c\d{6}").all()
    assert visits["product_id"].str.fullmatch(r"p\d{5}").all()
    assert (visits["store_id"] > 0).all()
    for source, key in KEYS.items():
        assert set(visits[key]) <= set(frames[source][key]), source


def test_nullable_ints_are_really_nullable(generated):
    _, frames = generated
    customers, products = frames["customers"], frames["products"]
    # ~10% of customers never give their age, ~10% of products lack a launch year
    first = customers.drop_duplicates("customer_id")
    assert 0.07 < first["age"].isna().mean() < 0.13
    assert first["age"].dropna().between(18, 90).all()
    first = products.drop_duplicates("product_id")
    assert 0.07 < first["launch_year"].isna().mean() < 0.13
    assert first["launch_year"].dropna().between(2000, 2030).all()
    # stored as parquet int64 with nulls, not as floats
    schema = pq.read_schema(generated[0]["paths"]["customers"])
    assert str(schema.field("age").type) == "int64"
    assert pq.read_table(generated[0]["paths"]["customers"])["age"].null_count > 0


def test_floats_with_missing_values_bools_and_strings(generated):
    _, frames = generated
    products, customers, stores = frames["products"], frames["customers"], frames["stores"]
    assert 0.03 < products["price"].isna().mean() < 0.08
    assert (products["price"].dropna() > 0).all()
    assert pq.read_table(generated[0]["paths"]["products"])["price"].null_count > 0
    assert customers["is_member"].any() and not customers["is_member"].all()
    assert set(customers["segment"]) == set(SEGMENTS)
    assert set(products["category"]) == set(CATEGORIES)
    assert set(stores["region"]) <= set(REGIONS)
    assert products["brand"].str.fullmatch(r"brand_\d{4}").all()
    assert (stores["floor_area"] > 0).all() and stores["floor_area"].notna().all()
    assert set(frames["visits"]["channel"]) == set(CHANNELS)


@pytest.mark.parametrize(("source", "column", "longest"), [("customers", "interests", 5),
                                                           ("products", "tags", 4)])  # fmt: skip
def test_list_columns(generated, source, column, longest):
    lists = generated[1][source][column]
    lengths = lists.map(len)
    assert lengths.min() == 1 and lengths.max() == longest
    assert all(len(set(v)) == len(v) for v in lists)  # distinct topics
    values = np.concatenate(lists.to_list())
    assert values.dtype == np.int64 and values.min() >= 1 and values.max() <= N_TOPICS


def test_timestamps(generated):
    _, frames = generated
    ts = frames["visits"]["visit_ts"]
    assert ts.is_monotonic_increasing
    assert ts.min() >= START and ts.max() < START + pd.Timedelta(days=DAYS)
    for source, key in KEYS.items():
        frame = frames[source]
        assert frame.groupby(key)["updated_at"].is_monotonic_increasing.all(), source
        assert not frame.duplicated([key, "updated_at"]).any(), source
        # versions before the window and inside it, some entities with several
        assert (frame["updated_at"] < START).any() and (frame["updated_at"] >= START).any()
        assert frame[key].duplicated().any(), source
    # every product and store has a version before the window, a few customers do not
    for source in ("products", "stores"):
        first = frames[source].groupby(KEYS[source])["updated_at"].min()
        assert (first < START).all(), source
    first = frames["customers"].groupby("customer_id")["updated_at"].min()
    assert 0.01 < (first >= START).mean() < 0.06


# ------------------------------------------------------------------------ flat, truth


def _expected_flat(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The flat table by brute force: every version of a visit's entities, those dated at
    or before the visit, the latest of them."""
    visits = frames["visits"].reset_index(names="_row")
    flat = visits
    for source, key in KEYS.items():
        versions = visits[["_row", key, "visit_ts"]].merge(frames[source], on=key)
        versions = versions[versions["updated_at"] <= versions["visit_ts"]]
        latest = versions.sort_values(["_row", "updated_at"]).drop_duplicates("_row", keep="last")
        flat = flat.merge(latest[["_row", *VIEW_FEATURES[source]]], on="_row", how="left")
    return flat.sort_values("_row").drop(columns="_row").reset_index(drop=True)


def test_flat_is_point_in_time_correct(generated):
    _, frames = generated
    flat, expected = frames["flat"], _expected_flat(frames)
    assert list(flat.columns) == [*VISIT_DTYPES, *FEATURES]
    pd.testing.assert_frame_equal(flat[list(VISIT_DTYPES)], frames["visits"])
    for name in FEATURES:
        got, want = flat[name], expected[name]
        assert (got.isna() == want.isna()).all(), name
        known = got.notna().to_numpy()
        assert [_plain(v) for v in got[known]] == [_plain(v) for v in want[known]], name


def _plain(value):
    return value.tolist() if isinstance(value, np.ndarray) else value


def _values(column: pd.Series) -> list:
    """A column as plain Python values, None for every kind of null."""
    return [_plain(v) if known else None for v, known in zip(column, column.notna(), strict=True)]


def test_flat_uses_versions_changed_inside_the_window(generated):
    """Entities with a version inside the window are seen with both versions, so joining
    the wrong version would change the features."""
    _, frames = generated
    flat, products = frames["flat"], frames["products"]
    moved = products[products["updated_at"] >= START]["product_id"]
    rows = flat[flat["product_id"].isin(moved)]
    seen = rows.groupby("product_id")["price"].nunique(dropna=False)
    assert (seen > 1).sum() > 20
    customers_without_profile = flat["segment"].isna()
    assert 0 < customers_without_profile.mean() < 0.05
    assert flat.loc[customers_without_profile, ["age", "is_member", "interests"]].isna().all().all()


def test_true_probability_and_bayes_auc(generated):
    summary, frames = generated
    p = frames["truth"]["true_prob"].to_numpy()
    y = frames["visits"]["purchased"].to_numpy()
    assert set(np.unique(y)) == {0, 1}
    assert ((p > 0) & (p < 1)).all()
    assert 0.03 < y.mean() < 0.10 and abs(p.mean() - 0.06) < 1e-3
    assert summary["bayes_auc"] == pytest.approx(auc(y, p))
    assert 0.68 < summary["bayes_auc"] < 0.95
    # above a model-free baseline: the purchase rate of a visit's channel, category or
    # segment (fitted on the same rows: an optimistic baseline)
    flat = frames["flat"]
    for column in ("channel", "category", "segment"):
        rate = flat.groupby(column, dropna=False)["purchased"].transform("mean").to_numpy()
        assert summary["bayes_auc"] > auc(y, rate) + 0.08, column


def test_planted_interactions_show_in_the_labels(generated):
    _, frames = generated
    flat = frames["flat"]
    by_channel = flat.groupby("channel")["purchased"].mean()
    assert by_channel["web"] < by_channel["app"] < by_channel["in_store"]
    overlap = np.array(
        [
            len(set(a) & set(b)) if a is not None else 0
            for a, b in zip(flat["interests"], flat["tags"], strict=True)
        ]
    )
    assert flat["purchased"][overlap >= 2].mean() > 1.5 * flat["purchased"][overlap == 0].mean()
    table = flat.groupby(["segment", "category"])["purchased"].mean()
    assert table.max() > 3 * table.min()


def test_auc_matches_the_pairwise_definition():
    rng = np.random.default_rng(0)
    y = rng.random(300) < 0.3
    s = rng.integers(0, 20, 300).astype(float)  # ties
    pos, neg = s[y], s[~y]
    pairs = (pos[:, None] > neg[None, :]).mean() + 0.5 * (pos[:, None] == neg[None, :]).mean()
    assert auc(y, s) == pytest.approx(pairs)
    assert np.isnan(auc(np.zeros(3), np.arange(3)))


def test_deterministic_by_seed(tmp_path):
    a = generate(2_000, seed=3, out_dir=tmp_path / "a")
    b = generate(2_000, seed=3, out_dir=tmp_path / "b")
    c = generate(2_000, seed=4, out_dir=tmp_path / "c")
    assert a["bayes_auc"] == b["bayes_auc"]
    for name in SCHEMAS:
        assert pq.read_table(a["paths"][name]).equals(pq.read_table(b["paths"][name])), name
    assert not pq.read_table(a["paths"]["visits"]).equals(pq.read_table(c["paths"]["visits"]))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"rows": 99}, "rows must be >= 100"), ({"rows": 100, "days": 0}, "days must be >= 1")],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate(seed=0, out_dir=tmp_path, **kwargs)


def test_200k_rows_in_a_few_seconds(tmp_path):
    import time

    t0 = time.perf_counter()
    retail_data._simulate(200_000, 0, "2026-11-01", 8)
    assert time.perf_counter() - t0 < 15  # a few seconds on one core; generous on CI


# ------------------------------------------------------------------------- the spec


def test_the_spec_describes_the_files(generated):
    summary, frames = generated
    spec = load_spec(SPEC_PATH)
    assert spec.feature_service == "retail_ranking"
    assert spec.entity_rows == "visits" and spec.timestamp == "visit_ts"
    assert spec.label.name == "purchased"
    assert spec.group_key == "customer_id"
    assert {n: (e.join_key, e.dtype) for n, e in spec.entities.items()} == {
        "customer": ("customer_id", "string"),
        "product": ("product_id", "string"),
        "store": ("store_id", "int64"),
    }
    assert [f.name for f in spec.context_features()] == ["channel"]
    assert set(spec.feature_views) == {"customer_profile", "product_catalog", "store_info"}
    assert spec.columns() == list(frames["flat"].columns)
    arrow_dtypes = {"int64": "int64", "float64": "double", "string": "string", "bool": "bool",
                    "list<int64>": "list<element: int64>"}  # fmt: skip
    for source in spec.sources:
        schema = pq.read_schema(summary["paths"][source])
        columns = spec.source_columns(source) | {spec.sources[source].timestamp_field: None}
        assert set(schema.names) == set(columns), source
        for name, dtype in spec.source_columns(source).items():
            assert str(schema.field(name).type) == arrow_dtypes[dtype], (source, name)
    nullable = {f.name for f in spec.features if f.nullable}
    assert nullable == {"age", "price", "launch_year"}


def test_the_spec_values_hold_on_the_data(generated):
    _, frames = generated
    spec = load_spec(SPEC_PATH)
    flat = frames["flat"]
    for f in spec.features:
        if f.valid is None:
            continue
        column = flat[f.name].dropna()
        if f.dtype.startswith("list<"):
            column = pd.Series(np.concatenate(column.to_list()))
        if f.valid.values is not None:
            assert set(column) <= set(f.valid.values), f.name
        if f.valid.min is not None:
            assert (column >= f.valid.min).all(), f.name
        if f.valid.max is not None:
            assert (column <= f.valid.max).all(), f.name


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A retail feature repo: the files of ``feature_repo.repo`` and the data."""
    from feature_repo.repo import write_repo_files

    path = write_repo_files(tmp_path_factory.mktemp("repo") / "retail", SPEC_PATH.read_text())
    generate(ROWS, seed=1, out_dir=path / "data")
    return path


def test_feast_objects_build(repo, monkeypatch):
    from feast import Entity, FeatureService, FeatureView, FileSource

    from feature_repo.definitions import objects_for_repo

    monkeypatch.delenv("DEEPFM_DATA_DIR", raising=False)
    objects = objects_for_repo(repo)
    kinds = {
        Entity: {"entity_customer", "entity_product", "entity_store"},
        FileSource: {"source_visits", "source_customers", "source_products", "source_stores"},
        FeatureView: {"view_customer_profile", "view_product_catalog", "view_store_info"},
        FeatureService: {"service_retail_ranking"},
    }
    for kind, names in kinds.items():
        assert {k for k, v in objects.items() if isinstance(v, kind)} == names, kind
    views = {k: v for k, v in objects.items() if isinstance(v, FeatureView)}
    assert [f.name for f in views["view_customer_profile"].features] == list(CUSTOMER_DTYPES)
    assert views["view_store_info"].ttl == pd.Timedelta(days=365)


def test_the_model_config_of_the_repo_encodes_the_flat_table(repo):
    from model.features import FeatureEncoder
    from training.config import load_config

    cfg = load_config(repo / "deepfm.yaml")
    assert cfg.data.label == "purchased" and cfg.data.timestamp == "visit_ts"
    assert cfg.data.group_key == "customer_id"  # the spec's group_key
    flat = pd.read_parquet(repo / "data" / "flat.parquet")
    encoded = FeatureEncoder(cfg).fit(flat).transform(flat)
    assert len(encoded) == len(flat)


# ---------------------------------------------------------------------------- the CLI


def _deepfm(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "DEEPFM_DATA_DIR"}
    env["PYTHONPATH"] = str(PROJECT_ROOT)
    return subprocess.run(
        [str(DEEPFM), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True
    )


def test_cli_writes_a_feature_repo(tmp_path):
    from pipelines.cli import main

    out = tmp_path / "shop"
    argv = ["data", "generate", "--dataset", "retail", "--rows", "2000", "--out", str(out)]
    assert main(argv) == 0
    for name in ("features.yaml", "feature_store.yaml", "definitions.py", "deepfm.yaml"):
        assert (out / name).is_file(), name
    assert (out / "features.yaml").read_text() == SPEC_PATH.read_text()
    assert {p.stem for p in (out / "data").glob("*.parquet")} == set(SCHEMAS)
    assert len(pd.read_parquet(out / "data" / "visits.parquet")) == 2_000


@pytest.mark.slow
def test_generated_repo_applies_and_retrieves_the_flat_table(tmp_path):
    out = tmp_path / "shop"
    done = _deepfm("data", "generate", "--dataset", "retail", "--rows", 3_000, "--seed", 2,
                   "--out", out, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert f"repo: {out}" in done.stdout and "Bayes AUC" in done.stderr
    done = _deepfm("features", "apply", "--repo", out, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "retail_ranking" in done.stdout + done.stderr
    table = tmp_path / "training.parquet"
    done = _deepfm("features", "training-data", "--repo", out, "--start", "2026-11-01T00:00:00Z",
                   "--end", "2026-11-09T00:00:00Z", "--out", table, cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stderr
    got = pd.read_parquet(table)
    want = pd.read_parquet(out / "data" / "flat.parquet")
    assert got.dtypes.to_dict() == want.dtypes.to_dict()
    order = ["visit_ts", "customer_id", "product_id", "store_id", "channel", "purchased"]
    got = got.sort_values(order, kind="stable").reset_index(drop=True)
    want = want.sort_values(order, kind="stable").reset_index(drop=True)
    for name in want.columns:
        assert _values(got[name]) == _values(want[name]), name


def test_the_specs_shared_topics_count_the_tags_the_customer_follows():
    """The retail spec's match feature is the true model's overlap |interests & tags|, the
    topics a product's tags share with a customer's interests (row 1 + that count, row 0
    where either list is unknown)."""
    from feature_repo.spec import load_spec
    from model.config import FeatureConfig
    from model.features import MatchEncoder

    flat = retail_data._simulate(3000, 5, "2026-11-01", 2)[0]["flat"]
    spec = load_spec(Path(retail_data.__file__).with_name("retail_features.yaml"))
    (match,) = (m for m in spec.model_features() if m.type == "match")
    rows = MatchEncoder(FeatureConfig(**match.config())).transform_single(flat)
    lists, keys = flat[match.column], flat[match.key]

    def given(cell) -> bool:  # a null list reads as None or NaN
        return isinstance(cell, list | tuple | np.ndarray) and len(cell) > 0

    want = [
        1 + len(set(a) & set(b)) if given(a) and given(b) else 0
        for a, b in zip(lists, keys, strict=True)
    ]
    assert rows.tolist() == want
    assert {0, 1, 2} <= set(want)  # unknown, no topic shared, some shared
