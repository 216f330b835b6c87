"""Tests of the synthetic Taobao-like data generator (feature_repo/sample_data.py)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from feature_repo import sample_data
from feature_repo.sample_data import AD_FEATURES, PIDS, PROFILE_FEATURES, SCHEMAS, generate

ROWS = 20_000
START = pd.Timestamp("2026-11-01", tz="UTC")
DAYS = 8
TS = pd.DatetimeTZDtype("ns", "UTC")
INT_PROFILE = [name for name in PROFILE_FEATURES if name != "interest_cates"]

IMPRESSION_DTYPES = {
    "user_id": np.dtype("int64"),
    "adgroup_id": np.dtype("int64"),
    "pid": np.dtype("O"),
    "event_timestamp": TS,
    "clk": np.dtype("int64"),
}
PROFILE_DTYPES = {name: np.dtype("int64") for name in INT_PROFILE} | {
    "interest_cates": np.dtype("O")
}
AD_DTYPES = {name: np.dtype("int64") for name in AD_FEATURES[:-1]} | {"price": np.dtype("float64")}
EXPECTED_DTYPES = {
    "impressions": IMPRESSION_DTYPES,
    "user_profile": {"user_id": np.dtype("int64"), "event_timestamp": TS} | PROFILE_DTYPES,
    "ad_feature": {"adgroup_id": np.dtype("int64"), "event_timestamp": TS} | AD_DTYPES,
    "click_prob": {"p_click": np.dtype("float64")},
    "flat": IMPRESSION_DTYPES
    | {name: pd.Int64Dtype() for name in INT_PROFILE}
    | {"interest_cates": np.dtype("O")}
    | AD_DTYPES,
}
LEVELS = {
    "age_level": set(range(7)),
    "gender": {1, 2},
    "shopping_level": {1, 2, 3},
    "occupation": {0, 1},
    "city_level": {1, 2, 3, 4},
    "cms_segid": set(range(13)),
}


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Exact ROC AUC from average ranks (ties count one half)."""
    rank = pd.Series(score).rank().to_numpy()
    pos = np.asarray(label).astype(bool)
    n_pos, n_neg = pos.sum(), (~pos).sum()
    return float((rank[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return generate(ROWS, seed=0, out_dir=tmp_path_factory.mktemp("sample"))


@pytest.fixture(scope="module")
def frames(paths: dict[str, Path]) -> dict[str, pd.DataFrame]:
    return {name: pd.read_parquet(path) for name, path in paths.items()}


@pytest.fixture(scope="module")
def sample() -> sample_data._Sample:
    return sample_data._simulate(ROWS, 0, "2026-11-01", DAYS)


def _latest_profiles(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Each user's latest profile version regardless of time (a future-leaking lookup)."""
    profiles = frames["user_profile"].sort_values("event_timestamp", kind="stable")
    return profiles.groupby("user_id").tail(1).drop(columns="event_timestamp")


def test_files_and_schemas(paths: dict[str, Path], frames: dict[str, pd.DataFrame]) -> None:
    assert set(paths) == set(EXPECTED_DTYPES)
    for name, path in paths.items():
        assert path.name == f"{name}.parquet"
        assert pq.read_schema(path).remove_metadata().equals(SCHEMAS[name])
        assert frames[name].dtypes.to_dict() == EXPECTED_DTYPES[name], name
        assert list(frames[name].columns) == list(EXPECTED_DTYPES[name]), name
    for name in ("impressions", "click_prob", "flat"):
        assert len(frames[name]) == ROWS


def test_impressions(frames: dict[str, pd.DataFrame]) -> None:
    imp = frames["impressions"]
    ts = imp["event_timestamp"]
    assert ts.is_monotonic_increasing
    assert ts.min() >= START and ts.max() < START + pd.Timedelta(days=DAYS)
    assert set(imp["clk"].unique()) == {0, 1}
    assert 0.03 < imp["clk"].mean() < 0.08
    assert set(imp["pid"].unique()) == set(PIDS)
    assert 0.65 < (imp["pid"] == PIDS[0]).mean() < 0.75
    # long-tailed, non-contiguous ids
    for key in ("user_id", "adgroup_id"):
        counts = imp[key].value_counts()
        assert counts.iloc[0] > 20 * counts.median()
        assert imp[key].min() >= 1 and imp[key].max() > 100 * imp[key].nunique()
    p = frames["click_prob"]["p_click"]
    assert ((p > 0) & (p < 1)).all()
    assert abs(p.mean() - imp["clk"].mean()) < 0.01


def test_profiles_and_ads(frames: dict[str, pd.DataFrame]) -> None:
    profiles = frames["user_profile"]
    for name, levels in LEVELS.items():
        assert set(profiles[name].unique()) <= levels, name
    lengths = profiles["interest_cates"].map(len)
    assert lengths.min() == 1 and lengths.max() == 6
    assert (profiles["interest_cates"].map(lambda c: len(set(c))) == lengths).all()
    liked = pd.Series(np.concatenate(profiles["interest_cates"].to_list()))
    assert liked.value_counts().iloc[0] > 5 * liked.value_counts().median()  # long-tailed
    assert liked.isin(frames["ad_feature"]["cate_id"]).mean() > 0.9
    first = profiles.groupby("user_id")["event_timestamp"].min()
    assert 0.01 < (first >= START).mean() < 0.06  # ~3% of users only get a profile in the window
    versions = profiles.groupby("user_id").size()
    assert versions.max() == 2 and 0.12 < (versions == 2).mean() < 0.22

    ads = frames["ad_feature"]
    assert (ads["price"] > 0).all()
    assert ads.groupby("adgroup_id")[["cate_id", "campaign_id", "brand"]].nunique().max().max() == 1
    assert ads.groupby("campaign_id")["customer_id"].nunique().max() == 1
    assert 15 <= ads["cate_id"].nunique() <= 300
    first_ad = ads.groupby("adgroup_id")["event_timestamp"].min()
    assert (first_ad < START).all()
    assert ads["adgroup_id"].duplicated().any()  # some re-priced ads


def test_deterministic(tmp_path: Path, frames: dict[str, pd.DataFrame]) -> None:
    again = generate(ROWS, seed=0, out_dir=tmp_path / "a")
    other = generate(ROWS, seed=1, out_dir=tmp_path / "b")
    for name, path in again.items():
        pd.testing.assert_frame_equal(pd.read_parquet(path), frames[name])
    assert not pd.read_parquet(other["flat"]).equals(frames["flat"])
    assert not pd.read_parquet(other["user_profile"]).equals(frames["user_profile"])


def test_flat_is_the_as_of_join(frames: dict[str, pd.DataFrame]) -> None:
    imp, flat = frames["impressions"], frames["flat"]
    profiles, ads = frames["user_profile"], frames["ad_feature"]
    pd.testing.assert_frame_equal(flat[list(imp.columns)], imp)
    rng = np.random.default_rng(1)
    null_rows = np.flatnonzero(flat["age_level"].isna().to_numpy())
    for i in np.r_[rng.choice(len(flat), 300, replace=False), null_rows[:20]]:
        row = flat.iloc[i]
        ts = row["event_timestamp"]
        prof = profiles[profiles["user_id"] == row["user_id"]]
        prof = prof[prof["event_timestamp"] <= ts]
        ad = ads[(ads["adgroup_id"] == row["adgroup_id"]) & (ads["event_timestamp"] <= ts)]
        ad = ad.sort_values("event_timestamp").iloc[-1]
        for name in AD_FEATURES:
            assert row[name] == ad[name], (i, name)
        if prof.empty:
            assert all(pd.isna(row[name]) for name in INT_PROFILE), i
            assert row["interest_cates"] is None, i
            continue
        expected = prof.sort_values("event_timestamp").iloc[-1]
        for name in INT_PROFILE:
            assert row[name] == expected[name], (i, name)
        assert list(row["interest_cates"]) == list(expected["interest_cates"]), i


def test_missing_and_changing_profiles(frames: dict[str, pd.DataFrame]) -> None:
    flat, profiles = frames["flat"], frames["user_profile"]
    first = profiles.groupby("user_id")["event_timestamp"].min()
    before_first = flat["event_timestamp"].to_numpy() < first[flat["user_id"]].to_numpy()
    assert before_first.sum() > 50
    no_profile = flat[INT_PROFILE].isna().all(axis=1) & flat["interest_cates"].isna()
    assert (no_profile.to_numpy() == before_first).all()

    second = profiles[profiles["user_id"].duplicated()].set_index("user_id")["event_timestamp"]
    assert (second >= START).all()
    mine = flat[flat["user_id"].isin(second.index)]
    after = mine["event_timestamp"].to_numpy() >= second[mine["user_id"]].to_numpy()
    both_sides = pd.Series(after).groupby(mine["user_id"].to_numpy()).nunique() == 2
    assert both_sides.sum() > 50


def test_duplicate_impressions(frames: dict[str, pd.DataFrame]) -> None:
    keys = frames["impressions"][["user_id", "adgroup_id", "event_timestamp"]]
    assert keys.duplicated().sum() >= 3


def test_click_model(sample: sample_data._Sample) -> None:
    flat = sample.frames["flat"]
    clk = flat["clk"].to_numpy()
    p_click = sample.frames["click_prob"]["p_click"].to_numpy()
    logit = sample_data._click_logit(flat, sample.model)
    np.testing.assert_allclose(p_click, 1 / (1 + np.exp(-logit)), rtol=1e-12)
    bayes_auc = auc(p_click, clk)
    assert bayes_auc > 0.68

    # the same model fed a future-leaking join (each user's latest profile) is wrong exactly
    # on the impressions before a profile change or before the first profile, and worse
    leak = flat.drop(columns=list(PROFILE_FEATURES)).merge(
        _latest_profiles(sample.frames), on="user_id", how="left", validate="many_to_one"
    )[flat.columns]
    leak_p = 1 / (1 + np.exp(-sample_data._click_logit(leak, sample.model)))
    profiles = sample.frames["user_profile"]
    last = profiles.groupby("user_id")["event_timestamp"].max()
    stale = flat["event_timestamp"].to_numpy() < last[flat["user_id"]].to_numpy()
    differs = ~np.isclose(leak_p, p_click, rtol=1e-12, atol=0)
    assert not differs[~stale].any()
    assert differs[stale].mean() > 0.75
    assert stale.mean() > 0.05
    assert auc(leak_p, clk) < bayes_auc - 0.005


def test_click_logit_needs_known_ids(sample: sample_data._Sample) -> None:
    flat = sample.frames["flat"].head(5).copy()
    flat.loc[0, "adgroup_id"] = -1
    with pytest.raises(ValueError, match="unknown"):
        sample_data._click_logit(flat, sample.model)


@pytest.mark.parametrize(("kwargs", "word"), [({"rows": 99}, "rows"), ({"days": 0}, "days")])
def test_invalid_arguments(tmp_path: Path, kwargs: dict[str, int], word: str) -> None:
    args = {"rows": 1000, "out_dir": tmp_path} | kwargs
    with pytest.raises(ValueError, match=word):
        generate(**args)
    assert not list(tmp_path.iterdir())


def test_the_match_of_the_sample_is_the_generators_interest_match():
    """The shipped spec's interest_match is the true model's interest term, row for row."""
    from model.features import MatchEncoder
    from training.config import load_config

    flat = sample_data._simulate(3000, 3, "2026-11-01", 2).frames["flat"]
    cfg = load_config(Path(__file__).parents[1] / "configs" / "deepfm.yaml")
    rows = MatchEncoder(cfg.feature("interest_match")).transform_single(flat)
    truth = sample_data._interest_match(flat["interest_cates"], flat["cate_id"].to_numpy())
    known = flat["interest_cates"].notna().to_numpy()
    assert 0.05 < truth.mean() < 0.95 and 0 < (~known).sum() < len(flat)
    assert np.array_equal(rows[known], np.where(truth[known], 2, 1))
    assert (rows[~known] == 0).all()
