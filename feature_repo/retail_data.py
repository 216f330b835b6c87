"""Synthetic retail purchase data with a known purchase model: the ``retail`` example.

A second example dataset, shaped unlike the ad-click sample (``sample_data.py``): three
entities keyed by string and integer ids, a string request context, nullable integers,
booleans, floats with missing values and list columns. Its feature spec is
``retail_features.yaml``; ``deepfm data generate --dataset retail --out DIR`` makes DIR a
feature repo holding that spec and this data under ``DIR/data/``.

``generate(rows, seed, out_dir)`` writes six parquet files:

- ``visits.parquet``: ``customer_id, product_id, store_id, channel, visit_ts, purchased``;
  one row per product view of a customer, sorted by time, spread uniformly over
  ``[start, start + days)``. ``customer_id`` is a string (``"c000123"``), ``product_id``
  a string (``"p00042"``), ``store_id`` an int64; ``channel`` (``web``, ``app`` or
  ``in_store``) is request context; ``purchased`` (0/1) the label.
- ``customers.parquet``: ``customer_id, updated_at, age, segment, is_member, interests``;
  one row per profile version. First versions are dated 10..60 days before ``start``,
  except ~3% of customers whose first version falls inside the window; ~20% of the others
  get a second version inside the window (new interests, mostly a membership, sometimes a
  new segment). ``age`` is a nullable int64 (~10% of customers never give it),
  ``is_member`` a bool, ``interests`` a list of 1..5 topic ids.
- ``products.parquet``: ``product_id, updated_at, category, brand, price, launch_year,
  tags``; one version 30..120 days before ``start``, ~30% of products re-priced 1..29 days
  before it and ~8% re-priced inside the window. ``price`` is missing on ~5% of versions,
  ``launch_year`` (nullable int64) on ~10% of products; ``tags`` lists 1..4 topic ids,
  mostly topics of the product's category.
- ``stores.parquet``: ``store_id, updated_at, region, floor_area``; one version 30..300
  days before ``start``, ~10% of stores refitted (a new floor area) inside the window.
- ``flat.parquet``: the point-in-time-correct training table: the visit columns, then the
  customer, product and store features valid at the visit time (``FEATURES`` order), in
  the visits' row order. Customer features are null where the customer had no profile yet.
- ``truth.parquet``: ``true_prob``, the true purchase probability of each visit (same row
  order), from which ``purchased`` was drawn.

Purchases follow a known logit of the features as of the visit time (``_purchase_logit``):
per-id biases, a segment x category table, a boost per topic shared by the customer's
interests and the product's tags, a channel effect, a price x age term (young customers
shy away from expensive products, older ones less so), membership, recency of launch and
floor area for in-store visits; missing values contribute nothing. The intercept makes the
mean purchase probability ``_TARGET_RATE``. The AUC of the true probabilities (the Bayes
AUC: no model of these features can rank better, in expectation) is returned with the
paths. All timestamps are ``datetime64[ns, UTC]``; the output is a deterministic function
of ``(rows, seed, start, days)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from feature_repo.sample_data import intercept_for_rate, sigmoid

CHANNELS = ("web", "app", "in_store")
"""Request contexts of a visit, drawn with probabilities 0.45, 0.35, 0.2."""

SEGMENTS = ("budget", "family", "premium", "student", "professional")
CATEGORIES = (
    "grocery",
    "electronics",
    "fashion",
    "home",
    "beauty",
    "sports",
    "toys",
    "books",
    "garden",
    "automotive",
)
REGIONS = ("north", "south", "east", "west", "central")
N_TOPICS = 48
"""Topic ids ``1..N_TOPICS`` shared by customers' ``interests`` and products' ``tags``."""

CUSTOMER_FEATURES = ("age", "segment", "is_member", "interests")
PRODUCT_FEATURES = ("category", "brand", "price", "launch_year", "tags")
STORE_FEATURES = ("region", "floor_area")
FEATURES = (*CUSTOMER_FEATURES, *PRODUCT_FEATURES, *STORE_FEATURES)
"""The view features of the flat table, in file order."""

SPEC_PATH = Path(__file__).resolve().with_name("retail_features.yaml")
"""The dataset's feature spec (written as a repo's ``features.yaml``)."""

_TS = pa.timestamp("ns", tz="UTC")
_VISIT_FIELDS = [
    ("customer_id", pa.string()),
    ("product_id", pa.string()),
    ("store_id", pa.int64()),
    ("channel", pa.string()),
    ("visit_ts", _TS),
    ("purchased", pa.int64()),
]
_CUSTOMER_FIELDS = [
    ("age", pa.int64()),
    ("segment", pa.string()),
    ("is_member", pa.bool_()),
    ("interests", pa.list_(pa.int64())),
]
_PRODUCT_FIELDS = [
    ("category", pa.string()),
    ("brand", pa.string()),
    ("price", pa.float64()),
    ("launch_year", pa.int64()),
    ("tags", pa.list_(pa.int64())),
]
_STORE_FIELDS = [("region", pa.string()), ("floor_area", pa.float64())]

SCHEMAS: dict[str, pa.Schema] = {
    "visits": pa.schema(_VISIT_FIELDS),
    "customers": pa.schema([("customer_id", pa.string()), ("updated_at", _TS), *_CUSTOMER_FIELDS]),
    "products": pa.schema([("product_id", pa.string()), ("updated_at", _TS), *_PRODUCT_FIELDS]),
    "stores": pa.schema([("store_id", pa.int64()), ("updated_at", _TS), *_STORE_FIELDS]),
    "flat": pa.schema(_VISIT_FIELDS + _CUSTOMER_FIELDS + _PRODUCT_FIELDS + _STORE_FIELDS),
    "truth": pa.schema([("true_prob", pa.float64())]),
}
"""Arrow schema of each written file, keyed by the file's stem."""

