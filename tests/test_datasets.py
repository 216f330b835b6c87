"""The whole chain on both example datasets, driven by each one's spec alone: the sample (two
entities with int keys, a string request context) and `retail` (three entities, string
keys, a nullable int, a bool, floats with missing values, list features). Nothing here
names a column: every name comes from the dataset's ``features.yaml``.

Each dataset becomes a feature repo in a temporary folder as a user would make one
(``deepfm data generate``), then: apply, point-in-time retrieval checked against an as-of
join computed here, and validation. (Slow) the README's bring-your-own-data walkthrough
runs the whole pipeline on the retail tables, whose pushed model scores the eval rows as
the evaluation did, and whose online store and model server serve what was materialized
(``check_the_pushed_model_serves_as_evaluated``; tests/test_e2e_pipeline.py checks the same
on the sample's run).
"""

from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from feature_repo import store
from feature_repo.repo import write_repo_files
from feature_repo.sample_data import generate as generate_sample
from feature_repo.spec import REPO_DIR, SPEC_FILE, FeatureSpec, load_spec
from pipelines.cli import main as deepfm

DATASETS = ("sample", "retail")
ROWS = 6_000


def make_repo(name: str, folder: Path, rows: int = ROWS) -> Path:
    """A feature repo of example dataset ``name`` in ``folder``, as `deepfm data generate`
    writes it (the sample's repo is the project's own ``feature_repo/``: copied here)."""
    if name == "sample":
        write_repo_files(folder, (REPO_DIR / SPEC_FILE).read_text())
        generate_sample(rows, seed=1, out_dir=folder / "data")
    else:
        code = deepfm(
            ["data", "generate", "--dataset", name, "--rows", str(rows), "--seed", "1"]
            + ["--out", str(folder)]
        )
        assert code in (0, None)
    return folder


@pytest.fixture(scope="module", params=DATASETS)
def repo(request, tmp_path_factory) -> Path:
    folder = make_repo(request.param, tmp_path_factory.mktemp(request.param))
    store.apply(folder)
    return folder


@pytest.fixture(scope="module")
def spec(repo) -> FeatureSpec:
    return load_spec(repo / SPEC_FILE)


def events(spec: FeatureSpec, repo: Path) -> pd.DataFrame:
    return pd.read_parquet(spec.source_path(spec.entity_rows, repo))


def window(spec: FeatureSpec, repo: Path) -> tuple[pd.Timestamp, pd.Timestamp]:
    ts = events(spec, repo)[spec.timestamp]
    return ts.min(), ts.max() + timedelta(seconds=1)


def cell(value):
    """One comparable form of a table cell: None for any missing value, tuples for lists,
    Python scalars otherwise."""
    if isinstance(value, list | tuple | np.ndarray):
        return tuple(cell(v) for v in value)
    if value is None or value is pd.NA or (isinstance(value, float) and np.isnan(value)):
        return None
    return value.item() if isinstance(value, np.generic) else value


