"""Tests of the Feast feature repo (feature_repo/definitions.py, store.py, cli.py and the
feature_store profiles): point-in-time retrieval against the sample generator's own as-of
join, TTLs, materialization and online reads, drift between the spec, the source files and
the registry, bad input, and Feast's own CLI on the repo.

Every test works on a copy of the repo's Feast files in a temporary folder, with a small
generated sample as its data, so the checkout's registry and data are never touched.
"""

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from feast import FeatureView, Field
from feast.repo_operations import get_repo_files
from feast.types import Array, Int64

from feature_repo import definitions, store
from feature_repo.cli import add_features_parser
from feature_repo.definitions import SourceError, build, check_definitions
from feature_repo.sample_data import SCHEMAS, generate, point_in_time_join
from feature_repo.spec import DTYPES, REPO_DIR, SpecError, load_spec
from feature_repo.store import FeatureStoreError, get_features, get_training_data
from model.train import time_split, train
from training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
ROWS = 20_000
START = pd.Timestamp("2026-11-01", tz="UTC")
END = START + pd.Timedelta(days=8)
# Every name comes from the project's spec (the sample's): the generator writes one file per
# source, named after it, and the tests say which object a name is by its role here.
SPEC = load_spec()
TS, LABEL, EVENTS = SPEC.timestamp, SPEC.label.name, SPEC.entity_rows
SOURCES = tuple(SPEC.sources)
USER, AD_ENTITY = SPEC.entities  # the entity of the profiles, the entity of the ads
USER_KEY, AD_KEY = (e.join_key for e in SPEC.entities.values())
(PROFILE_VIEW,) = (v.name for v in SPEC.feature_views.values() if v.entity == USER)
(AD_VIEW,) = (v.name for v in SPEC.feature_views.values() if v.entity == AD_ENTITY)
PROFILE_SOURCE = SPEC.feature_views[PROFILE_VIEW].source
AD_SOURCE = SPEC.feature_views[AD_VIEW].source
SERVICE = SPEC.feature_service
(CONTEXT,) = (f.name for f in SPEC.context_features())
PIDS = SPEC.feature(CONTEXT).valid.values
REPO_FILES = (
    "feature_store.yaml",
    "feature_store.gcp.yaml",
    "features.yaml",
    "definitions.py",
    "spec.py",
    ".feastignore",
)
PROFILE = [f.name for f in SPEC.view_features(PROFILE_VIEW)]
(LIST_COL,) = (f.name for f in SPEC.view_features(PROFILE_VIEW) if f.dtype.startswith("list"))
INT_PROFILE = [c for c in PROFILE if c != LIST_COL]
AD_INTS = [f.name for f in SPEC.view_features(AD_VIEW) if f.dtype == "int64"]
(PRICE,) = (f.name for f in SPEC.view_features(AD_VIEW) if f.dtype == "float64")
AD = [*AD_INTS, PRICE]
OBJECTS = len(SPEC.entities) + len(SPEC.sources) + len(SPEC.feature_views) + 1  # + the service
CLEAN_ENV = ("DEEPFM_DATA_DIR", "FEAST_FS_YAML_FILE_PATH")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in CLEAN_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """The generator's files for 20k events over [START, END)."""
    out = tmp_path_factory.mktemp("sample")
    generate(ROWS, seed=5, out_dir=out, start=str(START.date()), days=8)
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory, sample) -> Path:
    """An applied copy of the repo over the sample, shared by tests that only read it."""
    root = make_repo(tmp_path_factory.mktemp("shared") / "feature_repo", sample)
    with pytest.MonkeyPatch.context() as mp:
        for name in CLEAN_ENV:
            mp.delenv(name, raising=False)
        store.apply(root)
    return root


def make_repo(root: Path, sample: Path) -> Path:
    """Copy feature_repo/'s Feast files to ``root`` and the sample's sources to root/data."""
    (root / "data").mkdir(parents=True)
    for name in REPO_FILES:
        shutil.copy(REPO_DIR / name, root / name)
    for name in SOURCES:
        shutil.copy(sample / f"{name}.parquet", root / "data")
    return root


