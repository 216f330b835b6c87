"""Synthetic Taobao-like ad-click data with a known click model.

``generate(rows, seed, out_dir)`` writes five parquet files that mimic the public Taobao
display-advertising data set (raw_sample / user_profile / ad_feature):

- ``impressions.parquet``: ``user_id, adgroup_id, pid, event_timestamp, clk``; one row per ad
  impression, sorted by time, spread uniformly over ``[start, start + days)``. A few hundred
  rows per million repeat the ``(user_id, adgroup_id, event_timestamp)`` of another row.
- ``user_profile.parquet``: ``user_id, event_timestamp`` and the profile features (see
  ``PROFILE_FEATURES``); one row per profile *version*. Most users get their first version
  before ``start``; about 3% only during the window, and about 17% get a second version
  during the window (new interests, mostly a new shopping level, sometimes a new age or city
  level), so the profile valid at an impression depends on the impression's time.
- ``ad_feature.parquet``: ``adgroup_id, event_timestamp`` and the ad features (see
  ``AD_FEATURES``); one version per ad before ``start``, about 5% of ads get a new price
  during the window. Hierarchy customer -> campaign -> adgroup; an ad's category is its
  campaign's, its brand its customer's.
- ``click_prob.parquet``: ``p_click``, the true click probability of each impression (same
  row order as the impressions), from which ``clk`` was drawn.
- ``flat.parquet``: the point-in-time-correct training table: the impression columns, then
  the profile and ad features valid at the impression time (same row order as the
  impressions). Profile features are null where the user had no profile yet.

Clicks follow a known logit of the features as of the impression time (``_click_logit``):
first-order terms (user, ad, pid, category, age/gender/shopping level), FM-style pairwise
interactions between the user-side fields and (category, brand, pid), a boost when the ad's
category is among the user's interests and a penalty for prices above what the user's
shopping level affords; the intercept makes the mean click probability 5%. Joining a
profile valid later than the impression therefore gives measurably worse click
probabilities. All timestamps are ``datetime64[ns, UTC]``; ids are distinct random integers
in ``[1, 10**7]``; the output is a deterministic function of ``(rows, seed, start, days)``.
"""

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

PIDS = ("430548_1007", "430539_1007")
"""The two ad positions (Taobao's ``pid``), the first shown ~70% of the time."""

PROFILE_FEATURES = (
    "age_level",
    "gender",
    "shopping_level",
    "occupation",
    "city_level",
    "cms_segid",
    "interest_cates",
)
"""User profile features, in file order (``interest_cates`` is a list of category ids)."""

AD_FEATURES = ("cate_id", "campaign_id", "customer_id", "brand", "price")
"""Ad features, in file order."""

_TS = pa.timestamp("ns", tz="UTC")
_IMPRESSION_FIELDS = [
    ("user_id", pa.int64()),
    ("adgroup_id", pa.int64()),
    ("pid", pa.string()),
    ("event_timestamp", _TS),
    ("clk", pa.int64()),
]
_PROFILE_FIELDS = [(name, pa.int64()) for name in PROFILE_FEATURES[:-1]] + [
    ("interest_cates", pa.list_(pa.int64()))
]
_AD_FIELDS = [(name, pa.int64()) for name in AD_FEATURES[:-1]] + [("price", pa.float64())]

SCHEMAS: dict[str, pa.Schema] = {
    "impressions": pa.schema(_IMPRESSION_FIELDS),
    "user_profile": pa.schema(
        [("user_id", pa.int64()), ("event_timestamp", _TS), *_PROFILE_FIELDS]
    ),
    "ad_feature": pa.schema([("adgroup_id", pa.int64()), ("event_timestamp", _TS), *_AD_FIELDS]),
    "click_prob": pa.schema([("p_click", pa.float64())]),
    "flat": pa.schema(_IMPRESSION_FIELDS + _PROFILE_FIELDS + _AD_FIELDS),
}
"""Arrow schema of each written file, keyed by the file's stem."""

