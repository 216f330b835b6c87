"""Tests of a feature repo other than the sample's (feature_repo/repo.py, definitions.py,
store.py, cli.py): three entities with string and int keys, three views, a renamed feature
service, request context, nullable ints, bools, string lists and data of another period."""

import argparse
import json
import logging
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from feature_repo import store
from feature_repo.cli import add_features_parser
from feature_repo.definitions import objects_for_repo
from feature_repo.repo import DEFINITIONS_SHIM, project_name, write_repo_files
from feature_repo.spec import SpecError, load_spec

T0 = pd.Timestamp("2019-03-01", tz="UTC")  # not the sample's period, and long before now

SPEC = """
label: {name: bought, dtype: int64, valid: {values: [0, 1]}}
entities:
  shopper: {join_key: shopper_id}
  item: {join_key: item_id}
  shop: {join_key: shop_id}
sources:
  trips: {path: trips.parquet, timestamp_field: trip_ts}
  shoppers: {path: shoppers.parquet, timestamp_field: ts}
  items: {path: items.parquet, timestamp_field: ts}
  shops: {path: shops.parquet, timestamp_field: ts}
entity_rows: trips
feature_views:
  shopper_facts: {source: shoppers, entity: shopper, ttl_days: 400}
  item_facts: {source: items, entity: item, ttl_days: 400}
  shop_facts: {source: shops, entity: shop, ttl_days: 400}
feature_service: shop_ranking
group_key: shopper_id
features:
  - {name: shopper_id, source: trips, dtype: string}
  - {name: item_id, source: trips, dtype: string}
  - {name: shop_id, source: trips, dtype: int64}
  - {name: device, source: trips, dtype: string, valid: {values: [web, app]}}
  - {name: age, view: shopper_facts, dtype: int64, nullable: true}
  - {name: is_member, view: shopper_facts, dtype: bool}
  - {name: likes, view: shopper_facts, dtype: list<int64>}
  - {name: kind, view: item_facts, dtype: string}
  - {name: cost, view: item_facts, dtype: float64, nullable: true}
  - {name: labels, view: item_facts, dtype: list<string>}
  - {name: area, view: shop_facts, dtype: float64}
"""


def _table(columns: dict[str, tuple[list, pa.DataType]]) -> pa.Table:
    return pa.table({name: pa.array(values, type=t) for name, (values, t) in columns.items()})


def write_sources(data: Path, t0: pd.Timestamp = T0) -> None:
    ts = pa.timestamp("us", tz="UTC")
    day = pd.Timedelta(days=1)
    pq.write_table(
        _table(
            {
                "shopper_id": (["s1", "s2", "s1"], pa.string()),
                "item_id": (["i1", "i2", "i2"], pa.string()),
                "shop_id": ([1, 2, 1], pa.int64()),
                "device": (["web", "app", "web"], pa.string()),
                "trip_ts": ([t0 + 2 * day, t0 + 3 * day, t0 + 4 * day], ts),
                "bought": ([1, 0, 1], pa.int64()),
            }
        ),
        data / "trips.parquet",
    )
    pq.write_table(
        _table(
            {
                "shopper_id": (["s1", "s2", "s1"], pa.string()),
                "age": ([30, None, 31], pa.int64()),
                "is_member": ([False, True, True], pa.bool_()),
                "likes": ([[1, 2], [], [3]], pa.list_(pa.int64())),
                "ts": ([t0, t0, t0 + day], ts),
            }
        ),
        data / "shoppers.parquet",
    )
    pq.write_table(
        _table(
            {
                "item_id": (["i1", "i2"], pa.string()),
                "kind": (["shoe", "hat"], pa.string()),
                "cost": ([9.5, None], pa.float64()),
                "labels": ([["red", "new"], ["blue"]], pa.list_(pa.string())),
                "ts": ([t0, t0], ts),
            }
        ),
        data / "items.parquet",
    )
    pq.write_table(
        _table(
            {
                "shop_id": ([1, 2], pa.int64()),
                "area": ([120.0, 80.5], pa.float64()),
                "ts": ([t0, t0], ts),
            }
        ),
        data / "shops.parquet",
    )


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("DEEPFM_DATA_DIR", "FEAST_FS_YAML_FILE_PATH"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def repo(tmp_path) -> Path:
    root = write_repo_files(tmp_path / "shop-repo", SPEC)
    write_sources(root / "data")
    return root


def run_cli(*argv: str) -> None:
    parser = argparse.ArgumentParser(prog="deepfm")
    add_features_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["features", *argv])
    args.func(args)