def edit_spec(root: Path, change) -> None:
    raw = yaml.safe_load((root / "features.yaml").read_text())
    change(raw)
    (root / "features.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def drop_feature(name: str):
    def change(raw):
        raw["features"] = [f for f in raw["features"] if f["name"] != name]

    return change


def read(sample: Path, name: str) -> pd.DataFrame:
    return pd.read_parquet(sample / f"{name}.parquet")


def lists(column: pd.Series) -> list:
    return [None if v is None else list(v) for v in column]


def assert_same_table(got: pd.DataFrame, want: pd.DataFrame) -> None:
    """Equal columns, dtypes and values, row by row (list cells compared as lists)."""
    assert list(got.columns) == list(want.columns)
    assert got.dtypes.to_dict() == want.dtypes.to_dict()
    pd.testing.assert_frame_equal(got.drop(columns=LIST_COL), want.drop(columns=LIST_COL))
    assert lists(got[LIST_COL]) == lists(want[LIST_COL])


def as_retrieved(flat: pd.DataFrame) -> pd.DataFrame:
    """The generator's flat table in the types Feast retrieval gives: every integer feature
    of a view is nullable Int64 (the generator keeps the ad's as int64: it never lacks one)."""
    return flat.astype({c: "Int64" for c in AD_INTS})


# ---------------------------------------------------------------- the definitions


def test_feast_reads_only_definitions_py():
    assert get_repo_files(REPO_DIR) == [REPO_DIR / "definitions.py"]


def test_definitions_follow_the_spec():
    for name, entity in SPEC.entities.items():
        built = getattr(definitions, f"entity_{name}")
        assert (built.name, built.join_key) == (name, entity.join_key)
    profile_view = getattr(definitions, f"view_{PROFILE_VIEW}")
    fields = {f.name: f.dtype for f in profile_view.features}
    assert fields[LIST_COL] == Array(Int64)
    assert fields[INT_PROFILE[0]] == Int64
    for name, view in SPEC.feature_views.items():
        assert getattr(definitions, f"view_{name}").ttl == timedelta(days=view.ttl_days)
    assert {v.ttl_days for v in SPEC.feature_views.values()} == {90, 180}  # a real difference
    assert profile_view.batch_source.timestamp_field == SPEC.sources[PROFILE_SOURCE].timestamp_field
    assert Path(getattr(definitions, f"source_{EVENTS}").path).is_absolute()
    service = getattr(definitions, f"service_{SERVICE}")
    served = {p.name for p in service.feature_view_projections}
    assert served == {PROFILE_VIEW, AD_VIEW}


def test_every_spec_dtype_has_a_feast_and_an_arrow_type():
    assert set(definitions.FEAST_TYPES) == set(definitions.ARROW_TYPES) == set(DTYPES)
    join_keys = {load_spec().feature(e.join_key).dtype for e in load_spec().entities.values()}
    assert join_keys <= set(definitions.VALUE_TYPES)


def test_a_feast_view_field_missing_from_the_spec_fails():
    built = build(load_spec(), REPO_DIR)
    profile = built.feature_views[0]
    assert profile.name == PROFILE_VIEW
    widened = FeatureView(
        name=profile.name,
        entities=[built.entities[0]],
        ttl=profile.ttl,
        source=profile.batch_source,
        schema=[*profile.features, Field(name="income_level", dtype=Int64)],
    )
    drifted = dataclasses.replace(built, feature_views=(widened, *built.feature_views[1:]))
    with pytest.raises(
        SpecError,
        match=rf"feature 'income_level' is in the Feast view '{PROFILE_VIEW}' \(the test\) "
        "but not in features.yaml",
    ):
        check_definitions(load_spec(), drifted, REPO_DIR, where="the test")


@pytest.mark.slow  # two subprocesses importing Feast: ~14 s
def test_feasts_own_cli_applies_the_repo(tmp_path, sample):
    root = make_repo(tmp_path / "repo", sample)
    env = {k: v for k, v in os.environ.items() if k not in CLEAN_ENV}

    def feast_apply() -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(Path(sys.executable).with_name("feast")), "-c", str(root), "apply"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )

    spec_text = (root / "features.yaml").read_text()
    edit_spec(
        root,
        lambda raw: raw["features"].append(
            {"name": "income_level", "view": PROFILE_VIEW, "dtype": "int64"}
        ),
    )
    result = feast_apply()
    assert result.returncode != 0
    assert f"column 'income_level' of source '{PROFILE_SOURCE}' is not in" in result.stderr
    assert not (root / "data" / "registry.db").exists()

    (root / "features.yaml").write_text(spec_text)
    result = feast_apply()
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Created feature service {SERVICE}" in result.stdout
    # The registry Feast's CLI wrote agrees with the spec: the library uses it as it is.
    assert len(get_training_data(START, START + pd.Timedelta(hours=6), repo_path=root)) > 0