# value -> probability of each integer profile field (Taobao-like marginals)
_LEVELS: dict[str, tuple[np.ndarray, np.ndarray]] = {
    "age_level": (np.arange(7), np.array([0.02, 0.12, 0.26, 0.30, 0.18, 0.09, 0.03])),
    "gender": (np.array([1, 2]), np.array([0.38, 0.62])),
    "shopping_level": (np.array([1, 2, 3]), np.array([0.12, 0.30, 0.58])),
    "occupation": (np.array([0, 1]), np.array([0.93, 0.07])),
    "city_level": (np.array([1, 2, 3, 4]), np.array([0.12, 0.30, 0.33, 0.25])),
    "cms_segid": (np.arange(13), np.r_[0.52, np.full(12, 0.04)]),
}
_INT_PROFILE_FEATURES = tuple(_LEVELS)
_MAX_INTERESTS = 6
_TARGET_CTR = 0.05
_LATENT_DIM = 6
_MAX_ID = 10**7
_DAY_S = 86_400
_NS = 1_000_000_000


@dataclass(frozen=True, eq=False)
class ClickModel:
    """Parameters of the true click model; see ``_click_logit`` for the formula.

    Id-keyed tables are aligned with a sorted id array (``*_ids``, shape ``(n,)``). Level
    tables are indexed by the level value (``level_bias["age_level"][3]`` is the effect of
    age level 3). Latent vectors have ``_LATENT_DIM`` components; ``pid_*`` rows follow
    ``PIDS``. Price terms are in log-RMB. ``b0`` is set so that the mean click probability
    over the generated impressions is ``_TARGET_CTR``.
    """

    b0: float
    user_ids: np.ndarray
    user_bias: np.ndarray
    ad_ids: np.ndarray
    ad_quality: np.ndarray
    cate_ids: np.ndarray
    cate_bias: np.ndarray
    cate_vec: np.ndarray
    brand_ids: np.ndarray
    brand_vec: np.ndarray
    pid_bias: np.ndarray
    pid_vec: np.ndarray
    level_bias: dict[str, np.ndarray]
    level_vec: dict[str, np.ndarray]
    interest_boost: float
    price_slope: float
    price_pivot: float
    price_per_level: float


@dataclass(frozen=True)
class _Sample:
    """Everything ``generate`` writes (keyed by file stem) plus the click model used."""

    frames: dict[str, pd.DataFrame]
    model: ClickModel


def generate(
    rows: int,
    seed: int = 0,
    out_dir: str | Path = "data/sample",
    *,
    start: str = "2026-11-01",
    days: int = 8,
) -> dict[str, Path]:
    """Write a synthetic Taobao-like click data set as parquet files.

    Args:
        rows: number of impressions (>= 100).
        seed: seed of the ``numpy`` PCG64 generator; equal arguments give equal files.
        out_dir: directory to write into (created if missing).
        start: first day of the impression window (UTC unless the string has an offset).
        days: length of the impression window in days (>= 1).

    Returns:
        ``{"impressions", "user_profile", "ad_feature", "click_prob", "flat"}`` -> the path
        of each written ``<name>.parquet``.

    Raises:
        ValueError: if ``rows < 100`` or ``days < 1``.
    """
    sample = _simulate(rows, seed, start, days)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frame in sample.frames.items():
        paths[name] = out / f"{name}.parquet"
        table = pa.Table.from_pandas(frame, schema=SCHEMAS[name], preserve_index=False)
        pq.write_table(table, paths[name])
    return paths