def test_write_repo_files_writes_a_whole_repo(tmp_path):
    root = write_repo_files(tmp_path / "my-data.v2", SPEC)
    assert sorted(p.name for p in root.iterdir()) == [
        "data",
        "deepfm.yaml",
        "definitions.py",
        "feature_store.yaml",
        "features.yaml",
    ]
    config = yaml.safe_load((root / "feature_store.yaml").read_text())
    assert config["project"] == "my_data_v2"
    assert config["registry"] == "data/registry.db"
    assert config["online_store"] == {"type": "sqlite", "path": "data/online_store.db"}
    assert config["offline_store"] == {"type": "duckdb"}
    assert (root / "definitions.py").read_text() == DEFINITIONS_SHIM
    assert len(DEFINITIONS_SHIM.splitlines()) == 3
    model = yaml.safe_load((root / "deepfm.yaml").read_text())
    assert model["feature_spec"] == "features.yaml"
    assert model["train"]["sparse_optimizer"] == {"type": "adam", "lr": 0.001}
    assert model["train"]["num_epochs"] == 10
    assert load_spec(root / "features.yaml").feature_service == "shop_ranking"
    assert project_name("2024") == "repo_2024"
    other = write_repo_files(tmp_path / "x", SPEC, project="retail")
    assert "project: retail" in (other / "feature_store.yaml").read_text()
    with pytest.raises(SpecError, match="feature_service"):
        write_repo_files(tmp_path / "bad", SPEC.replace("feature_service: shop_ranking", ""))


def test_the_spec_builds_every_entity_view_and_the_renamed_service(repo):
    spec = load_spec(repo / "features.yaml")
    assert spec.join_keys() == {"shopper_id": "string", "item_id": "string", "shop_id": "int64"}
    assert [f.name for f in spec.context_features()] == ["device"]
    objects = objects_for_repo(repo)
    assert list(objects) == [
        "entity_shopper",
        "entity_item",
        "entity_shop",
        "source_trips",
        "source_shoppers",
        "source_items",
        "source_shops",
        "view_shopper_facts",
        "view_item_facts",
        "view_shop_facts",
        "service_shop_ranking",
    ]
    served = {p.name for p in objects["service_shop_ranking"].feature_view_projections}
    assert served == {"shopper_facts", "item_facts", "shop_facts"}


def test_three_entities_apply_materialize_retrieve_and_serve(repo, caplog):
    applied = store.apply(repo)
    assert "created feature service shop_ranking" in applied.changes

    table = store.get_training_data(T0, T0 + pd.Timedelta(days=10), repo_path=repo)
    assert list(table.columns) == load_spec(repo / "features.yaml").columns()
    assert table["age"].dtype == "Int64" and table["is_member"].dtype == "boolean"
    assert table["age"].tolist() == [31, pd.NA, 31]  # s1's second version is a day old
    assert [list(v) for v in table["labels"]] == [["red", "new"], ["blue"], ["blue"]]

    # a fresh registry, data of another period: from each source's earliest feature time
    caplog.set_level(logging.INFO, logger="deepfm.features")
    done = store.materialize_incremental(T0 + pd.Timedelta(days=30), repo_path=repo)
    assert {m.view: m.rows for m in done} == {"shopper_facts": 3, "item_facts": 2, "shop_facts": 2}
    assert all(m.first and m.start == T0 for m in done)
    assert "first time" in done[0].summary()
    assert "was never materialized" in caplog.text

    result = store.online_features(
        {"shopper_id": "s1", "item_id": "i2", "shop_id": "1"}, {"device": "app"}, repo_path=repo
    )
    assert result.unstored == ()
    assert result.vector == {
        "shopper_id": "s1",
        "item_id": "i2",
        "shop_id": 1,  # typed by the spec
        "device": "app",
        "age": 31,
        "is_member": True,
        "likes": [3],
        "kind": "hat",
        "cost": None,
        "labels": ["blue"],
        "area": 120.0,
    }
    nobody = store.online_features(
        {"shopper_id": "s9", "item_id": "i1", "shop_id": 2}, repo_path=repo
    )
    assert nobody.vector["age"] is None and nobody.vector["kind"] == "shoe"
    assert [u.note() for u in nobody.unstored] == [
        "no stored features for shopper_id=s9 (views: shopper_facts)"
    ]
    with pytest.raises(store.FeatureStoreError, match="^shop_id: expected int64, got 'x'"):
        store.online_features({"shopper_id": "s1", "item_id": "i1", "shop_id": "x"}, repo_path=repo)