# ----------------------------------------------------------- point-in-time retrieval


def test_training_data_equals_the_generators_as_of_join(repo, sample):
    table = get_training_data(START, END, repo_path=repo)
    flat = read(sample, "flat")
    keys = [USER_KEY, AD_KEY, TS]
    assert flat.duplicated(keys).sum() > 0  # duplicate entity rows are kept, each once
    assert flat[INT_PROFILE].isna().any().all()  # and rows before any profile
    assert len(table) == len(flat) == ROWS
    assert_same_table(table, as_retrieved(flat))


def test_each_row_gets_the_version_valid_at_its_time(repo, sample):
    profiles = read(sample, PROFILE_SOURCE)
    ad = int(read(sample, AD_SOURCE)[AD_KEY].iloc[0])  # every ad has a version before START
    versions = profiles.groupby(USER_KEY)
    changed = profiles[versions[USER_KEY].transform("size") == 2]
    first, second = changed.groupby(USER_KEY).nth(0), changed.groupby(USER_KEY).nth(1)
    late = versions.nth(0)[versions.nth(0)[TS] >= START].head(10)
    second_ts = second.set_index(USER_KEY)[TS].head(20)
    second_s = pd.Timedelta(seconds=1)
    rows, expected = [], []
    for user, ts in second_ts.items():
        old = first[first[USER_KEY] == user].iloc[0]
        new = second[second[USER_KEY] == user].iloc[0]
        for at, version in ((ts - second_s, old), (ts, new), (ts + second_s, new)):
            rows.append((user, at))
            expected.append(version)
    for _, version in late.iterrows():
        rows.append((version[USER_KEY], version[TS] - second_s))
        expected.append(None)
        rows.append((version[USER_KEY], version[TS]))
        expected.append(version)
    entity = pd.DataFrame(rows, columns=[USER_KEY, TS]).assign(**{AD_KEY: ad})

    got = get_features(entity, repo_path=repo)

    assert len(got) == len(entity)
    assert got[[USER_KEY, TS]].equals(entity[[USER_KEY, TS]])
    for (_, row), version in zip(got.iterrows(), expected, strict=True):
        if version is None:  # before the user's first profile
            assert row[INT_PROFILE].isna().all() and row[LIST_COL] is None
        else:
            assert [row[c] for c in INT_PROFILE] == [version[c] for c in INT_PROFILE]
            assert list(row[LIST_COL]) == list(version[LIST_COL])
    differs = first.set_index(USER_KEY)[INT_PROFILE] != second.set_index(USER_KEY)[INT_PROFILE]
    assert differs.loc[second_ts.index].any(axis=None)  # the versions really differ


def test_features_older_than_the_ttl_are_null(tmp_path, sample):
    """Some users' and ads' versions are moved far back: older than the views' TTLs (90 and
    180 days) at every impression, so Feast returns nulls where the no-TTL as-of join of
    the generator still finds them."""
    root = make_repo(tmp_path / "repo", sample)
    events = read(sample, EVENTS)
    profiles, ads = read(sample, PROFILE_SOURCE), read(sample, AD_SOURCE)
    old_users = events[USER_KEY].drop_duplicates().to_numpy()[:25]
    old_ads = events[AD_KEY].drop_duplicates().to_numpy()[:10]
    profiles.loc[profiles[USER_KEY].isin(old_users), TS] -= pd.Timedelta(days=200)
    ads.loc[ads[AD_KEY].isin(old_ads), TS] -= pd.Timedelta(days=300)
    for name, frame in ((PROFILE_SOURCE, profiles), (AD_SOURCE, ads)):
        table = pa.Table.from_pandas(frame, schema=SCHEMAS[name], preserve_index=False)
        pq.write_table(table, root / "data" / f"{name}.parquet")
    store.apply(root)

    got = get_training_data(START, END, repo_path=root)

    want = as_retrieved(point_in_time_join(events, profiles, ads))
    expired_user = want[USER_KEY].isin(old_users).to_numpy()
    expired_ad = want[AD_KEY].isin(old_ads).to_numpy()
    assert want.loc[expired_user, INT_PROFILE].notna().all(axis=None)
    assert expired_user.sum() > 100 and expired_ad.sum() > 100
    want.loc[expired_user, INT_PROFILE] = pd.NA
    want.loc[expired_user, LIST_COL] = None
    want.loc[expired_ad, AD_INTS] = pd.NA
    want.loc[expired_ad, PRICE] = np.nan
    assert_same_table(got, want)


