"""Retrieval on the Spark engine (Feast's Spark offline store, local mode): the same
point-in-time checks as the duckdb path (tests/test_datasets.py) on both example datasets,
the engine chosen by the repo's Feast config alone, and the training table written as shards
by Spark without collecting it. One SparkSession serves the whole module (the JVM starts
once, ~10 s); nothing here names a dataset's column.
"""

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from test_datasets import DATASETS, as_of_join, cell, events, make_repo, window

from feature_repo import shards, spark_engine, store
from feature_repo.repo import FEATURE_STORE_FILE
from feature_repo.spec import REPO_DIR, SPEC_FILE, load_spec

SPARK_CONFIG = REPO_DIR / "feature_store.spark.yaml"
ROWS = 3_000
SPEC_FILES = (SPEC_FILE, "retail_features.yaml")  # the two example datasets' specs


@pytest.fixture(scope="module", autouse=True)
def one_spark_session():
    """Stop the module's SparkSession (and its JVM's work) when the module is done."""
    yield
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()


def spark_repo(name: str, folder: Path) -> Path:
    """A repo of dataset ``name`` whose Feast config is the project's Spark profile."""
    repo = make_repo(name, folder, rows=ROWS)
    # two shuffle partitions: the test tables are tiny, each partition costs a task
    config = SPARK_CONFIG.read_text().replace('shuffle.partitions: "8"', 'shuffle.partitions: "2"')
    assert config != SPARK_CONFIG.read_text()
    (repo / FEATURE_STORE_FILE).write_text(config)
    return repo


@pytest.fixture(scope="module", params=DATASETS)
def repo(request, tmp_path_factory) -> Path:
    folder = spark_repo(request.param, tmp_path_factory.mktemp(f"spark_{request.param}"))
    store.apply(folder)
    return folder


@pytest.fixture(scope="module")
def spec(repo):
    return load_spec(repo / SPEC_FILE)


@pytest.fixture(scope="module")
def retrieved(repo, spec) -> pd.DataFrame:
    """The window's training table retrieved on Spark (once per dataset)."""
    start, end = window(spec, repo)
    return store.get_training_data(start, end, repo_path=repo)


def features_of(spec) -> list[str]:
    return [f.name for view in spec.feature_views for f in spec.view_features(view)]


def test_the_config_chooses_spark_and_the_registry_holds_spark_sources(repo, spec):
    feast_store = store.get_store(repo)
    assert spark_engine.is_spark(feast_store)
    sources = feast_store.list_data_sources()
    assert {s.name for s in sources} == set(spec.sources)
    assert {type(s).__name__ for s in sources} == {"SparkSource"}
    # the project's default profile stays duckdb
    assert not spark_engine.is_spark(store.get_store(REPO_DIR))


def test_spark_retrieval_equals_an_as_of_join_and_keeps_every_row_in_order(repo, spec, retrieved):
    start, end = window(spec, repo)
    table = retrieved
    rows = events(spec, repo)
    rows = rows[(rows[spec.timestamp] >= start) & (rows[spec.timestamp] < end)]
    rows = rows.reset_index(drop=True)
    assert len(table) == len(rows)
    assert list(table.columns) == spec.columns()
    # the entity rows come back in the file's order, with their own values
    for column in [spec.timestamp, spec.label.name, *spec.join_keys()]:
        assert [cell(v) for v in table[column]] == [cell(v) for v in rows[column]], column
    expected = as_of_join(spec, repo, rows)
    for column in features_of(spec):
        got = [cell(v) for v in table[column]]
        want = [cell(v) for v in expected[column]]
        mismatches = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
        assert not mismatches, (column, mismatches[:3], got[mismatches[0]], want[mismatches[0]])
    features = features_of(spec)
    assert any(cell(v) is not None for v in table[features[0]])
    # some rows have no valid version (before the first or past the TTL): kept, with nulls
    assert any(cell(v) is None for c in features for v in table[c])


def test_spark_and_duckdb_return_the_same_table(repo, spec, retrieved, tmp_path):
    duck = tmp_path / "duck"
    shutil.copytree(repo, duck, ignore=shutil.ignore_patterns("registry*.db", "online*.db"))
    (duck / FEATURE_STORE_FILE).write_text((REPO_DIR / FEATURE_STORE_FILE).read_text())
    store.apply(duck)
    start, end = window(spec, repo)
    on_duckdb = store.get_training_data(start, end, repo_path=duck)
    pd.testing.assert_frame_equal(retrieved, on_duckdb)