def test_a_materialization_that_loads_nothing_says_so(repo, caplog):
    store.apply(repo)
    caplog.set_level(logging.WARNING, logger="deepfm.features")
    start, end = pd.Timestamp("2030-01-01", tz="UTC"), pd.Timestamp("2030-02-01", tz="UTC")
    done = store.materialize(start, end, repo_path=repo)
    assert all(m.rows == 0 for m in done)
    assert done[0].summary().endswith("nothing loaded")
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.startswith(
        "materialization loaded 0 rows of feature views shopper_facts, item_facts, shop_facts "
        "in [2030-01-01 00:00, 2030-02-01 00:00] UTC"
    )
    assert "shopper_facts: 2019-03-01 00:00 .. 2019-03-02 00:00" in warning


def test_an_offline_view_is_retrieved_but_not_served(tmp_path):
    root = write_repo_files(
        tmp_path / "repo",
        SPEC.replace(
            "shop_facts: {source: shops, entity: shop, ttl_days: 400}",
            "shop_facts: {source: shops, entity: shop, ttl_days: 400, online: false}",
        ),
    )
    write_sources(root / "data")
    store.apply(root)
    table = store.get_training_data(T0, T0 + pd.Timedelta(days=10), repo_path=root)
    assert table["area"].tolist() == [120.0, 80.5, 120.0]
    done = store.materialize_incremental(T0 + pd.Timedelta(days=30), repo_path=root)
    assert [m.view for m in done] == ["shopper_facts", "item_facts"]
    vector = store.online_features(
        {"shopper_id": "s1", "item_id": "i1", "shop_id": 1}, repo_path=root
    ).vector
    assert "area" not in vector and vector["kind"] == "shoe"


def test_the_online_command_types_entities_and_notes_the_unstored(repo, capsys):
    flag = ["--repo", str(repo)]
    run_cli("apply", *flag)
    run_cli("materialize", *flag, "--incremental", "--end", "2019-04-01T00:00Z")
    capsys.readouterr()
    keys = ["--entity", "shopper_id=s2", "--entity", "item_id=i1", "--entity", "shop_id=2"]
    run_cli("online", *flag, *keys, "--context", "device=web")
    captured = capsys.readouterr()
    vector = json.loads(captured.out)
    assert vector["shop_id"] == 2 and vector["device"] == "web"
    assert vector["age"] is None and vector["is_member"] is True  # a stored null
    assert captured.err == ""

    keys[3] = "item_id=i404"
    run_cli("online", *flag, *keys)
    captured = capsys.readouterr()
    assert json.loads(captured.out)["kind"] is None
    assert captured.err == "no stored features for item_id=i404 (views: item_facts)\n"

    with pytest.raises(ValueError, match=r"^unknown entity key: user \(valid: shopper_id, "):
        run_cli("online", *flag, "--entity", "user=1")
    with pytest.raises(ValueError, match=r"^unknown context feature: slot \(valid: device\)"):
        run_cli("online", *flag, *keys, "--context", "slot=1")


@pytest.mark.slow  # a subprocess importing Feast: ~7 s
def test_feasts_own_cli_applies_a_written_repo(repo):
    result = subprocess.run(
        [str(Path(sys.executable).with_name("feast")), "-c", str(repo), "apply"],
        cwd=repo.parent,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Created feature service shop_ranking" in result.stdout
    assert store.apply(repo).changes == ()  # the registry Feast wrote agrees with the spec