def test_the_window_is_half_open_in_impression_order(repo, sample):
    events = read(sample, EVENTS)
    start, end = events[TS].iloc[[5000, 9000]]
    table = get_training_data(start, end, repo_path=repo)
    inside = events[(events[TS] >= start) & (events[TS] < end)]
    assert table[TS].iloc[0] == start
    assert table[TS].max() < end
    pd.testing.assert_frame_equal(table[events.columns], inside.reset_index(drop=True))


def test_out_is_written_whole(repo, tmp_path):
    out = tmp_path / "day" / "train.parquet"
    table = get_training_data(START, START + pd.Timedelta(days=1), repo_path=repo, out=out)
    assert_same_table(pd.read_parquet(out), table)
    assert [p.name for p in out.parent.iterdir()] == ["train.parquet"]


# ------------------------------------------------------------ materialize and online


def test_materialize_then_online_reads_the_latest_values(tmp_path, sample):
    root = make_repo(tmp_path / "repo", sample)
    store.apply(root)
    middle = START + pd.Timedelta(days=4)
    profiles, ads = read(sample, PROFILE_SOURCE), read(sample, AD_SOURCE)
    user = profiles.loc[profiles[TS] > middle, USER_KEY].iloc[0]
    ad = ads.loc[ads[TS] > middle, AD_KEY].iloc[0]

    def latest(until: pd.Timestamp) -> dict:
        profile = profiles[(profiles[USER_KEY] == user) & (profiles[TS] <= until)]
        attrs = ads[(ads[AD_KEY] == ad) & (ads[TS] <= until)]
        p, a = profile.iloc[-1], attrs.iloc[-1]
        return {
            USER_KEY: int(user),
            AD_KEY: int(ad),
            **{c: int(p[c]) for c in INT_PROFILE},
            LIST_COL: [int(v) for v in p[LIST_COL]],
            **{c: int(a[c]) for c in AD_INTS},
            PRICE: float(a[PRICE]),
        }

    def online(user_key, context=None) -> store.OnlineResult:
        keys = {USER_KEY: user_key, AD_KEY: int(ad)}
        return store.online_features(keys, context, repo_path=root)

    store.materialize(START - pd.Timedelta(days=120), middle, repo_path=root)
    before = online(int(user), {CONTEXT: PIDS[0]})
    assert before.unstored == ()
    want = {USER_KEY: int(user), AD_KEY: int(ad), CONTEXT: PIDS[0]} | latest(middle)
    assert before.vector == want
    assert list(before.vector) == list(want)  # spec.columns() order

    store.materialize_incremental(END, repo_path=root)
    after = online(str(user)).vector  # a key typed as the command line gives it
    assert after == latest(END)
    assert after != {k: v for k, v in before.vector.items() if k != CONTEXT}

    unknown = online(0)  # ids start at 1
    assert all(unknown.vector[c] is None for c in PROFILE)
    assert unknown.vector[PRICE] == after[PRICE]
    assert [u.note() for u in unknown.unstored] == [
        f"no stored features for {USER_KEY}=0 (views: {PROFILE_VIEW})"
    ]


# ----------------------------------------------------------------- apply: what changed


def test_a_second_apply_changes_nothing_and_says_so(tmp_path, sample):
    root = make_repo(tmp_path / "repo", sample)
    first = store.apply(root)
    assert {
        f"created feature view {PROFILE_VIEW}",
        f"created feature view {AD_VIEW}",
        f"created feature service {SERVICE}",
    } <= set(first.changes)
    registry = (root / "data" / "registry.db").read_bytes()

    second = store.apply(root)

    assert second.changes == ()
    assert second.summary() == [f"feature store is up to date ({second.objects} objects)"]
    assert second.objects == first.objects > 0
    assert (root / "data" / "registry.db").read_bytes() == registry  # nothing written


def test_apply_names_the_view_whose_ttl_changed(tmp_path, sample):
    root = make_repo(tmp_path / "repo", sample)
    store.apply(root)

    def longer_ttl(raw):
        raw["feature_views"][PROFILE_VIEW]["ttl_days"] += 1

    edit_spec(root, longer_ttl)
    applied = store.apply(root)

    assert applied.changes == (f"updated feature view {PROFILE_VIEW} (ttl)",)
    ttl = SPEC.feature_views[PROFILE_VIEW].ttl_days + 1
    assert store.get_store(root).get_feature_view(PROFILE_VIEW).ttl == timedelta(days=ttl)
    assert store.apply(root).changes == ()