_TARGET_RATE = 0.06
_DAY_S = 86_400
_NS = 1_000_000_000
_MAX_INTERESTS = 5
_MAX_TAGS = 4


@dataclass(frozen=True, eq=False)
class PurchaseModel:
    """Parameters of the true purchase model; see ``_purchase_logit`` for the formula.

    Id-keyed biases are aligned with a sorted id array (``*_ids``). ``seg_cat[s, c]`` is the
    effect of segment ``SEGMENTS[s]`` on category ``CATEGORIES[c]``; ``channel_bias`` and
    ``region_bias`` follow ``CHANNELS`` and ``REGIONS``. Price terms are in log units.
    """

    b0: float
    customer_ids: np.ndarray
    customer_bias: np.ndarray
    product_ids: np.ndarray
    product_bias: np.ndarray
    store_ids: np.ndarray
    store_bias: np.ndarray
    seg_cat: np.ndarray
    channel_bias: np.ndarray
    region_bias: np.ndarray
    overlap_boost: float = 0.55
    member_boost: float = 0.35
    price_slope: float = 0.45
    price_age: float = 0.5
    log_price_mean: float = 3.6
    launch_slope: float = 0.05
    floor_slope: float = 0.4


def generate(
    rows: int,
    seed: int = 0,
    out_dir: str | Path = "data/retail",
    *,
    start: str = "2026-11-01",
    days: int = 8,
) -> dict:
    """Write the synthetic retail data set as parquet files.

    Args:
        rows: number of visits (>= 100).
        seed: seed of the ``numpy`` PCG64 generator; equal arguments give equal files.
        out_dir: directory to write into (created if missing).
        start: first day of the visit window (UTC unless the string has an offset).
        days: length of the visit window in days (>= 1).

    Returns:
        A summary: ``{"paths": {stem: Path of <stem>.parquet}, "rows", "customers",
        "products", "stores", "purchase_rate", "bayes_auc", "start", "end"}`` (``bayes_auc``
        is the AUC of ``truth.parquet``'s ``true_prob`` against ``purchased``; ``start``
        and ``end`` the visit window, ISO 8601).

    Raises:
        ValueError: if ``rows < 100`` or ``days < 1``.
    """
    frames, _ = _simulate(rows, seed, start, days)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, frame in frames.items():
        paths[name] = out / f"{name}.parquet"
        table = pa.Table.from_pandas(frame, schema=SCHEMAS[name], preserve_index=False)
        pq.write_table(table, paths[name])
    visits = frames["visits"]
    t0 = _utc(start)
    return {
        "paths": paths,
        "rows": len(visits),
        "customers": int(frames["customers"]["customer_id"].nunique()),
        "products": int(frames["products"]["product_id"].nunique()),
        "stores": int(frames["stores"]["store_id"].nunique()),
        "purchase_rate": float(visits["purchased"].mean()),
        "bayes_auc": auc(visits["purchased"].to_numpy(), frames["truth"]["true_prob"].to_numpy()),
        "start": t0.isoformat(),
        "end": (t0 + pd.Timedelta(days=days)).isoformat(),
    }


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC of ``scores`` for binary ``labels`` (ties count one half)."""
    labels = np.asarray(labels).astype(bool)
    n_pos, n_neg = int(labels.sum()), int((~labels).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = pd.Series(np.asarray(scores, dtype=np.float64)).rank(method="average").to_numpy()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _utc(start: str) -> pd.Timestamp:
    t0 = pd.Timestamp(start)
    return t0.tz_localize("UTC") if t0.tz is None else t0.tz_convert("UTC")


def _simulate(
    rows: int, seed: int, start: str, days: int
) -> tuple[dict[str, pd.DataFrame], PurchaseModel]:
    """Generate all tables in memory; see the module docstring for their contents."""
    if rows < 100:
        raise ValueError(f"rows must be >= 100, got {rows}")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    rng = np.random.Generator(np.random.PCG64(seed))
    t0_ns = _utc(start).value
    window_s = days * _DAY_S

    customers = _make_customers(rng, int(np.clip(rows // 20, 50, 900_000)), t0_ns, window_s)
    products = _make_products(rng, int(np.clip(rows // 50, 40, 90_000)), t0_ns, window_s)
    stores = _make_stores(rng, int(np.clip(rows // 5000, 10, 5000)), t0_ns, window_s)
    visits = _make_visits(rng, rows, customers, products, stores, t0_ns, window_s)
    flat = point_in_time_join(visits, customers, products, stores)
    model = _make_purchase_model(rng, customers, products, stores)
    logit = _purchase_logit(flat, model)  # b0 == 0 here: calibrate it to the target rate
    b0 = intercept_for_rate(logit, _TARGET_RATE)
    model = PurchaseModel(**{**model.__dict__, "b0": b0})
    true_prob = sigmoid(logit + b0)
    purchased = (rng.random(rows) < true_prob).astype(np.int64)
    visits["purchased"] = purchased
    flat.insert(flat.columns.get_loc("visit_ts") + 1, "purchased", purchased)
    hidden = ["_topics"]
    frames = {
        "visits": visits,
        "customers": customers.drop(columns=hidden),
        "products": products.drop(columns=hidden),
        "stores": stores,
        "flat": flat.drop(columns=["_customer_topics", "_product_topics"]),
        "truth": pd.DataFrame({"true_prob": true_prob}),
    }
    return frames, model


# ------------------------------------------------------------------------ helpers


def _zipf(n: int, alpha: float) -> np.ndarray:
    """Long-tailed probabilities, shape ``(n,)``: ``p[i]`` proportional to ``(i + 1) ** -alpha``."""
    w = np.arange(1, n + 1, dtype=np.float64) ** -alpha
    return w / w.sum()


def _to_ts(ns: np.ndarray) -> pd.DatetimeIndex:
    """Nanoseconds since the epoch -> ``datetime64[ns, UTC]``."""
    return pd.DatetimeIndex(np.asarray(ns).astype("datetime64[ns]")).tz_localize("UTC")


def _string_ids(rng: np.random.Generator, n: int, prefix: str, digits: int) -> np.ndarray:
    """``n`` distinct random ids such as ``"c000123"``, sorted, object array."""
    numbers = np.sort(rng.choice(10**digits, size=n, replace=False))
    return np.char.add(prefix, np.char.zfill(numbers.astype(str), digits)).astype(object)


def _topic_lists(cand: np.ndarray, length: np.ndarray) -> tuple[pa.ListArray, np.ndarray]:
    """Lists of the first ``length[i]`` distinct values of each row of ``cand`` (topic ids),
    as an arrow list array, and each list's topics as an int64 bitmask (bit ``t - 1``)."""
    n, k = cand.shape
    keep = np.arange(k) < length[:, None]
    for j in range(1, k):
        keep[:, j] &= ~(cand[:, :j] == cand[:, j : j + 1]).any(axis=1)
    offsets = np.r_[0, np.cumsum(keep.sum(axis=1))].astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets), pa.array(cand[keep].astype(np.int64)))
    bits = np.where(keep, np.left_shift(np.int64(1), cand - 1), 0)
    return lists, np.bitwise_or.reduce(bits, axis=1).astype(np.int64)


