"""``deepfm features init``: a starting feature spec inferred from the user's tables
(feature_repo/infer.py), on small tables written here with the types users have."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from feature_repo.infer import SMALL_VOCAB, infer_spec
from feature_repo.spec import load_spec
from pipelines.cli import main

START = pd.Timestamp("2026-03-01", tz="UTC")


def run(argv: list) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> dict[str, Path]:
    """Events (string and int keys, a small-vocabulary context string, a tz timestamp, a 0/1
    label) and three entity tables (a nullable int, a small-vocabulary string, a bool, a
    list of ints; floats with NaN, a list of strings; an int key)."""
    rng = np.random.default_rng(7)
    d = tmp_path_factory.mktemp("tables")
    n, customers, products, stores = 800, 300, 90, 6
    events = pd.DataFrame(
        {
            "customer_id": [f"c{i:06d}" for i in rng.integers(0, customers, n)],
            "product_id": [f"p{i:05d}" for i in rng.integers(0, products, n)],
            "store_id": rng.integers(1, stores + 1, n).astype("int64"),
            "channel": rng.choice(["web", "app", "in_store"], n),
            "visit_ts": START + pd.to_timedelta(rng.integers(0, 10 * 86400, n), unit="s"),
            "purchased": rng.integers(0, 2, n).astype("int64"),
        }
    )
    age = pd.array(rng.integers(18, 80, customers), dtype="Int64")
    age[::7] = pd.NA
    customer = pd.DataFrame(
        {
            "customer_id": [f"c{i:06d}" for i in range(customers)],
            # not the events' timestamp name: found as the only tz-aware timestamp
            "updated_at": START - pd.to_timedelta(rng.integers(1, 30, customers), unit="D"),
            "age": age,
            "segment": rng.choice(["bargain", "premium", "family"], customers),
            "is_member": rng.integers(0, 2, customers).astype(bool),
            "interests": [
                list(rng.choice(np.arange(1, 21), rng.integers(1, 5), replace=False))
                for _ in range(customers)
            ],
        }
    )
    price = rng.lognormal(3, 1, products)
    price[::5] = np.nan
    product = pd.DataFrame(
        {
            "product_id": [f"p{i:05d}" for i in range(products)],
            "visit_ts": START - pd.Timedelta(days=40) + pd.to_timedelta(np.arange(products), "h"),
            "price": price,
            "tags": [list(rng.choice(["new", "sale", "eco", "bulk"], 2)) for _ in range(products)],
        }
    )
    store = pd.DataFrame(
        {
            "store_id": np.arange(1, stores + 1, dtype="int64"),
            "opened": pd.Timestamp("2025-12-31T12:00", tz="Europe/Berlin"),
            "floor_area": rng.uniform(100, 900, stores),
        }
    )
    paths = {}
    for name, frame in [("visits", events), ("customers", customer), ("products", product),
                        ("stores", store)]:  # fmt: skip
        paths[name] = d / f"{name}.parquet"
        frame.to_parquet(paths[name])
    return paths


def entity_args(t: dict[str, Path]) -> dict[str, tuple[str, Path]]:
    return {
        "customer": ("customer_id", t["customers"]),
        "product": ("product_id", t["products"]),
        "store": ("store_id", t["stores"]),
    }


@pytest.fixture(scope="module")
def spec(tables, tmp_path_factory):
    text = infer_spec(tables["visits"], entity_args(tables), "purchased", "visit_ts")
    path = tmp_path_factory.mktemp("spec") / "features.yaml"
    path.write_text(text)
    return load_spec(path), text


def model(spec, column: str) -> list[dict]:
    return [m.config() for m in spec.feature(column).model_features]


def test_the_proposed_spec_loads_with_entities_sources_views_and_service(spec):
    spec, _ = spec
    assert {n: e.join_key for n, e in spec.entities.items()} == {
        "customer": "customer_id",
        "product": "product_id",
        "store": "store_id",
    }
    assert {n: e.dtype for n, e in spec.entities.items()} == {
        "customer": "string",
        "product": "string",
        "store": "int64",
    }
    assert spec.entity_rows == "visits"
    assert spec.timestamp == "visit_ts"
    assert {n: (s.path, s.timestamp_field) for n, s in spec.sources.items()} == {
        "visits": ("visits.parquet", "visit_ts"),
        "customers": ("customers.parquet", "updated_at"),
        "products": ("products.parquet", "visit_ts"),
        "stores": ("stores.parquet", "opened"),
    }
    assert {n: (v.source, v.entity) for n, v in spec.feature_views.items()} == {
        "customers": ("customers", "customer"),
        "products": ("products", "product"),
        "stores": ("stores", "store"),
    }
    assert spec.feature_service == "visits_ranking"
    assert spec.group_key == "customer_id"
    assert [f.name for f in spec.context_features()] == ["channel"]
    assert spec.label.name == "purchased"
    assert spec.label.dtype == "int64"
    assert spec.label.valid.values == (0, 1)


def test_ttl_days_span_the_oldest_version_to_the_last_event(spec, tables):
    spec, _ = spec
    last = pd.read_parquet(tables["visits"])["visit_ts"].max()
    for view, table, column in [("customers", "customers", "updated_at"),
                                ("products", "products", "visit_ts"),
                                ("stores", "stores", "opened")]:  # fmt: skip
        first = pd.read_parquet(tables[table])[column].min()
        days = (last - first).total_seconds() / 86400
        assert spec.feature_views[view].ttl_days == int(np.ceil(days)), view


def test_dtypes_and_nullable_follow_the_data(spec):
    spec, _ = spec
    got = {f.name: (f.dtype, f.nullable) for f in spec.features}
    assert got == {
        "customer_id": ("string", False),
        "product_id": ("string", False),
        "store_id": ("int64", False),
        "channel": ("string", False),
        "age": ("int64", True),  # a nullable int stays an int
        "segment": ("string", False),
        "is_member": ("bool", False),
        "interests": ("list<int64>", False),
        "price": ("float64", True),  # NaN is missing
        "tags": ("list<string>", False),
        "floor_area": ("float64", False),
    }


def test_valid_is_the_values_of_a_small_vocabulary_else_the_range_of_numbers(spec, tables):
    spec, _ = spec
    valid = {f.name: f.valid for f in spec.features}
    assert valid["channel"].values == ("app", "in_store", "web")
    assert valid["segment"].values == ("bargain", "family", "premium")
    assert valid["is_member"].values == (False, True)
    assert valid["interests"].values == tuple(range(1, 21))
    assert valid["tags"].values == ("bulk", "eco", "new", "sale")
    assert valid["store_id"].min == 1 and valid["store_id"].max is None  # a key: ids grow
    assert valid["customer_id"] is None and valid["product_id"] is None  # many strings
    ages = pd.read_parquet(tables["customers"])["age"]
    assert (valid["age"].min, valid["age"].max) == (ages.min(), ages.max())
    prices = pd.read_parquet(tables["products"])["price"]
    # rounded outward to four significant digits: still every value seen
    assert valid["price"].min <= prices.min() and valid["price"].min == pytest.approx(
        prices.min(), rel=1e-3
    )
    assert valid["price"].max >= prices.max() and valid["price"].max == pytest.approx(
        prices.max(), rel=1e-3
    )
    assert valid["price"].values is None  # floats take a range, not values


def test_encodings_by_type_and_vocabulary(spec):
    spec, _ = spec
    for key in ("customer_id", "product_id"):
        assert model(spec, key) == [
            {"name": key, "type": "id", "vocab": {"min_count": 2}, "embedding_dim": 16}
        ]
    for small in ("channel", "segment", "is_member", "store_id"):
        (m,) = model(spec, small)
        assert m["type"] == "id", small
        assert m["vocab"] == {"min_count": 1}, small
    (interests,) = model(spec, "interests")
    assert interests["type"] == "multi_id" and interests["pooling"] == "mean"
    assert interests["max_length"] == 4
    bucket, dense = model(spec, "price")
    assert bucket["type"] == "raw" and bucket["boundaries"] == sorted(set(bucket["boundaries"]))
    assert len(bucket["boundaries"]) >= 5
    assert dense == {"name": "price_dense", "column": "price", "type": "raw",
                     "normalizer": "log1p_standard"}  # fmt: skip
    assert [m["type"] for m in model(spec, "age")] == [
        "raw",
        "raw",
    ]  # more than SMALL_VOCAB values: a number
    groups = {m.name: m.groups for m in spec.model_features()}
    assert groups["price"] == ("wide", "fm", "deep")
    assert groups["price_dense"] == ("deep",)
    assert groups["interests"] == ("fm", "deep")


def test_comments_say_what_was_inferred_and_what_to_review(spec):
    _, text = spec
    assert "# inferred: 3 distinct values seen" in text
    assert "# inferred: nullable," in text
    assert "# review:" in text
    assert yaml.safe_load(text)["group_key"] == "customer_id"


def test_a_large_vocabulary_string_is_not_listed_in_valid(tmp_path):
    n = SMALL_VOCAB + 10
    events = pd.DataFrame(
        {
            "k": np.arange(n),
            "ctx": [f"v{i}" for i in range(n)],
            "ts": START + pd.to_timedelta(np.arange(n), "min"),
            "y": np.arange(n) % 2,
        }
    )
    feats = pd.DataFrame({"k": np.arange(n), "ts": START, "f": np.arange(n) * 1.5})
    events.to_parquet(tmp_path / "e.parquet")
    feats.to_parquet(tmp_path / "f.parquet")
    text = infer_spec(tmp_path / "e.parquet", {"thing": ("k", tmp_path / "f.parquet")}, "y", "ts")
    (tmp_path / "features.yaml").write_text(text)
    spec = load_spec(tmp_path / "features.yaml")
    assert spec.feature("ctx").valid is None
    assert model(spec, "ctx")[0]["vocab"] == {"min_count": 2}


# ------------------------------------------------------------------------------ CLI


def init_argv(tables: dict[str, Path], repo: Path, *extra) -> list:
    return [
        "features", "init", "--repo", repo, "--events", tables["visits"],
        "--entity", f"customer=customer_id:{tables['customers']}",
        "--entity", f"product=product_id:{tables['products']}",
        "--entity", f"store=store_id:{tables['stores']}",
        "--label", "purchased", "--timestamp", "visit_ts", *extra,
    ]  # fmt: skip


def test_init_writes_a_repo_with_the_tables_and_a_config_that_loads(tables, tmp_path):
    from training.config import load_config

    repo = tmp_path / "shop"
    code, out, err = run(init_argv(tables, repo, "--service", "shop", "--group-key", "store_id"))
    assert code == 0, err
    assert "review" in err
    for name in ("features.yaml", "feature_store.yaml", "definitions.py", "deepfm.yaml"):
        assert (repo / name).is_file(), name
    for name in ("visits", "customers", "products", "stores"):
        assert (repo / "data" / f"{name}.parquet").read_bytes() == tables[name].read_bytes()
    spec = load_spec(repo / "features.yaml")
    assert spec.feature_service == "shop"
    assert spec.group_key == "store_id"
    assert spec.source_path("visits", repo) == (repo / "data" / "visits.parquet").resolve()
    # the proposed encodings are a valid model config
    config = load_config(repo / "deepfm.yaml")
    assert {f.name for f in config.features} == {m.name for m in spec.model_features()}


def test_init_refuses_an_existing_spec_unless_forced(tables, tmp_path):
    repo = tmp_path / "r"
    repo.mkdir()
    (repo / "features.yaml").write_text("# mine\n")
    code, _, err = run(init_argv(tables, repo))
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "exists" in line and "--force" in line
    assert (repo / "features.yaml").read_text() == "# mine\n"
    code, _, err = run(init_argv(tables, repo, "--force"))
    assert code == 0, err
    load_spec(repo / "features.yaml")


@pytest.mark.parametrize(
    "change, words",
    [
        (("--label", "bought"), ["--label", "'bought'", "visits.parquet"]),
        (("--timestamp", "when"), ["--timestamp", "'when'", "visits.parquet"]),
        (("--entity", "shop=shop_id:{stores}"), ["--entity shop", "'shop_id'"]),
        (("--entity", "customer=customer_id"), ["--entity", "NAME=KEY:TABLE"]),
        (("--group-key", "nope"), ["--group-key", "'nope'"]),
    ],
)
def test_unknown_columns_are_one_line_naming_them(tables, tmp_path, change, words):
    argv = init_argv(tables, tmp_path / "r")
    flag, value = change
    value = value.format(stores=tables["stores"])
    if flag in argv and flag != "--entity":
        argv[argv.index(flag) + 1] = value
    else:
        argv += [flag, value]
    code, _, err = run(argv)
    assert code == 2, err
    (line,) = err.strip().splitlines()
    for word in words:
        assert word in line, line
    assert not (tmp_path / "r" / "features.yaml").exists()


def test_a_key_missing_from_its_entity_table_is_named(tables, tmp_path):
    argv = init_argv(tables, tmp_path / "r")
    argv[argv.index(f"store=store_id:{tables['stores']}")] = f"store=store_id:{tables['products']}"
    code, _, err = run(argv)
    assert code == 2
    (line,) = err.strip().splitlines()
    assert "'store_id'" in line and "products.parquet" in line


@pytest.mark.slow  # imports Feast, applies and retrieves: ~20 s
def test_the_inferred_repo_applies_and_retrieves_every_type(tables, tmp_path):
    repo = tmp_path / "shop"
    assert run(init_argv(tables, repo))[0] == 0
    code, _, err = run(["features", "apply", "--repo", repo])
    assert code == 0, err
    out = tmp_path / "train.parquet"
    window = ["--start", "2026-03-01T00:00Z", "--end", "2026-03-12T00:00Z"]
    code, _, err = run(["features", "training-data", "--repo", repo, *window, "--out", out])
    assert code == 0, err
    table = pd.read_parquet(out)
    spec = load_spec(repo / "features.yaml")
    assert list(table.columns) == spec.columns()
    assert len(table) == len(pd.read_parquet(tables["visits"]))
    assert str(table["age"].dtype) == "Int64" and table["age"].isna().any()
    assert table["price"].isna().any() and table["is_member"].notna().all()
    assert isinstance(table["tags"].iloc[0][0], str)


# ------------------------------------------------------------------------- matches


def test_no_match_is_proposed_between_columns_of_different_ids(spec):
    """The tables' lists (interest ints 1-20, tag strings) share no ids with another
    table's column: a 6-value store id is not matched against 20 interest ids."""
    spec, _ = spec
    assert not [m.name for m in spec.model_features() if m.type == "match"]