def test_the_apply_command_prints_one_line_when_nothing_changed(tmp_path, sample, capsys):
    root = make_repo(tmp_path / "repo", sample)
    run_cli("apply", "--repo", str(root))
    capsys.readouterr()
    run_cli("apply", "--repo", str(root))
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f"feature store is up to date ({OBJECTS} objects)"]


# ------------------------------------------------------------------------ progress bars


def test_materialize_reports_each_view_and_shows_a_bar_only_when_asked(
    tmp_path, sample, capsys, monkeypatch
):
    root = make_repo(tmp_path / "repo", sample)
    store.apply(root)
    capsys.readouterr()
    monkeypatch.setenv(store.PROGRESS_ENV, "0")
    done = store.materialize(START - pd.Timedelta(days=120), START, repo_path=root)
    assert sorted(m.view for m in done) == sorted([AD_VIEW, PROFILE_VIEW])
    profiles = read(sample, PROFILE_SOURCE)
    in_range = profiles[TS].between(START - pd.Timedelta(days=120), START)
    assert {m.view: m.rows for m in done}[PROFILE_VIEW] == in_range.sum() > 0
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""  # Feast's prints go to the debug log

    monkeypatch.setenv(store.PROGRESS_ENV, "1")
    done = store.materialize_incremental(END, repo_path=root)
    assert all(m.start == START for m in done)
    assert "materialize" in capsys.readouterr().err
    get_training_data(START, START + pd.Timedelta(days=1), repo_path=root)
    assert "point-in-time join" in capsys.readouterr().err


# --------------------------------------------------------------------------- drift


def test_a_spec_feature_missing_from_its_source_fails_apply(tmp_path, sample):
    root = make_repo(tmp_path / "repo", sample)
    edit_spec(
        root,
        lambda raw: raw["features"].append(
            {"name": "income_level", "view": PROFILE_VIEW, "dtype": "int64"}
        ),
    )
    with pytest.raises(
        SpecError,
        match=rf"^features.yaml: column 'income_level' of source '{PROFILE_SOURCE}' is not in "
        rf".*/data/{PROFILE_SOURCE}.parquet",
    ):
        store.apply(root)
    assert not (root / "data" / "registry.db").exists()


def test_a_registry_out_of_step_with_the_spec_fails_naming_the_feature(tmp_path, sample):
    root = make_repo(tmp_path / "repo", sample)
    spec_text = (root / "features.yaml").read_text()
    edit_spec(root, drop_feature(INT_PROFILE[-1]))
    store.apply(root)
    (root / "features.yaml").write_text(spec_text)
    with pytest.raises(
        SpecError,
        match=rf"^feature '{INT_PROFILE[-1]}' of view '{PROFILE_VIEW}' in features.yaml is not in "
        rf"the Feast view '{PROFILE_VIEW}' \(the Feast registry .*/data/registry.db\); "
        r"run `deepfm features apply`",
    ):
        get_training_data(START, END, repo_path=root)

    store.apply(root)
    edit_spec(root, drop_feature(INT_PROFILE[-1]))
    with pytest.raises(
        SpecError,
        match=rf"^feature '{INT_PROFILE[-1]}' is in the Feast view '{PROFILE_VIEW}' \(the Feast "
        "registry",
    ):
        store.online_features({USER_KEY: 1, AD_KEY: 2}, repo_path=root)


def test_a_moved_data_directory_needs_a_new_apply(tmp_path, sample, monkeypatch):
    root = make_repo(tmp_path / "repo", sample)
    store.apply(root)
    shutil.copytree(root / "data", tmp_path / "elsewhere")
    monkeypatch.setenv("DEEPFM_DATA_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(
        SpecError,
        match=rf"^source '{EVENTS}' reads .*/repo/data/{EVENTS}.parquet in the Feast "
        r"registry .*, but features.yaml and the data directory give "
        rf".*/elsewhere/{EVENTS}.parquet",
    ):
        get_training_data(START, END, repo_path=root)
    store.apply(root)
    assert len(get_training_data(START, START + pd.Timedelta(hours=1), repo_path=root)) > 0