def _simulate(rows: int, seed: int, start: str, days: int) -> _Sample:
    """Generate all tables in memory; see the module docstring for their contents."""
    if rows < 100:
        raise ValueError(f"rows must be >= 100, got {rows}")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    rng = np.random.Generator(np.random.PCG64(seed))
    t0 = pd.Timestamp(start)
    t0_ns = (t0.tz_localize("UTC") if t0.tz is None else t0.tz_convert("UTC")).value
    window_s = days * _DAY_S

    # category ids, the i-th the i-th most popular (for ads and for interests alike)
    cate_ids = _distinct_ids(rng, int(np.clip(rows // 2500, 20, 300)))
    ads = _make_ads(rng, max(40, rows // 25), cate_ids, t0_ns, window_s)
    profiles = _make_profiles(rng, max(50, rows // 15), cate_ids, t0_ns, window_s)
    impressions = _make_impressions(
        rng, rows, profiles["user_id"].unique(), ads["adgroup_id"].unique(), t0_ns, window_s
    )
    flat = point_in_time_join(impressions, profiles, ads)
    model = _make_click_model(rng, profiles, ads, cate_ids)
    logit = _click_logit(flat, model)  # b0 == 0 here: calibrate it to the target CTR
    model = replace(model, b0=intercept_for_rate(logit, _TARGET_CTR))
    p_click = sigmoid(logit + model.b0)
    clk = (rng.random(rows) < p_click).astype(np.int64)
    impressions["clk"] = clk
    flat.insert(flat.columns.get_loc("event_timestamp") + 1, "clk", clk)
    frames = {
        "impressions": impressions,
        "user_profile": profiles,
        "ad_feature": ads,
        "click_prob": pd.DataFrame({"p_click": p_click}),
        "flat": flat,
    }
    return _Sample(frames, model)


def _zipf(n: int, alpha: float) -> np.ndarray:
    """Long-tailed probabilities, shape ``(n,)``: ``p[i]`` proportional to ``(i + 1) ** -alpha``."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -alpha
    return w / w.sum()


def _distinct_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` distinct random ids in ``[1, _MAX_ID]``, int64, shape ``(n,)``."""
    return rng.choice(_MAX_ID, size=n, replace=False).astype(np.int64) + 1


def _to_ts(ns: np.ndarray) -> pd.DatetimeIndex:
    """Nanoseconds since the epoch -> ``datetime64[ns, UTC]``."""
    return pd.DatetimeIndex(ns.astype("datetime64[ns]")).tz_localize("UTC")


def _make_ads(
    rng: np.random.Generator, n_ads: int, cate_ids: np.ndarray, t0_ns: int, window_s: int
) -> pd.DataFrame:
    """The ``ad_feature`` table, sorted by ``(adgroup_id, event_timestamp)``.

    Customers own campaigns, campaigns own adgroups (both long-tailed). A campaign
    advertises one category, a customer one brand. Prices are log-normal around a
    per-category level (RMB). Each ad has a version 1..90 days before ``t0``; ~5% get a
    re-priced version inside the window.
    """
    n_customers = max(5, n_ads // 4)
    n_campaigns = max(10, n_ads // 3)
    n_brands = int(np.clip(n_ads // 10, 10, 5000))
    customer_ids = _distinct_ids(rng, n_customers)
    campaign_ids = _distinct_ids(rng, n_campaigns)
    brand_ids = _distinct_ids(rng, n_brands)
    n_cates = len(cate_ids)
    cate_log_price = rng.normal(4.6, 0.8, n_cates)

    campaign_customer = rng.choice(n_customers, n_campaigns, p=_zipf(n_customers, 0.8))
    campaign_cate = rng.choice(n_cates, n_campaigns, p=_zipf(n_cates, 1.0))
    customer_brand = brand_ids[rng.choice(n_brands, n_customers, p=_zipf(n_brands, 0.7))]
    ad_campaign = rng.choice(n_campaigns, n_ads, p=_zipf(n_campaigns, 0.7))
    ad_cate = campaign_cate[ad_campaign]
    log_price = cate_log_price[ad_cate] + rng.normal(0.0, 0.7, n_ads)
    base = pd.DataFrame(
        {
            "adgroup_id": _distinct_ids(rng, n_ads),
            "event_timestamp": t0_ns - rng.integers(_DAY_S, 90 * _DAY_S, n_ads) * _NS,
            "cate_id": cate_ids[ad_cate],
            "campaign_id": campaign_ids[ad_campaign],
            "customer_id": customer_ids[campaign_customer[ad_campaign]],
            "brand": customer_brand[campaign_customer[ad_campaign]],
            "price": np.maximum(np.round(np.exp(log_price), 2), 0.01),
        }
    )
    repriced = base[rng.random(n_ads) < 0.05].copy()
    repriced["event_timestamp"] = t0_ns + rng.integers(0, window_s, len(repriced)) * _NS
    factor = np.exp(rng.normal(0.0, 0.5, len(repriced)))
    repriced["price"] = np.maximum(np.round(repriced["price"].to_numpy() * factor, 2), 0.01)
    ads = pd.concat([base, repriced], ignore_index=True)
    ads = ads.sort_values(["adgroup_id", "event_timestamp"], ignore_index=True)
    ads["event_timestamp"] = _to_ts(ads["event_timestamp"].to_numpy())
    return ads


def _draw_interests(rng: np.random.Generator, n: int, cate_ids: np.ndarray) -> pa.ListArray:
    """``n`` lists of 1..6 distinct ``cate_ids``, drawn by category popularity."""
    n_cates = len(cate_ids)
    length = rng.integers(1, _MAX_INTERESTS + 1, n)
    cand = rng.choice(n_cates, (n, _MAX_INTERESTS), p=_zipf(n_cates, 1.0))
    keep = np.arange(_MAX_INTERESTS) < length[:, None]
    for j in range(1, _MAX_INTERESTS):
        keep[:, j] &= ~(cand[:, :j] == cand[:, j : j + 1]).any(axis=1)
    offsets = np.r_[0, np.cumsum(keep.sum(axis=1))].astype(np.int32)
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(cate_ids[cand[keep]]))


def _make_profiles(
    rng: np.random.Generator, n_users: int, cate_ids: np.ndarray, t0_ns: int, window_s: int
) -> pd.DataFrame:
    """The ``user_profile`` table, sorted by ``(user_id, event_timestamp)``.

    First versions are dated 1..60 days before ``t0``, except ~3% of users whose first
    version falls inside the window. ~17% of the other users get a second version in the
    middle 60% of the window: new interests, a new shopping level (70%), age level (35%,
    +-1) or city level (10%).
    """
    user_ids = _distinct_ids(rng, n_users)
    first = {name: rng.choice(values, n_users, p=p) for name, (values, p) in _LEVELS.items()}
    late = rng.random(n_users) < 0.03
    first_s = np.where(
        late,
        rng.integers(0, window_s, n_users),
        -rng.integers(_DAY_S, 60 * _DAY_S, n_users),
    )
    interests = _draw_interests(rng, n_users, cate_ids)

    changed = np.flatnonzero(~late & (rng.random(n_users) < 0.17))
    n_changed = len(changed)
    second = {name: values[changed] for name, values in first.items()}
    shop = second["shopping_level"]
    second["shopping_level"] = np.where(
        rng.random(n_changed) < 0.7, (shop + rng.integers(0, 2, n_changed)) % 3 + 1, shop
    )
    age = second["age_level"] + rng.choice([-1, 1], n_changed) * (rng.random(n_changed) < 0.35)
    second["age_level"] = np.where(age < 0, 1, np.where(age > 6, 5, age))
    city = second["city_level"]
    second["city_level"] = np.where(
        rng.random(n_changed) < 0.1, (city + rng.integers(0, 3, n_changed)) % 4 + 1, city
    )
    second_s = (0.2 * window_s + rng.integers(0, int(0.6 * window_s), n_changed)).astype(np.int64)
    second_interests = _draw_interests(rng, n_changed, cate_ids)

    profiles = pd.DataFrame(
        {
            "user_id": np.r_[user_ids, user_ids[changed]],
            "event_timestamp": t0_ns + np.r_[first_s, second_s] * _NS,
            **{name: np.r_[first[name], second[name]] for name in _INT_PROFILE_FEATURES},
        }
    )
    order = np.lexsort((profiles["event_timestamp"].to_numpy(), profiles["user_id"].to_numpy()))
    profiles = profiles.iloc[order].reset_index(drop=True)
    profiles["event_timestamp"] = _to_ts(profiles["event_timestamp"].to_numpy())
    all_interests = pa.concat_arrays([interests, second_interests])
    profiles["interest_cates"] = all_interests.take(pa.array(order)).to_pandas().to_numpy()
    return profiles


def _make_impressions(
    rng: np.random.Generator,
    rows: int,
    user_ids: np.ndarray,
    ad_ids: np.ndarray,
    t0_ns: int,
    window_s: int,
) -> pd.DataFrame:
    """The ``impressions`` table without ``clk``, sorted by ``event_timestamp``.

    Users and ads are drawn with long-tailed popularity, times uniformly over the window
    at one-second resolution; ``rows // 4000`` (at least 2) rows copy the user, ad and time
    of another row.
    """
    user = user_ids[rng.choice(len(user_ids), rows, p=_zipf(len(user_ids), 0.6))]
    ad = ad_ids[rng.choice(len(ad_ids), rows, p=_zipf(len(ad_ids), 0.8))]
    ts = t0_ns + rng.integers(0, window_s, rows) * _NS
    pid = np.where(rng.random(rows) < 0.7, PIDS[0], PIDS[1]).astype(object)
    n_dup = max(2, rows // 4000)
    src, dst = rng.choice(rows, 2 * n_dup, replace=False).reshape(2, n_dup)
    user[dst], ad[dst], ts[dst] = user[src], ad[src], ts[src]
    order = np.argsort(ts, kind="stable")
    return pd.DataFrame(
        {
            "user_id": user[order],
            "adgroup_id": ad[order],
            "pid": pid[order],
            "event_timestamp": _to_ts(ts[order]),
        }
    )


def _make_click_model(
    rng: np.random.Generator, profiles: pd.DataFrame, ads: pd.DataFrame, cate_ids: np.ndarray
) -> ClickModel:
    """Draw the click model's parameters for the given users, ads and categories."""
    user_ids = np.unique(profiles["user_id"].to_numpy())
    ad_ids = np.unique(ads["adgroup_id"].to_numpy())
    brand_ids = np.unique(ads["brand"].to_numpy())
    n_cates = len(cate_ids)
    cate_order = np.argsort(cate_ids)

    def latent(n: int) -> np.ndarray:
        return rng.normal(0.0, 0.23, (n, _LATENT_DIM))

    return ClickModel(
        b0=0.0,
        user_ids=user_ids,
        user_bias=rng.normal(0.0, 0.2, len(user_ids)),
        ad_ids=ad_ids,
        ad_quality=rng.normal(0.0, 0.4, len(ad_ids)),
        cate_ids=cate_ids[cate_order],
        cate_bias=rng.normal(0.0, 0.3, n_cates)[cate_order],
        cate_vec=latent(n_cates)[cate_order],
        brand_ids=brand_ids,
        brand_vec=latent(len(brand_ids)),
        pid_bias=np.array([0.1, -0.25]),
        pid_vec=latent(len(PIDS)),
        level_bias={
            name: rng.normal(0.0, 0.2, _LEVELS[name][0].max() + 1)
            for name in ("age_level", "gender", "shopping_level")
        },
        level_vec={name: latent(values.max() + 1) for name, (values, _) in _LEVELS.items()},
        interest_boost=1.6,
        price_slope=1.0,
        price_pivot=3.0,
        price_per_level=0.8,
    )


def _index_of(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` in ``sorted_ids``; ValueError if any id is unknown."""
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    if not np.array_equal(sorted_ids[pos], ids):
        raise ValueError("ids unknown to the click model")
    return pos


def _interest_match(interests: pd.Series, cate_id: np.ndarray) -> np.ndarray:
    """Whether each row's ``cate_id`` is in its ``interests`` list (False for null), bool."""
    lists = pa.array(interests, type=pa.list_(pa.int64()), from_pandas=True)
    parent = pc.list_parent_indices(lists).to_numpy()
    values = pc.list_flatten(lists).to_numpy()
    match = np.zeros(len(cate_id), dtype=bool)
    match[parent[values == cate_id[parent]]] = True
    return match


def _click_logit(flat: pd.DataFrame, model: ClickModel) -> np.ndarray:
    """The true click logit of each row of a flat table, float64, shape ``(len(flat),)``.

    ``logit = user_bias[user] + ad_quality[ad] + pid_bias[pid] + cate_bias[cate]
    + sum over f in (age, gender, shopping) of level_bias[f][level_f]
    + <sum_f level_vec[f][level_f], cate_vec[cate] + brand_vec[brand] + pid_vec[pid]>
    + interest_boost * [cate in interest_cates]
    - price_slope * max(0, log(price) - price_pivot - price_per_level * shopping_level) + b0``,
    where ``f`` in the dot product ranges over the six integer profile fields. A null profile
    field contributes 0 to every term it appears in.
    """
    pid = (flat["pid"].to_numpy() == PIDS[1]).astype(np.intp)
    cate = _index_of(model.cate_ids, flat["cate_id"].to_numpy())
    ad_vec = (
        model.cate_vec[cate]
        + model.brand_vec[_index_of(model.brand_ids, flat["brand"].to_numpy())]
        + model.pid_vec[pid]
    )
    logit = (
        model.user_bias[_index_of(model.user_ids, flat["user_id"].to_numpy())]
        + model.ad_quality[_index_of(model.ad_ids, flat["adgroup_id"].to_numpy())]
        + model.pid_bias[pid]
        + model.cate_bias[cate]
    )
    for name in _INT_PROFILE_FEATURES:
        known = flat[name].notna().to_numpy()
        level = flat[name].to_numpy(dtype=np.int64, na_value=0)
        logit += known * (model.level_vec[name][level] * ad_vec).sum(axis=1)
        if name in model.level_bias:
            logit += known * model.level_bias[name][level]
    logit += model.interest_boost * _interest_match(
        flat["interest_cates"], flat["cate_id"].to_numpy()
    )
    shopping = flat["shopping_level"]
    excess = (
        np.log(flat["price"].to_numpy())
        - model.price_pivot
        - model.price_per_level * shopping.to_numpy(dtype=np.float64, na_value=np.nan)
    )
    logit -= model.price_slope * np.where(shopping.notna().to_numpy(), np.maximum(excess, 0), 0)
    return logit + model.b0


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function, elementwise."""
    return 1.0 / (1.0 + np.exp(-x))


def intercept_for_rate(logit: np.ndarray, rate: float) -> float:
    """The ``b`` with ``mean(sigmoid(logit + b)) == rate`` (bisection, to ~1e-9)."""
    lo, hi = -30.0, 30.0
    for _ in range(40):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if sigmoid(logit + mid).mean() < rate else (lo, mid)
    return 0.5 * (lo + hi)


def point_in_time_join(
    impressions: pd.DataFrame, profiles: pd.DataFrame, ads: pd.DataFrame
) -> pd.DataFrame:
    """Attach to each impression the profile and ad versions valid at its time.

    For each impression the latest ``profiles`` row of its user with
    ``event_timestamp <= impression.event_timestamp`` is taken (likewise the latest ``ads``
    row of its adgroup). Returns the impression columns, then ``PROFILE_FEATURES`` (integer
    ones as nullable ``Int64``; ``interest_cates`` None where no profile is valid yet), then
    ``AD_FEATURES``, in the impressions' row order and index ``0..n-1``. The feature
    sources' timestamps are dropped.

    Raises:
        ValueError: if an impression's ad has no version at or before the impression.
    """
    left = impressions.reset_index(drop=True)
    left["_row"] = np.arange(len(left))
    left = left.sort_values("event_timestamp", kind="stable")
    prof = profiles.drop(columns="interest_cates").astype(
        {name: "Int64" for name in _INT_PROFILE_FEATURES}
    )
    prof["_profile_row"] = np.arange(len(prof))
    asof = {"on": "event_timestamp", "direction": "backward", "allow_exact_matches": True}
    prof = prof.sort_values("event_timestamp", kind="stable")
    flat = pd.merge_asof(left, prof, by="user_id", **asof)
    ads = ads.sort_values("event_timestamp", kind="stable")
    flat = pd.merge_asof(flat, ads, by="adgroup_id", **asof)
    if flat["price"].isna().any():
        raise ValueError("some impressions have no ad_feature row at or before their time")
    flat = flat.sort_values("_row").reset_index(drop=True)
    profile_row = flat["_profile_row"].to_numpy(dtype=np.float64, na_value=np.nan)
    missing = np.isnan(profile_row)
    take = pa.array(np.where(missing, 0, profile_row).astype(np.int64), mask=missing)
    lists = pa.array(profiles["interest_cates"], type=pa.list_(pa.int64()), from_pandas=True)
    flat["interest_cates"] = lists.take(take).to_pandas().to_numpy()
    columns = [*impressions.columns, *PROFILE_FEATURES, *AD_FEATURES]
    return flat[columns]