def _sorted_by_key(frame: pd.DataFrame, key: str) -> pd.DataFrame:
    """Rows ordered by ``(key, updated_at)``, index ``0..n-1``."""
    order = np.lexsort((frame["updated_at"].to_numpy(), frame[key].to_numpy()))
    return frame.iloc[order].reset_index(drop=True)


# ------------------------------------------------------------------------ tables


def _make_customers(rng: np.random.Generator, n: int, t0_ns: int, window_s: int) -> pd.DataFrame:
    """The ``customers`` table (plus a hidden ``_topics`` bitmask of ``interests``), sorted
    by ``(customer_id, updated_at)``."""
    ids = _string_ids(rng, n, "c", 6)
    age = np.clip(np.round(rng.normal(40, 13, n)), 18, 90).astype(np.int64)
    age_known = rng.random(n) >= 0.10
    segment = rng.choice(len(SEGMENTS), n, p=[0.25, 0.25, 0.15, 0.15, 0.20])
    member = rng.random(n) < 0.3
    late = rng.random(n) < 0.03
    first_s = np.where(
        late, rng.integers(0, window_s, n), -rng.integers(10 * _DAY_S, 60 * _DAY_S, n)
    )
    topic_p = _zipf(N_TOPICS, 0.7)
    cand = rng.choice(N_TOPICS, (n, _MAX_INTERESTS), p=topic_p) + 1
    interests, topics = _topic_lists(cand, rng.integers(1, _MAX_INTERESTS + 1, n))

    changed = np.flatnonzero(~late & (rng.random(n) < 0.20))
    m = len(changed)
    seg2 = np.where(rng.random(m) < 0.2, rng.integers(0, len(SEGMENTS), m), segment[changed])
    member2 = member[changed] | (rng.random(m) < 0.6)
    cand2 = rng.choice(N_TOPICS, (m, _MAX_INTERESTS), p=topic_p) + 1
    interests2, topics2 = _topic_lists(cand2, rng.integers(1, _MAX_INTERESTS + 1, m))
    second_s = (0.15 * window_s + rng.integers(0, int(0.7 * window_s), m)).astype(np.int64)

    frame = pd.DataFrame(
        {
            "customer_id": np.r_[ids, ids[changed]],
            "updated_at": _to_ts(t0_ns + np.r_[first_s, second_s] * _NS),
            "age": pd.array(np.r_[age, age[changed]], dtype="Int64"),
            "segment": np.asarray(SEGMENTS, dtype=object)[np.r_[segment, seg2]],
            "is_member": np.r_[member, member2],
            "interests": pa.concat_arrays([interests, interests2]).to_pandas().to_numpy(),
            "_topics": np.r_[topics, topics2],
        }
    )
    frame.loc[~np.r_[age_known, age_known[changed]], "age"] = pd.NA
    return _sorted_by_key(frame, "customer_id")