# ----------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2026-11-01", END, "window_start 2026-11-01 has no time zone"),
        (START, "2026-11-09T00:00", "window_end 2026-11-09T00:00 has no time zone"),
        ("next tuesday", END, "window_start 'next tuesday' is not a time"),
        (END, START, "window_start 2026-11-09 00:00:00\\+00:00 is not before window_end"),
        (
            START - pd.Timedelta(days=30),
            START - pd.Timedelta(days=29),
            r"no entity rows in \[2026-10-02 00:00:00\+00:00, 2026-10-03 00:00:00\+00:00\) "
            rf"in .*{EVENTS}.parquet \(its times: 2026-11-01 .* \.\. 2026-11-08 ",
        ),
    ],
)
def test_a_bad_window_fails_and_writes_nothing(repo, tmp_path, start, end, message):
    out = tmp_path / "train.parquet"
    with pytest.raises(FeatureStoreError, match=message):
        get_training_data(start, end, repo_path=repo, out=out)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda df: df.drop(columns=TS), f"no '{TS}' column"),
        (
            lambda df: df.assign(**{TS: df[TS].dt.tz_localize(None)}),
            rf"'{TS}' is datetime64\[ns\], not timezone-aware .*tz_localize",
        ),
        (
            lambda df: df.assign(**{TS: df[TS].astype(str)}),
            f"'{TS}' is object, not timezone-aware",
        ),
        (lambda df: df.drop(columns=AD_KEY), f"no '{AD_KEY}' column"),
        (
            lambda df: df.assign(**{USER_KEY: df[USER_KEY].astype("Int64").where(df.index != 3)}),
            f"'{USER_KEY}' has nulls",
        ),
        (lambda df: df.assign(**{PRICE: 1.0}), f"already have a '{PRICE}' column"),
        (lambda df: df.iloc[:0], "no entity rows"),
    ],
)
def test_bad_entity_rows_fail(repo, sample, change, message):
    entity = read(sample, EVENTS).head(100)
    with pytest.raises(FeatureStoreError, match=message):
        get_features(change(entity), repo_path=repo)


def test_a_missing_source_file_is_named(tmp_path, sample):
    root = make_repo(tmp_path / "repo", sample)
    store.apply(root)
    (root / "data" / f"{PROFILE_SOURCE}.parquet").unlink()
    out = tmp_path / "train.parquet"
    message = rf"source '{PROFILE_SOURCE}': .*/repo/data/{PROFILE_SOURCE}.parquet does not exist"
    with pytest.raises(SourceError, match=message):
        get_training_data(START, END, repo_path=root, out=out)
    assert not out.exists()
    with pytest.raises(SourceError, match=message):
        store.apply(root)


def test_bad_source_files_fail(tmp_path, sample):
    root = make_repo(tmp_path / "repo", sample)
    path = root / "data" / f"{AD_SOURCE}.parquet"
    ads = read(sample, AD_SOURCE)
    ads.assign(**{PRICE: ads[PRICE].astype(str)}).to_parquet(path)
    with pytest.raises(
        SpecError,
        match=rf"column '{PRICE}' of source '{AD_SOURCE}' is float64, but .* holds string",
    ):
        store.apply(root)
    ad_ts = SPEC.sources[AD_SOURCE].timestamp_field
    ads.assign(**{ad_ts: ads[ad_ts].dt.tz_localize(None)}).to_parquet(path)
    with pytest.raises(
        SourceError,
        match=rf"timestamp field '{ad_ts}' of .*{AD_SOURCE}.parquet is timestamp\[ns\], "
        "not a timestamp with a time zone",
    ):
        store.apply(root)
    path.write_text("not parquet")
    with pytest.raises(SourceError, match=f"{AD_SOURCE}.parquet is not a parquet file"):
        store.apply(root)