def as_of_join(spec: FeatureSpec, repo: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """Each event row with every view's features as of its time (the latest version at or
    before it, within the view's TTL), computed here with pandas, not Feast."""
    out = rows.copy()
    ts = spec.timestamp
    order = np.argsort(out[ts].to_numpy(), kind="stable")
    joined = out.iloc[order].reset_index()
    for name, view in spec.feature_views.items():
        source = spec.sources[view.source]
        key = spec.entities[view.entity].join_key
        columns = [f.name for f in spec.view_features(name)]
        versions = pd.read_parquet(spec.source_path(view.source, repo))
        versions = versions.rename(columns={source.timestamp_field: "__version_time"})
        versions = versions[[key, "__version_time", *columns]].sort_values("__version_time")
        left = joined.drop(columns=[c for c in columns if c in joined.columns])
        left[key] = left[key].astype(versions[key].dtype)
        merged = pd.merge_asof(
            left.sort_values(ts),
            versions,
            left_on=ts,
            right_on="__version_time",
            by=key,
            direction="backward",
        )
        too_old = merged[ts] - merged["__version_time"] > view.ttl
        for c in columns:
            merged[c] = merged[c].astype(object).where(~too_old, None)
        joined = merged.drop(columns="__version_time").sort_values("index")
    return joined.set_index("index").sort_index()


def test_apply_registers_the_specs_objects_and_a_second_apply_changes_nothing(repo, spec):
    again = store.apply(repo)
    assert not again.changes
    names = {v.name for v in again.definitions.feature_views}
    assert names == set(spec.feature_views)
    assert {s.name for s in again.definitions.feature_services} == {spec.feature_service}
    assert {e.name for e in again.definitions.entities} == set(spec.entities)


def test_point_in_time_retrieval_equals_an_as_of_join_and_never_sees_the_future(repo, spec):
    start, end = window(spec, repo)
    table = store.get_training_data(start, end, repo_path=repo)
    rows = events(spec, repo)
    rows = rows[(rows[spec.timestamp] >= start) & (rows[spec.timestamp] < end)]
    assert len(table) == len(rows)
    expected = as_of_join(spec, repo, rows.reset_index(drop=True))
    features = [f.name for name in spec.feature_views for f in spec.view_features(name)]
    for column in features:
        got = [cell(v) for v in table[column]]
        want = [cell(v) for v in expected[column]]
        mismatches = [i for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
        assert not mismatches, (column, mismatches[:3], got[mismatches[0]], want[mismatches[0]])
    # the retrieval saw rows with and without features (the check is not vacuous)
    assert any(cell(v) is not None for v in table[features[0]])


def test_the_clean_data_passes_validation(repo, spec, tmp_path):
    from validation.validate import validate_sources

    start, end = window(spec, repo)
    summary = validate_sources(repo, start, end, tmp_path / "docs")
    assert summary.success
    assert set(summary.sources) == set(spec.sources)


def check_the_pushed_model_serves_as_evaluated(
    spec: FeatureSpec, repo: Path, registry: Path, summary: dict
) -> None:
    """After a whole pipeline run (``summary``: ``pipelines.local_run.summarize``'s) that
    pushed to ``registry``: the pushed directory alone reproduces the evaluation's AUC on
    the eval rows; with the online store materialized, the model server scores the latest
    event rows by their entity keys and context alone, as the model scores the online
    feature vectors. Run on the sample by tests/test_e2e_pipeline.py and on the retail
    tables by the walkthrough below (each dataset's whole pipeline runs once)."""
    from model.export import load
    from model.metrics import auc
    from registry.model_registry import read_current

    current = read_current(str(registry))
    model = load(current["uri"])
    eval_df = pd.read_parquet(Path(summary["run_dir"]) / "features" / "eval_data")
    labels = eval_df[spec.label.name].to_numpy()
    assert auc(labels, model.predict(eval_df)) == pytest.approx(summary["auc"], abs=1e-12)
    assert model.cfg.data.group_key == spec.group_key

    # materialize, then score the latest event rows by their entity keys and context alone:
    # the server reads each view's latest version from the online store
    start, end = window(spec, repo)
    store.materialize(start - timedelta(days=400), end, repo_path=repo)
    rows = events(spec, repo).tail(12)
    keys = list(spec.join_keys())
    context = [f.name for f in spec.context_features()]
    instances = [
        {c: cell(v) for c, v in row.items() if c in keys or c in context}
        for _, row in rows.iterrows()
    ]
    online = [
        store.online_features(
            {k: i[k] for k in keys}, {c: i[c] for c in context if c in i}, repo_path=repo
        )
        for i in instances
    ]
    latest = latest_versions(spec, repo, end)
    for result in online:
        for name in spec.feature_views:
            key = spec.entities[spec.feature_views[name].entity].join_key
            want = latest[name].get(result.vector[key], {})
            for f in spec.view_features(name):
                assert cell(result.vector[f.name]) == cell(want.get(f.name)), (name, f.name)
    assert any(cell(v) is not None for r in online for v in r.vector.values())

    from serving.server import ModelServer, ServeOptions
    from tests.live_server import running

    server = ModelServer(
        ServeOptions(model=str(registry), feature_repo=str(repo), reload_interval_s=0)
    )
    server.refresh()
    with running(server) as url:
        response = requests.post(
            f"{url}/v1/models/deepfm:predict", json={"instances": instances}, timeout=60
        )
    assert response.status_code == 200, response.text
    expected = model.predict(pd.DataFrame([r.vector for r in online]))
    np.testing.assert_allclose(response.json()["predictions"], expected, rtol=1e-6)


def latest_versions(spec: FeatureSpec, repo: Path, end) -> dict[str, dict]:
    """Per view, each entity key's latest feature version at or before ``end`` (what an
    online store materialized up to ``end`` holds), as ``{key: {column: value}}``."""
    out = {}
    for name, view in spec.feature_views.items():
        source = spec.sources[view.source]
        key = spec.entities[view.entity].join_key
        versions = pd.read_parquet(spec.source_path(view.source, repo))
        versions = versions[versions[source.timestamp_field] <= end]
        versions = versions.sort_values(source.timestamp_field, kind="stable")
        last = versions.drop_duplicates(key, keep="last")
        out[name] = {cell(k): r for k, r in zip(last[key], last.to_dict("records"), strict=True)}
    return out


@pytest.mark.slow
def test_bring_your_own_data_walkthrough_on_the_retail_tables(tmp_path):
    """The README's walkthrough with no hand edit: the second dataset's raw tables only ->
    `deepfm features init` proposes the spec -> apply -> materialize -> run-local, through
    the `deepfm` command as a user types it."""
    import json
    import subprocess
    import sys

    # enough rows for the proposed spec to learn something in one epoch (~0.61 AUC)
    tables = make_repo("retail", tmp_path / "generated", rows=30_000) / "data"
    exe = str(Path(sys.executable).with_name("deepfm"))

    def run(*args: str) -> str:
        done = subprocess.run(
            [exe, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, f"deepfm {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    repo = tmp_path / "mine"
    run(
        "features", "init", "--repo", str(repo),
        "--events", str(tables / "visits.parquet"),
        "--entity", f"customer=customer_id:{tables / 'customers.parquet'}",
        "--entity", f"product=product_id:{tables / 'products.parquet'}",
        "--entity", f"store=store_id:{tables / 'stores.parquet'}",
        "--label", "purchased", "--timestamp", "visit_ts",
    )  # fmt: skip
    spec = load_spec(repo / SPEC_FILE)
    assert set(spec.entities) == {"customer", "product", "store"}
    assert spec.label.name == "purchased" and spec.timestamp == "visit_ts"
    assert "channel" in {f.name for f in spec.context_features()}
    run("features", "apply", "--repo", str(repo))
    run("features", "materialize", "--incremental", "--repo", str(repo))
    out = run(
        "pipeline", "run-local", "--feature-repo", str(repo),
        "--pipeline-root", str(tmp_path / "runs"),
        "--push-destination", str(tmp_path / "registry"),
        "--param", "min_auc=0.55", "--param", "epochs=1",
    )  # fmt: skip
    assert "BLESSED -> pushed" in out, out
    pointer = json.loads((tmp_path / "registry" / "CURRENT.json").read_text())
    assert pointer["metrics"]["auc"] >= 0.55

    # the retail tables' whole pipeline run: the pushed model scores as evaluated, offline,
    # online and served, on a spec that has every kind of column the dataset's own has
    # (lists, bools, nullable ints, floats with missing values)
    from pipelines.local_run import summarize

    def kinds(s: FeatureSpec) -> set[tuple[str, bool]]:
        return {(f.dtype, f.nullable) for f in s.features}

    assert kinds(spec) >= kinds(load_spec(tables.parent / SPEC_FILE))
    (run_dir,) = (tmp_path / "runs").glob("deepfm-ctr-*")
    summary = summarize(run_dir, str(tmp_path / "registry"))
    assert summary["blessed"] is True and summary["pushed"] is True, summary
    assert summary["auc"] == pytest.approx(pointer["metrics"]["auc"])
    check_the_pushed_model_serves_as_evaluated(spec, repo, tmp_path / "registry", summary)