def _make_products(rng: np.random.Generator, n: int, t0_ns: int, window_s: int) -> pd.DataFrame:
    """The ``products`` table (plus a hidden ``_topics`` bitmask of ``tags``), sorted by
    ``(product_id, updated_at)``."""
    ids = _string_ids(rng, n, "p", 5)
    n_cat = len(CATEGORIES)
    category = rng.choice(n_cat, n, p=_zipf(n_cat, 0.6))
    n_brands = int(np.clip(n // 8, 10, 2000))
    brand_names = np.char.add("brand_", np.char.zfill(np.arange(n_brands).astype(str), 4))
    brand = brand_names.astype(object)[rng.choice(n_brands, n, p=_zipf(n_brands, 0.8))]
    cat_log_price = rng.normal(3.6, 0.7, n_cat)
    log_price = cat_log_price[category] + rng.normal(0.0, 0.6, n)
    launch_year = rng.integers(2008, 2027, n)
    year_known = rng.random(n) >= 0.10
    # each category has 5 home topics: 70% of a product's tags are drawn from them
    cat_topics = rng.choice(N_TOPICS, (n_cat, 5), replace=True) + 1
    own = cat_topics[category[:, None], rng.integers(0, 5, (n, _MAX_TAGS))]
    other = rng.integers(1, N_TOPICS + 1, (n, _MAX_TAGS))
    cand = np.where(rng.random((n, _MAX_TAGS)) < 0.7, own, other)
    tags, topics = _topic_lists(cand, rng.integers(1, _MAX_TAGS + 1, n))

    first_s = -rng.integers(30 * _DAY_S, 120 * _DAY_S, n)
    before = np.flatnonzero(rng.random(n) < 0.30)
    before_s = -rng.integers(_DAY_S, 30 * _DAY_S, len(before))
    inside = np.flatnonzero(rng.random(n) < 0.08)
    inside_s = rng.integers(0, window_s, len(inside))
    version = np.r_[np.arange(n), before, inside]
    v_log_price = (
        log_price[version] + np.r_[np.zeros(n), rng.normal(0.0, 0.3, len(before) + len(inside))]
    )
    price = np.maximum(np.round(np.exp(v_log_price), 2), 0.5)
    price[rng.random(len(version)) < 0.05] = np.nan
    frame = pd.DataFrame(
        {
            "product_id": ids[version],
            "updated_at": _to_ts(t0_ns + np.r_[first_s, before_s, inside_s] * _NS),
            "category": np.asarray(CATEGORIES, dtype=object)[category[version]],
            "brand": brand[version],
            "price": price,
            "launch_year": pd.array(np.where(year_known, launch_year, 0)[version], dtype="Int64"),
            "tags": tags.take(pa.array(version)).to_pandas().to_numpy(),
            "_topics": topics[version],
        }
    )
    frame.loc[~year_known[version], "launch_year"] = pd.NA
    return _sorted_by_key(frame, "product_id")


def _make_stores(rng: np.random.Generator, n: int, t0_ns: int, window_s: int) -> pd.DataFrame:
    """The ``stores`` table, sorted by ``(store_id, updated_at)``."""
    ids = np.sort(rng.choice(np.arange(100, 100_000), n, replace=False)).astype(np.int64)
    region = rng.choice(len(REGIONS), n)
    area = np.round(np.exp(rng.normal(7.0, 0.6, n)), 1)
    refit = np.flatnonzero(rng.random(n) < 0.10)
    version = np.r_[np.arange(n), refit]
    area2 = np.round(area[refit] * np.exp(rng.normal(0.2, 0.2, len(refit))), 1)
    seconds = np.r_[
        -rng.integers(30 * _DAY_S, 300 * _DAY_S, n), rng.integers(0, window_s, len(refit))
    ]
    frame = pd.DataFrame(
        {
            "store_id": ids[version],
            "updated_at": _to_ts(t0_ns + seconds * _NS),
            "region": np.asarray(REGIONS, dtype=object)[region[version]],
            "floor_area": np.r_[area, area2],
        }
    )
    return _sorted_by_key(frame, "store_id")


def _make_visits(
    rng: np.random.Generator,
    rows: int,
    customers: pd.DataFrame,
    products: pd.DataFrame,
    stores: pd.DataFrame,
    t0_ns: int,
    window_s: int,
) -> pd.DataFrame:
    """The ``visits`` table without ``purchased``, sorted by ``visit_ts``.

    Customers and products are drawn with long-tailed popularity; a customer shops at a
    home store 70% of the time, elsewhere at a random one.
    """
    customer_ids = customers["customer_id"].unique()
    product_ids = products["product_id"].unique()
    store_ids = stores["store_id"].unique()
    n_c, n_s = len(customer_ids), len(store_ids)
    c = rng.permutation(n_c)[rng.choice(n_c, rows, p=_zipf(n_c, 0.5))]
    p = rng.permutation(len(product_ids))[
        rng.choice(len(product_ids), rows, p=_zipf(len(product_ids), 0.8))
    ]
    home = rng.integers(0, n_s, n_c)
    store = np.where(rng.random(rows) < 0.7, home[c], rng.integers(0, n_s, rows))
    channel = np.asarray(CHANNELS, dtype=object)[rng.choice(3, rows, p=[0.45, 0.35, 0.2])]
    ts = t0_ns + rng.integers(0, window_s, rows) * _NS
    order = np.argsort(ts, kind="stable")
    return pd.DataFrame(
        {
            "customer_id": customer_ids[c][order],
            "product_id": product_ids[p][order],
            "store_id": store_ids[store][order],
            "channel": channel[order],
            "visit_ts": _to_ts(ts[order]),
        }
    )


def point_in_time_join(
    visits: pd.DataFrame, customers: pd.DataFrame, products: pd.DataFrame, stores: pd.DataFrame
) -> pd.DataFrame:
    """Attach to each visit the customer, product and store versions valid at its time.

    For each visit the latest ``customers`` row of its customer with ``updated_at <=
    visit_ts`` is taken (likewise for products and stores). Returns the visit columns,
    then ``FEATURES`` (customer features null where no profile is valid yet), then the
    hidden ``_customer_topics`` and ``_product_topics`` bitmasks when the sources carry
    them, in the visits' row order and index ``0..n-1``.

    Raises:
        ValueError: if a visit's product or store has no version at or before the visit.
    """
    left = visits.reset_index(drop=True)
    left["_row"] = np.arange(len(left))
    left = left.sort_values("visit_ts", kind="stable")
    flat = left
    for frame, key, tag in (
        (customers, "customer_id", "_customer_topics"),
        (products, "product_id", "_product_topics"),
        (stores, "store_id", None),
    ):
        right = frame.rename(columns={"updated_at": "visit_ts", "_topics": tag or "_topics"})
        right = right.assign(_found=True).sort_values("visit_ts", kind="stable")
        flat = pd.merge_asof(
            flat, right, on="visit_ts", by=key, direction="backward", allow_exact_matches=True
        )
        found = flat.pop("_found").notna().to_numpy()
        if key != "customer_id" and not found.all():
            raise ValueError(f"some visits have no {key} version at or before their time")
    flat = flat.sort_values("_row").reset_index(drop=True)
    flat["age"] = flat["age"].astype("Int64")
    flat["launch_year"] = flat["launch_year"].astype("Int64")
    flat["is_member"] = flat["is_member"].astype("boolean")
    hidden = [c for c in ("_customer_topics", "_product_topics") if c in flat.columns]
    for c in hidden:
        flat[c] = flat[c].fillna(0).astype(np.int64)
    return flat[[*visits.columns, *FEATURES, *hidden]]


# ------------------------------------------------------------------------ the model


def _make_purchase_model(
    rng: np.random.Generator, customers: pd.DataFrame, products: pd.DataFrame, stores: pd.DataFrame
) -> PurchaseModel:
    """Draw the purchase model's parameters for the given customers, products and stores."""
    customer_ids = np.unique(customers["customer_id"].to_numpy().astype(str))
    product_ids = np.unique(products["product_id"].to_numpy().astype(str))
    store_ids = np.unique(stores["store_id"].to_numpy())
    return PurchaseModel(
        b0=0.0,
        customer_ids=customer_ids,
        customer_bias=rng.normal(0.0, 0.3, len(customer_ids)),
        product_ids=product_ids,
        product_bias=rng.normal(0.0, 0.4, len(product_ids)),
        store_ids=store_ids,
        store_bias=rng.normal(0.0, 0.2, len(store_ids)),
        seg_cat=rng.normal(0.0, 0.7, (len(SEGMENTS), len(CATEGORIES))),
        channel_bias=np.array([0.0, 0.35, 0.8]),
        region_bias=rng.normal(0.0, 0.15, len(REGIONS)),
    )


def _index_of(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Positions of ``ids`` in ``sorted_ids``; ValueError if any id is unknown."""
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    if not np.array_equal(sorted_ids[pos], ids):
        raise ValueError("ids unknown to the purchase model")
    return pos


def _code(values: pd.Series, names: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """String column -> (index into ``names``, 0 where null; known mask)."""
    codes = pd.Categorical(values, categories=list(names)).codes.astype(np.intp)
    return np.maximum(codes, 0), codes >= 0


def _purchase_logit(flat: pd.DataFrame, model: PurchaseModel) -> np.ndarray:
    """The true purchase logit of each row of a flat table (with the hidden topic
    bitmasks), float64, shape ``(len(flat),)``.

    ``logit = customer_bias[customer] + product_bias[product] + store_bias[store]
    + seg_cat[segment, category] + overlap_boost * |interests & tags|
    + channel_bias[channel] + region_bias[region] + member_boost * is_member
    - price_slope * z - price_age * z * (40 - age) / 20
    + launch_slope * (launch_year - 2017)
    + floor_slope * (log(floor_area) - 7) * [channel == in_store] + b0``,
    with ``z = log(price) - log_price_mean``. A null feature contributes 0 to every term it
    appears in (the price x age term needs both).
    """
    logit = (
        model.customer_bias[
            _index_of(model.customer_ids, flat["customer_id"].to_numpy().astype(str))
        ]
        + model.product_bias[
            _index_of(model.product_ids, flat["product_id"].to_numpy().astype(str))
        ]
        + model.store_bias[_index_of(model.store_ids, flat["store_id"].to_numpy())]
    )
    seg, seg_known = _code(flat["segment"], SEGMENTS)
    cat, cat_known = _code(flat["category"], CATEGORIES)
    logit += np.where(seg_known & cat_known, model.seg_cat[seg, cat], 0.0)
    overlap = np.bitwise_count(
        flat["_customer_topics"].to_numpy() & flat["_product_topics"].to_numpy()
    )
    logit += model.overlap_boost * np.minimum(overlap, 3)
    channel, _ = _code(flat["channel"], CHANNELS)
    logit += model.channel_bias[channel]
    region, region_known = _code(flat["region"], REGIONS)
    logit += np.where(region_known, model.region_bias[region], 0.0)
    logit += model.member_boost * flat["is_member"].to_numpy(dtype=np.float64, na_value=0.0)
    z = np.log(flat["price"].to_numpy(dtype=np.float64, na_value=np.nan)) - model.log_price_mean
    age = flat["age"].to_numpy(dtype=np.float64, na_value=np.nan)
    logit -= np.nan_to_num(model.price_slope * z)
    logit -= np.nan_to_num(model.price_age * z * (40.0 - age) / 20.0)
    year = flat["launch_year"].to_numpy(dtype=np.float64, na_value=np.nan)
    logit += np.nan_to_num(model.launch_slope * (year - 2017.0))
    in_store = (flat["channel"].to_numpy() == "in_store").astype(np.float64)
    area = np.log(flat["floor_area"].to_numpy(dtype=np.float64, na_value=np.nan)) - 7.0
    logit += np.nan_to_num(model.floor_slope * area * in_store)
    return logit + model.b0