def test_a_repo_must_be_applied_and_configured(tmp_path, sample):
    root = make_repo(tmp_path / "repo", sample)
    with pytest.raises(
        FeatureStoreError,
        match=r"registry .*/data/registry.db has no feature views of project 'deepfm': "
        "run `deepfm features apply` first",
    ):
        get_training_data(START, END, repo_path=root)
    store.apply(root)
    with pytest.raises(FeatureStoreError, match=f"^{USER_KEY}: expected int64, got 'u7'"):
        store.online_features({USER_KEY: "u7", AD_KEY: 1}, repo_path=root)
    with pytest.raises(
        FeatureStoreError,
        match=rf"^missing entity keys: {AD_KEY} \(give every one of: {USER_KEY}, {AD_KEY}\)",
    ):
        store.online_features({USER_KEY: 7}, repo_path=root)
    with pytest.raises(
        FeatureStoreError, match=rf"^unknown entity key: uid \(valid: {USER_KEY}, {AD_KEY}\)"
    ):
        store.online_features({"uid": 7, AD_KEY: 1}, repo_path=root)
    with pytest.raises(
        FeatureStoreError, match=rf"^unknown context feature: page \(valid: {CONTEXT}\)"
    ):
        store.online_features({USER_KEY: 7, AD_KEY: 1}, {"page": 1}, repo_path=root)
    (root / "feature_store.yaml").unlink()
    with pytest.raises(FeatureStoreError, match=r"Feast config .*/repo/feature_store.yaml"):
        store.get_store(root)
    with pytest.raises(FeatureStoreError, match="is not a folder"):
        store.get_store(tmp_path / "nowhere")


# ------------------------------------------------------------------ the cloud profile

_STUB = '''class _Stub(type):
    """Any attribute is another stub class: enough for Feast's store modules to import."""

    def __getattr__(cls, name):
        return _Stub(name, (), {})


def __getattr__(name):
    return _Stub(name, (), {})
'''
_STUB_MODULES = (
    "google/cloud/bigquery/__init__.py",
    "google/cloud/bigquery/_pyarrow_helpers.py",
    "redis/__init__.py",
    "redis/asyncio.py",
    "redis/cluster.py",
    "redis/sentinel.py",
)
_LOAD_PROFILES = """
import json, sys
from pathlib import Path
sys.path.append(sys.argv[1])  # stubs last: an installed google-cloud-bigquery or redis wins
from feast.repo_config import load_repo_config
for profile in sys.argv[3:]:
    try:
        config = load_repo_config(Path(sys.argv[2]), Path(profile))
    except Exception as e:
        print(json.dumps({"error": str(e)}))
        continue
    print(json.dumps({
        "project": config.project, "provider": config.provider,
        "registry": config.registry.path,
        "offline": [type(config.offline_store).__name__, config.offline_store.host,
                    config.offline_store.port],
        "online": [type(config.online_store).__name__, config.online_store.connection_string],
        "entity_key_serialization_version": config.entity_key_serialization_version,
    }))
"""


def test_the_cloud_profile_is_a_valid_feast_config(tmp_path):
    """Loads feature_store.gcp.yaml through Feast's RepoConfig (pydantic: unknown keys are
    errors), without network. Where the store clients (google-cloud-bigquery, redis) are
    not installed, stub modules let Feast import its config classes."""
    for module in _STUB_MODULES:
        (tmp_path / "stubs" / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "stubs" / module).write_text(_STUB)
    profile = REPO_DIR / "feature_store.gcp.yaml"
    typo = tmp_path / "typo.yaml"
    typo.write_text(profile.read_text().replace("port: 8815", "prot: 8815"))
    env = os.environ | {
        "DEEPFM_GCP_PROJECT": "my-project",
        "DEEPFM_GCS_BUCKET": "my-bucket",
        "DEEPFM_REDIS_ADDRESS": "10.0.0.3:6379",
        "DEEPFM_FEAST_OFFLINE_HOST": "feast-offline.deepfm.svc",
    }
    argv = [sys.executable, "-c", _LOAD_PROFILES, str(tmp_path / "stubs"), str(REPO_DIR)]
    result = subprocess.run(
        [*argv, str(profile), str(typo)], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    loaded, broken = (json.loads(line) for line in result.stdout.splitlines())
    assert loaded == {
        "project": "deepfm",
        "provider": "local",
        "registry": "gs://my-bucket/feast/registry.db",
        "offline": ["RemoteOfflineStoreConfig", "feast-offline.deepfm.svc", 8815],
        "online": ["RedisOnlineStoreConfig", "10.0.0.3:6379"],
        "entity_key_serialization_version": 3,
    }
    assert "prot" in broken["error"]


# ------------------------------------------------------------------------------ CLI


def run_cli(*argv: str) -> None:
    parser = argparse.ArgumentParser(prog="deepfm")
    add_features_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["features", *argv])
    args.func(args)