def test_spark_writes_the_window_as_shards_in_time_order(repo, spec, retrieved, tmp_path):
    start, end = window(spec, repo)
    out = tmp_path / "shards"
    manifest = store.write_training_shards(start, end, out, repo_path=repo, rows_per_file=700)
    table = retrieved
    assert manifest.rows == len(table)
    assert manifest == shards.read_manifest(out)
    assert all(0 < f.rows <= 700 for f in manifest.files)
    days = {f.path.split("/")[0] for f in manifest.files}
    assert len(days) > 1 and all(f.path.endswith(".parquet") for f in manifest.files)
    # every file holds one day's rows
    for f in manifest.files:
        times = pq.read_table(out / f.path, columns=[spec.timestamp])[spec.timestamp]
        assert {t.strftime("%Y-%m-%d") for t in times.to_pandas()} == {f.path.split("/")[0]}
    # the shards hold the same rows as the in-memory table, sorted by time (stable)
    loaded = shards.load_frame(out, nullable=features_of(spec))
    order = np.argsort(table[spec.timestamp].to_numpy(), kind="stable")
    expected = table.iloc[order].reset_index(drop=True)
    assert list(loaded.columns) == spec.columns()
    for column in spec.columns():
        got = [cell(v) for v in loaded[column]]
        want = [cell(v) for v in expected[column]]
        if column == spec.timestamp:
            got = [pd.Timestamp(v) for v in got]
            want = [pd.Timestamp(v) for v in want]
        assert got == want, column
    assert manifest.min_time == expected[spec.timestamp].min().isoformat()
    assert manifest.max_time == expected[spec.timestamp].max().isoformat()


def test_an_empty_window_on_spark_is_one_line_naming_the_file(repo, spec, tmp_path):
    start, _ = window(spec, repo)
    before = start - pd.Timedelta(days=30)
    with pytest.raises(store.FeatureStoreError, match="no entity rows in") as info:
        store.get_training_data(before, before + pd.Timedelta(days=1), repo_path=repo)
    assert str(spec.source_path(spec.entity_rows, repo)) in str(info.value)
    with pytest.raises(store.FeatureStoreError, match="no entity rows in"):
        store.write_training_shards(
            before, before + pd.Timedelta(days=1), tmp_path / "none", repo_path=repo
        )
    assert not (tmp_path / "none").exists()


def summaries(repo: Path, spec, tmp_path: Path) -> tuple:
    """Validation of ``repo`` on Spark (its config) and on pandas (a copy with the duckdb
    config): each outcome, or the DataValidationError's summary."""
    from validation.results import DataValidationError
    from validation.validate import validate_sources

    duck = tmp_path / "duck"
    shutil.copytree(repo, duck, ignore=shutil.ignore_patterns("registry*.db", "online*.db"))
    (duck / FEATURE_STORE_FILE).write_text((REPO_DIR / FEATURE_STORE_FILE).read_text())
    start, end = window(spec, repo)
    out = []
    for folder in (repo, duck):
        try:
            out.append(validate_sources(folder, start, end, tmp_path / f"docs_{folder.name}"))
        except DataValidationError as e:
            out.append(e.summary)
    return tuple(out)


@pytest.mark.slow
def test_validation_on_spark_finds_what_pandas_finds(repo, spec, tmp_path):
    """The suites through GX's Spark datasource: the same counts and the same failures as
    on pandas, for a source broken here (nulls in a join key) and the others, clean. GX runs
    one Spark job per metric (about a minute here): on one dataset, the one with the most
    dtypes."""
    most = max(len({f.dtype for f in load_spec(REPO_DIR / n).features}) for n in SPEC_FILES)
    if len({f.dtype for f in spec.features}) < most:
        pytest.skip("runs on the dataset with the most dtypes only (time)")
    broken = tmp_path / "broken"
    shutil.copytree(repo, broken, ignore=shutil.ignore_patterns("registry*.db", "online*.db"))
    path = spec.source_path(spec.entity_rows, broken)
    rows = pd.read_parquet(path)
    key = next(iter(spec.join_keys()))
    rows[key] = rows[key].astype(object).where(rows.index % 50 != 0, None)
    if spec.join_keys()[key] == "int64":
        rows[key] = rows[key].astype("Int64")
    rows.to_parquet(path, index=False)
    on_spark, on_pandas = summaries(broken, spec, tmp_path)
    assert not on_spark.success and not on_pandas.success
    failed = [(f.source, f.column, f.expectation) for f in on_spark.failures]
    assert failed == [(f.source, f.column, f.expectation) for f in on_pandas.failures]
    assert (spec.entity_rows, key, "expect_column_values_to_not_be_null") in failed
    for name in spec.sources:
        a, b = on_spark.sources[name], on_pandas.sources[name]
        assert (a.rows, a.evaluated, a.successful) == (b.rows, b.evaluated, b.successful), name
        assert a.evaluated > 0 and (a.failed == 0) == (name != spec.entity_rows), name
    assert on_spark.sources[spec.entity_rows].rows == len(rows)
    assert set(on_spark.pages) == set(on_pandas.pages)
    assert all(p.is_file() for p in on_spark.pages.values())