def test_a_list_and_another_tables_ids_of_the_same_ids_get_one_match(tables, tmp_path):
    rng = np.random.default_rng(3)
    products = pd.read_parquet(tables["products"])
    products["category_id"] = rng.integers(1, 21, len(products)).astype("int64")
    products["level"] = products["category_id"]  # the same values, named like a level
    products["topics"] = [
        list(rng.choice(np.arange(1, 21), 3, replace=False)) for _ in products.index
    ]
    customers = pd.read_parquet(tables["customers"])
    customers["topics_followed"] = customers["interests"]
    paths = dict(tables, products=tmp_path / "products.parquet", customers=tmp_path / "c.parquet")
    products.to_parquet(paths["products"])
    customers.to_parquet(paths["customers"])
    text = infer_spec(paths["visits"], entity_args(paths), "purchased", "visit_ts")
    (tmp_path / "features.yaml").write_text(text)
    got = load_spec(tmp_path / "features.yaml")
    matches = {
        m.name: (m.column, m.key, m.max_length) for m in got.model_features() if m.type == "match"
    }
    # an id: in the list or not; a list: how many of its 3 ids (the customer's lists hold
    # up to 4); two lists of one table are not matched with each other, two of different
    # tables once, not both ways
    assert matches == {
        "category_id_in_interests": ("interests", "category_id", 1),
        "topics_in_interests": ("interests", "topics", 3),
        "category_id_in_topics_followed": ("topics_followed", "category_id", 1),
        "topics_in_topics_followed": ("topics_followed", "topics", 3),
    }
    assert "-> category_id_in_interests: whether its id is in the list; review:" in text
    assert "level_in_interests" not in text  # 20 small ints not named like ids: codes


@pytest.mark.parametrize("dataset", ["sample", "retail"])
def test_the_example_datasets_get_their_specs_match_from_their_tables(dataset, tmp_path):
    """Inferred from the generators' source files alone, each example's proposal has the
    match its shipped spec has: same list, same key, same cap."""
    from feature_repo import retail_data, sample_data
    from feature_repo.spec import REPO_DIR

    generate, file = {
        "sample": (sample_data.generate, "features.yaml"),
        "retail": (retail_data.generate, "retail_features.yaml"),
    }[dataset]
    generate(3000, 1, tmp_path)
    shipped = load_spec(REPO_DIR / file)
    source = {name: tmp_path / s.path for name, s in shipped.sources.items()}
    entities = {
        v.entity: (shipped.entities[v.entity].join_key, source[v.source])
        for v in shipped.feature_views.values()
    }
    text = infer_spec(source[shipped.entity_rows], entities, shipped.label.name, shipped.timestamp)
    (tmp_path / "features.yaml").write_text(text)
    inferred = load_spec(tmp_path / "features.yaml")

    def matches(s):
        return {(m.column, m.key, m.max_length) for m in s.model_features() if m.type == "match"}

    assert matches(inferred) == matches(shipped) and len(matches(shipped)) == 1