def test_the_features_commands(tmp_path, sample, capsys):
    root = make_repo(tmp_path / "repo", sample)
    repo_flag = ["--repo", str(root)]
    run_cli("apply", *repo_flag)
    capsys.readouterr()  # what apply created
    out = tmp_path / "train.parquet"
    window = ["--start", "2026-11-01T00:00Z", "--end", "2026-11-02T00:00+00:00"]
    run_cli("training-data", *repo_flag, *window, "--out", str(out))
    summary = json.loads(capsys.readouterr().out)
    assert summary["rows"] == len(pd.read_parquet(out)) > 0
    assert summary["columns"] == load_spec().columns()

    run_cli("materialize", *repo_flag, "--start", "2026-07-01T00:00Z", "--end", "2026-11-05T00:00Z")
    run_cli("materialize", *repo_flag, "--incremental", "--end", "2026-11-09T00:00Z")
    capsys.readouterr()
    first = read(sample, EVENTS).iloc[0]
    user, ad = str(first[USER_KEY]), str(first[AD_KEY])
    keys = ["--entity", f"{USER_KEY}={user}", "--entity", f"{AD_KEY}={ad}"]
    run_cli("online", *repo_flag, *keys, "--context", f"{CONTEXT}={PIDS[1]}")
    captured = capsys.readouterr()
    vector = json.loads(captured.out)
    assert list(vector) == [c for c in load_spec().columns() if c not in (TS, LABEL)]
    assert vector[CONTEXT] == PIDS[1] and vector[PRICE] > 0
    assert vector[USER_KEY] == int(user)  # typed by the spec
    assert captured.err == ""

    run_cli("online", *repo_flag, "--entity", f"{USER_KEY}=0", "--entity", f"{AD_KEY}={ad}")
    captured = capsys.readouterr()
    assert json.loads(captured.out)[INT_PROFILE[0]] is None
    assert captured.err == f"no stored features for {USER_KEY}=0 (views: {PROFILE_VIEW})\n"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["training-data", "--start", "2026-11-01", "--end", "2026-11-02Z", "--out", "x"],
            "--start 2026-11-01 has no time zone",
        ),
        (["materialize", "--end", "2026-11-02T00:00Z"], "--start: required unless --incremental"),
        (
            ["materialize", "--incremental", "--start", "2026-11-01T00:00Z"],
            "--start: not allowed with --incremental",
        ),
        (
            ["online", "--entity", f"{USER_KEY}=1", "--repo", "/no/such/repo"],
            "feature repo /no/such/repo is not a folder",
        ),
        (["online", "--entity", USER_KEY], f"--entity '{USER_KEY}': expected KEY=VALUE"),
        (["online", "--context", "=web"], "--context '=web': expected KEY=VALUE"),
        (
            ["online", "--entity", f"{USER_KEY}=1", "--entity", f"{USER_KEY}=2"],
            f"--entity '{USER_KEY}=2': {USER_KEY} is given twice",
        ),
    ],
)
def test_bad_command_input_raises_a_value_error(argv, message):
    with pytest.raises(ValueError, match=message):
        run_cli(*argv)


# -------------------------------------------------------------------------- the model


def test_a_model_trained_on_feast_data_matches_the_flat_table(repo, sample):
    """Same config, seed and rows: DeepFM reaches the same eval AUC on Feast's training
    table as on the generator's flat table."""
    cfg = load_config(
        ROOT / "configs" / "deepfm.yaml",
        overrides={
            "model.deep.hidden_units": [32, 16],
            "train.batch_size": 512,
            "train.num_threads": 1,
        },
    )
    threads = torch.get_num_threads()
    try:
        aucs = []
        for table in (get_training_data(START, END, repo_path=repo), read(sample, "flat")):
            train_df, eval_df = time_split(table, TS, 0.2)
            aucs.append(train(cfg, train_df, eval_df, progress=False).metrics["auc"])
    finally:
        torch.set_num_threads(threads)
    assert aucs[0] > 0.6
    assert abs(aucs[0] - aucs[1]) < 0.005


@pytest.mark.slow
def test_a_million_impressions_take_seconds(tmp_path):
    root = tmp_path / "repo"
    generate(1_000_000, seed=0, out_dir=tmp_path / "sample")
    make_repo(root, tmp_path / "sample")
    store.apply(root)
    t0 = time.perf_counter()
    table = get_training_data(START, END, repo_path=root, out=tmp_path / "train.parquet")
    elapsed = time.perf_counter() - t0
    assert len(table) == 1_000_000
    assert elapsed < 30, f"{elapsed:.1f}s"