def test_the_spark_on_kubernetes_manifests_render_validate_and_match_the_local_profile():
    """manifests/spark: valid core objects; the cluster profile runs the same session
    settings as the local one with the master on Kubernetes; the driver's role reaches pods
    and their config, never secrets."""
    import yaml
    from test_manifests import MANIFESTS, find, one, render, validate_core

    objs = render(MANIFESTS / "spark")
    for o in objs:
        validate_core(o)
        assert o["metadata"]["namespace"] == "deepfm"
    config = yaml.safe_load(
        one(objs, "ConfigMap", "feast-config-spark")["data"]["feature_store.yaml"]
    )
    local = yaml.safe_load(SPARK_CONFIG.read_text())
    cluster_conf, local_conf = (c["offline_store"]["spark_conf"] for c in (config, local))
    assert config["offline_store"]["type"] == local["offline_store"]["type"] == "spark"
    assert cluster_conf["spark.master"].startswith("k8s://")
    assert local_conf["spark.master"].startswith("local")
    for key, value in spark_engine.SESSION_CONF.items():
        assert cluster_conf[key] == local_conf[key] == value, key
    executor_sa = cluster_conf["spark.kubernetes.authenticate.executor.serviceAccountName"]
    assert one(objs, "ServiceAccount", executor_sa)["automountServiceAccountToken"] is False
    (role,) = find(objs, "Role")
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert "pods" in resources and "secrets" not in resources
    binding = one(objs, "RoleBinding", role["metadata"]["name"])
    assert [s["name"] for s in binding["subjects"]] == ["deepfm-pipeline"]


def test_feasts_config_variable_chooses_the_spark_profile_for_any_repo(tmp_path, monkeypatch):
    """``FEAST_FS_YAML_FILE_PATH=feature_repo/feature_store.spark.yaml`` (the README's way)
    makes the store and the definitions Spark's, without touching the repo's own config."""
    from feature_repo.definitions import build, offline_store_type

    repo = make_repo("retail", tmp_path / "r", rows=500)
    spec = load_spec(repo / SPEC_FILE)
    assert offline_store_type(repo) == "duckdb"
    assert {type(s).__name__ for s in build(spec, repo).sources} == {"FileSource"}
    monkeypatch.setenv("FEAST_FS_YAML_FILE_PATH", str(SPARK_CONFIG))
    assert offline_store_type(repo) == "spark"
    assert spark_engine.is_spark(store.get_store(repo))
    sources = build(spec, repo).sources
    assert {type(s).__name__ for s in sources} == {"SparkSource"}
    # nanosecond times are read as microseconds, every column kept
    for source in sources:
        assert source.query.startswith("SELECT ") and "timestamp_micros(div(" in source.query
        assert source.path == str(spec.source_path(source.name, repo))


def test_spark_that_cannot_start_is_one_line_naming_the_config_and_exit_2(repo, spec, tmp_path):
    import os
    import subprocess
    import sys

    start, end = window(spec, repo)
    exe = str(Path(sys.executable).with_name("deepfm"))
    out = tmp_path / "t.parquet"
    done = subprocess.run(
        [exe, "features", "training-data", "--repo", str(repo), "--out", str(out)]
        + ["--start", start.isoformat(), "--end", end.isoformat()],
        env={**os.environ, "JAVA_HOME": str(tmp_path / "no-java")},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2, done.stderr
    (line,) = [x for x in done.stderr.splitlines() if x.startswith("deepfm")]
    assert "Spark did not start" in line and str(repo / FEATURE_STORE_FILE) in line
    assert not out.exists()
