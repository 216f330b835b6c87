"""Tests of the feature encoders (model/features.py): vocabularies, hashing, pass-through ids,
bucketised and normalised numbers, multi-valued ids, and the JSON state round trip."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch

from model.config import ConfigError, FeatureConfig, VocabConfig, config_from_dict
from model.features import (
    MISSING_ROW,
    OOV_ROW,
    FeatureEncoder,
    IdEncoder,
    MatchEncoder,
    RawEncoder,
)

ROOT = Path(__file__).resolve().parents[1]


def vocab_feature(min_count: int = 1, max_size: int | None = None, **kw) -> FeatureConfig:
    return FeatureConfig(
        name=kw.pop("name", "item"),
        type=kw.pop("type", "id"),
        vocab=VocabConfig(min_count=min_count, max_size=max_size),
        **kw,
    )


def fitted_id(feature: FeatureConfig, values: list) -> IdEncoder:
    return IdEncoder(feature).fit(pd.DataFrame({feature.source_column: values}))


def encode(enc: IdEncoder | RawEncoder, values: list) -> np.ndarray:
    col = enc.feature.source_column
    df = pd.DataFrame({col: values})
    if isinstance(enc, RawEncoder):
        return enc.transform_bucket(df) if enc.feature.boundaries else enc.transform_dense(df)
    return enc.transform_single(df)


# --------------------------------------------------------------------------- vocabulary


def test_vocab_orders_by_frequency_and_sends_rare_unseen_and_missing_ids_to_reserved_rows():
    # 7 x3, 5 x2, 9 x2, 3 x1 (below min_count 2)
    enc = fitted_id(vocab_feature(min_count=2), [7, 5, 9, 7, 3, 5, 7, 9])
    # most frequent first; the tie between 5 and 9 is broken by value
    assert enc.vocab == [7, 5, 9]
    assert enc.num_embeddings == 3 + 2
    rows = encode(enc, [7, 5, 9, 3, 123456, None])
    assert rows.tolist() == [2, 3, 4, OOV_ROW, OOV_ROW, MISSING_ROW]
    assert (MISSING_ROW, OOV_ROW) == (0, 1)
    assert rows.dtype == np.int64


def test_vocab_of_strings_and_min_count_one_keeps_every_seen_id():
    enc = fitted_id(vocab_feature(min_count=1), ["b", "a", "b", "c", None, "b", "a"])
    assert enc.kind == "str"
    assert enc.vocab == ["b", "a", "c"]
    assert encode(enc, ["a", "b", "c", "zzz", None]).tolist() == [3, 2, 4, OOV_ROW, MISSING_ROW]


def test_vocab_max_size_keeps_only_the_most_frequent_ids():
    enc = fitted_id(vocab_feature(min_count=1, max_size=2), [1, 1, 1, 2, 2, 3, 4, 4])
    # counts: 1 x3, 2 x2, 4 x2, 3 x1 -> keep 1 and 2 (the 2/4 tie goes to the smaller value)
    assert enc.vocab == [1, 2]
    assert enc.num_embeddings == 4
    assert encode(enc, [1, 2, 3, 4]).tolist() == [2, 3, OOV_ROW, OOV_ROW]


def test_vocab_is_a_deterministic_function_of_the_training_rows():
    values = list(np.random.default_rng(0).integers(0, 50, 2000))
    a = fitted_id(vocab_feature(min_count=3), values)
    b = fitted_id(vocab_feature(min_count=3), list(reversed(values)))
    assert a.vocab == b.vocab
    counts = pd.Series(values).value_counts()
    assert set(a.vocab) == set(counts[counts >= 3].index)
    ordered = [counts[v] for v in a.vocab]
    assert ordered == sorted(ordered, reverse=True)


def test_integer_ids_stored_as_nullable_or_float_columns_encode_like_ints():
    enc = fitted_id(vocab_feature(), [10, 20, 20])
    as_int = encode(enc, [10, 20, 30])
    nullable = enc.transform_single(pd.DataFrame({"item": pd.array([10, 20, None], "Int64")}))
    floats = enc.transform_single(pd.DataFrame({"item": [10.0, 20.0, np.nan]}))
    assert as_int.tolist() == [3, 2, OOV_ROW]
    assert nullable.tolist() == [3, 2, MISSING_ROW]
    assert floats.tolist() == [3, 2, MISSING_ROW]


def test_non_integer_value_for_an_integer_id_feature_names_the_feature():
    enc = fitted_id(vocab_feature(name="brand"), [1, 2, 3])
    with pytest.raises(ValueError, match="'brand'.*1.5"):
        encode(enc, [1.5])
    with pytest.raises(ValueError, match="'brand'.*'abc'"):
        encode(enc, ["abc"])


# ------------------------------------------------------------------------------ hashing


def hashed_feature(n: int = 1000, name: str = "h") -> FeatureConfig:
    return FeatureConfig(name=name, type="id", hash_bucket_size=n)


_HASH_VALUES_INT = [0, 1, 2, 17, 10**7, -5, 2**40]
_HASH_VALUES_STR = ["a", "b", "430548_1007", "", "ünïcode"]


def test_hashing_is_within_range_and_stable_across_encoders():
    rng = np.random.default_rng(1)
    ints = rng.integers(0, 10**9, 5000)
    a = fitted_id(hashed_feature(97), list(ints[:100]))
    b = fitted_id(hashed_feature(97), list(ints[::-1]))  # other training data
    ra, rb = encode(a, list(ints)), encode(b, list(ints))
    assert np.array_equal(ra, rb)
    assert ra.min() >= 0 and ra.max() < 97
    # a hash spreads ids over (nearly) every bucket, not e.g. id % 97
    assert len(np.unique(ra)) == 97
    assert not np.array_equal(ra, ints % 97)
    # same value -> same bucket, also in another batch
    assert encode(a, [int(ints[3])] * 3).tolist() == [ra[3]] * 3

    strs = [f"user-{i}" for i in range(3000)]
    sa, sb = fitted_id(hashed_feature(50), strs[:10]), fitted_id(hashed_feature(50), strs)
    assert sa.kind == sb.kind == "str"
    rs = encode(sa, strs)
    assert np.array_equal(rs, encode(sb, strs))
    assert rs.min() >= 0 and rs.max() < 50 and len(np.unique(rs)) == 50


def test_hashing_of_missing_values_and_num_embeddings():
    enc = fitted_id(hashed_feature(13), [1, 2, 3])
    assert enc.num_embeddings == 13
    assert encode(enc, [None])[0] == 0
    assert enc.state() == {"kind": "int"}  # nothing fitted beyond the value kind


_HASH_SCRIPT = """
import json, sys
import pandas as pd
from model.config import FeatureConfig
from model.features import IdEncoder
out = {}
for kind, values in json.loads(sys.argv[1]).items():
    enc = IdEncoder(FeatureConfig(name="h", type="id", hash_bucket_size=1000))
    enc.fit(pd.DataFrame({"h": values}))
    out[kind] = enc.transform_single(pd.DataFrame({"h": values})).tolist()
print(json.dumps(out))
"""


def test_hashing_is_stable_in_a_fresh_process_with_another_hash_seed():
    values = {"int": _HASH_VALUES_INT, "str": _HASH_VALUES_STR}
    here = {
        kind: encode(fitted_id(hashed_feature(1000), v), v).tolist() for kind, v in values.items()
    }
    # This process has a random str hash seed; the child a fixed one, so Python's own
    # hash() would differ between them.
    done = subprocess.run(
        [sys.executable, "-c", _HASH_SCRIPT, json.dumps(values)],
        cwd=ROOT,
        env={"PYTHONHASHSEED": "12345", "PATH": "", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(done.stdout) == here
    assert all(0 <= r < 1000 for r in here["int"] + here["str"])


# -------------------------------------------------------------------------- num_buckets


def test_num_buckets_passes_ids_through():
    f = FeatureConfig(name="level", type="id", num_buckets=7)
    enc = fitted_id(f, [0, 3, 6])
    assert enc.num_embeddings == 7
    assert encode(enc, [6, 0, 2, 5]).tolist() == [6, 0, 2, 5]


@pytest.mark.parametrize("bad", [7, -1, None])
def test_num_buckets_out_of_range_or_missing_raises_naming_the_feature(bad):
    enc = fitted_id(FeatureConfig(name="level", type="id", num_buckets=7), [0, 1])
    with pytest.raises(ValueError, match=r"'level'.*num_buckets \[0, 7\)"):
        encode(enc, [1, bad])


def test_num_buckets_checks_the_training_data_at_fit():
    with pytest.raises(ValueError, match="'level'.*id 9"):
        fitted_id(FeatureConfig(name="level", type="id", num_buckets=7), [0, 9])


# ---------------------------------------------------------------------------- numerics


def bucket_encoder(boundaries: list[float]) -> RawEncoder:
    f = FeatureConfig(name="ctr", type="raw", boundaries=boundaries)
    return RawEncoder(f).fit(pd.DataFrame({"ctr": [0.1]}))


def test_boundaries_bucket_values_and_a_boundary_value_goes_up():
    enc = bucket_encoder([0.05, 0.15, 0.25])
    assert enc.num_embeddings == 3 + 2
    values = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 1e9, -1e9, np.nan, None]
    assert encode(enc, values).tolist() == [0, 1, 1, 2, 2, 3, 3, 3, 0, 4, 4]


@pytest.mark.parametrize("bad", [np.inf, -np.inf])
def test_an_infinite_number_is_an_error_naming_the_column(bad):
    for enc in (bucket_encoder([0.05, 0.15]), RawEncoder(FeatureConfig(name="x", type="raw"))):
        column = enc.feature.source_column
        with pytest.raises(ValueError, match=rf"column '{column}' has 2 infinite values"):
            encode(enc, [0.1, bad, None, bad])


def test_bucketised_values_ignore_the_normalizer():
    f = FeatureConfig(name="p", type="raw", boundaries=[1.0, 10.0], normalizer="log1p_standard")
    enc = RawEncoder(f).fit(pd.DataFrame({"p": [0.5, 5.0, 50.0]}))
    assert encode(enc, [0.5, 1.0, 5.0, 10.0, 50.0]).tolist() == [0, 1, 1, 2, 2]


def test_standard_normalisation_uses_the_training_mean_and_std():
    f = FeatureConfig(name="x", type="raw")
    train = [1.0, 2.0, 3.0, 4.0, np.nan]
    enc = RawEncoder(f).fit(pd.DataFrame({"x": train}))
    assert enc.mean == pytest.approx(2.5)
    assert enc.std == pytest.approx(np.std([1.0, 2.0, 3.0, 4.0]))  # population std of non-null
    out = encode(enc, [2.5, 4.0, 1.0, np.nan, None, np.nan, 100.0])
    assert out.dtype == np.float32
    expected = (np.array([2.5, 4.0, 1.0]) - 2.5) / np.sqrt(1.25)
    np.testing.assert_allclose(out[:3], expected, rtol=1e-6)
    # missing values -> the training mean -> 0 after normalisation
    assert out[3:6].tolist() == [0.0, 0.0, 0.0]
    assert out[6] == pytest.approx((100.0 - 2.5) / np.sqrt(1.25), rel=1e-6)


def test_constant_training_column_gets_std_one():
    enc = RawEncoder(FeatureConfig(name="x", type="raw")).fit(pd.DataFrame({"x": [3.0, 3.0]}))
    assert (enc.mean, enc.std) == (3.0, 1.0)
    assert encode(enc, [3.0, 5.0]).tolist() == [0.0, 2.0]


def test_log1p_standard_normalises_log1p_of_the_clipped_value():
    f = FeatureConfig(name="x", type="raw", normalizer="log1p_standard")
    e = np.e
    enc = RawEncoder(f).fit(pd.DataFrame({"x": [0.0, e - 1, e**2 - 1]}))  # log1p: 0, 1, 2
    assert enc.mean == pytest.approx(1.0)
    assert enc.std == pytest.approx(np.sqrt(2 / 3))
    out = encode(enc, [e - 1, e**2 - 1, -5.0, np.nan])
    np.testing.assert_allclose(
        out, [0.0, 1 / np.sqrt(2 / 3), -1 / np.sqrt(2 / 3), 0.0], rtol=1e-6, atol=1e-7
    )


def test_normalizer_none_passes_numbers_through():
    f = FeatureConfig(name="x", type="raw", normalizer="none")
    enc = RawEncoder(f).fit(pd.DataFrame({"x": [10.0, 20.0]}))
    assert encode(enc, [10.0, -3.5, np.nan]).tolist() == [10.0, -3.5, 0.0]


# ------------------------------------------------------------------ multi-valued ids


def test_multi_valued_ids_pad_truncate_and_encode_like_single_ids():
    f = vocab_feature(min_count=2, name="tags", type="multi_id", max_length=3)
    train = pd.DataFrame({"tags": [[5, 6, 7], [5, 6], [5], [8]]})
    enc = IdEncoder(f).fit(train)
    assert enc.vocab == [5, 6]  # counts over the flattened values: 5 x3, 6 x2, 7 x1, 8 x1
    rows = pd.DataFrame({"tags": [[6, 5, 7, 5, 6], [9], None, [], [5]]})
    out = enc.transform_multi(rows, max_length=4)
    assert out.dtype == np.int64
    assert out.tolist() == [
        [3, 2, OOV_ROW, -1],  # truncated at the feature's max_length 3, padded to 4
        [OOV_ROW, -1, -1, -1],  # unseen id
        [-1, -1, -1, -1],  # null list: all padding
        [-1, -1, -1, -1],  # empty list
        [2, -1, -1, -1],
    ]
    single = fitted_id(vocab_feature(min_count=2), [5, 6, 7, 5, 6, 5, 8])
    assert encode(single, [6, 5, 7]).tolist() == out[0, :3].tolist()


def test_multi_valued_strings_and_hashing():
    f = FeatureConfig(name="tags", type="multi_id", hash_bucket_size=100, max_length=2)
    df = pd.DataFrame({"tags": [["a", "b", "c"], ["b"], None]})
    enc = IdEncoder(f).fit(df)
    out = enc.transform_multi(df, max_length=2)
    single = fitted_id(hashed_feature(100, name="tags"), ["a", "b"])
    a, b = encode(single, ["a", "b"]).tolist()
    assert out.tolist() == [[a, b], [b, -1], [-1, -1]]


# ------------------------------------------------------------------------ match

MATCH = FeatureConfig(name="likes_cate", type="match", column="likes", key="cate")


def match_rows(likes: list | pd.Series, cate: list, cate_dtype: str | None = None) -> list[int]:
    if not isinstance(likes, pd.Series):
        likes = pd.Series(likes, dtype=object)
    df = pd.DataFrame({"likes": likes, "cate": pd.Series(cate, dtype=cate_dtype)})
    return MatchEncoder(MATCH).fit(df).transform_single(df).tolist()


def test_a_match_is_2_when_the_key_is_in_the_list_1_when_not_0_when_unknown():
    likes = [[3, 7], [3, 7], [7], [], None, [5, None], [5]]
    cate = [7, 4, 7, 7, 7, 4, None]
    assert match_rows(likes, cate, "Int64") == [2, 1, 2, 0, 0, 1, 0]
    assert MatchEncoder(MATCH).state() == {}  # nothing fitted
    assert MatchEncoder(MATCH).num_embeddings == MATCH.max_length + 2 == 18
    one = MATCH.model_copy(update={"max_length": 1})
    assert MatchEncoder(one).num_embeddings == 3


def test_a_match_reads_ids_by_value_whatever_the_columns_dtypes():
    """Training reads parquet (Arrow lists, Int64 or float64 with NaN), a server builds
    object columns of Python values: the same ids match alike."""
    want = [2, 1, 0, 2]
    likes = [[1, 2], [1, 2], None, [10**7]]
    assert match_rows(likes, [2, 3, 2, 10**7]) == want
    assert match_rows(likes, [2.0, 3.0, 2.0, 1e7]) == want  # a nullable int read as float
    arrow = pd.Series(likes, dtype=pd.ArrowDtype(pa.list_(pa.int64())))
    assert match_rows(arrow, [2, 3, 2, 10**7], "Int64") == want
    strings = [["a", "b"], ["a", "b"], None, ["ü"]]
    assert match_rows(strings, ["b", "c", "b", "ü"], "string") == want
    # int ids against string ids compare as strings: 2 is "2", never "2.5"
    assert match_rows([[2], [2], [3]], ["2", "2.5", "x"]) == [2, 1, 1]


def test_a_match_of_a_list_key_counts_the_distinct_ids_found_up_to_max_length():
    likes = [[1, 2, 3], [1, 2, 3], [1, 2, 3], [1, 1], [1], None, [4]]
    tags = [[2, 3, 9], [9], [3, 3], [1, 1], None, [1], []]
    assert match_rows(likes, tags) == [3, 1, 2, 2, 0, 0, 0]
    arrow = pd.Series(tags, dtype=pd.ArrowDtype(pa.list_(pa.int64())))
    df = pd.DataFrame({"likes": pd.Series(likes, dtype=object), "cate": arrow})
    capped = MatchEncoder(MATCH.model_copy(update={"max_length": 1}))
    assert capped.transform_single(df).tolist() == [2, 1, 2, 2, 0, 0, 0]
    # a list key of one id per row is the single key
    assert match_rows([[5, 6], [5]], [[6], [7]]) == match_rows([[5, 6], [5]], [6, 7]) == [2, 1]


def test_a_match_without_its_key_column_names_the_feature_and_the_column():
    with pytest.raises(ConfigError, match="features.likes_cate: column 'cate' is missing"):
        MatchEncoder(MATCH).transform_single(pd.DataFrame({"likes": [[1]]}))


# ------------------------------------------------------------- FeatureEncoder (all)


def mixed_config() -> dict:
    """Every encoding kind, each in a group (the wide/fm groups take the embedded ones)."""
    features = [
        {"name": "user", "type": "id", "vocab": {"min_count": 2}, "embedding_dim": 8},
        {"name": "slot", "type": "id", "vocab": {"min_count": 1}, "embedding_dim": 8},
        {"name": "brand", "type": "id", "hash_bucket_size": 64, "embedding_dim": 8},
        {"name": "level", "type": "id", "num_buckets": 4, "embedding_dim": 8},
        {
            "name": "price_bucket",
            "column": "price",
            "type": "raw",
            "embedding_dim": 8,
            "boundaries": [5.0, 50.0],
        },
        {"name": "log_price", "column": "price", "type": "raw", "normalizer": "log1p_standard"},
        {"name": "age", "type": "raw"},
        {
            "name": "tags",
            "type": "multi_id",
            "vocab": {"min_count": 1},
            "embedding_dim": 8,
            "max_length": 3,
            "pooling": "mean",
        },
        {
            "name": "cats",
            "type": "multi_id",
            "hash_bucket_size": 32,
            "embedding_dim": 8,
            "max_length": 2,
        },
    ]
    sparse = ["user", "slot", "brand", "level", "price_bucket", "tags", "cats"]
    return {
        "data": {"label": "label", "group_key": None, "timestamp": None},
        "features": features,
        "feature_groups": {"wide": sparse[:5], "fm": sparse, "deep": sparse + ["log_price", "age"]},
        "model": {"deep": {"hidden_units": [8]}, "metrics": ["auc"]},
    }


def mixed_frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "user": [1, 1, 2, 3, 3, 3],
            "slot": ["a", "b", "a", "a", None, "b"],
            "brand": [11, 12, 13, 11, 12, 13],
            "level": [0, 1, 2, 3, 0, 1],
            "price": [1.0, 10.0, 100.0, np.nan, 5.0, 50.0],
            "age": [20.0, 30.0, np.nan, 40.0, 50.0, 60.0],
            "tags": [[1, 2], [2], None, [3, 1, 2, 4], [], [1]],
            "cats": [["x"], ["y", "z", "w"], None, ["x"], ["z"], []],
            "label": [0, 1, 0, 1, 0, 0],
        }
    )


def test_feature_encoder_layout_and_input_spec():
    cfg = config_from_dict(mixed_config())
    enc = FeatureEncoder(cfg).fit(mixed_frame())
    spec = enc.input_spec()
    assert [s.name for s in spec.sparse] == ["user", "slot", "brand", "level", "price_bucket"]
    assert [s.num_embeddings for s in spec.sparse] == [2 + 2, 2 + 2, 64, 4, 2 + 2]
    assert [(m.name, m.num_embeddings, m.pooling) for m in spec.multi] == [
        ("tags", 4 + 2, "mean"),
        ("cats", 32, "sum"),
    ]
    assert spec.dense == ["log_price", "age"]
    assert spec.max_length == 3  # the longest multi-valued feature

    new = pd.DataFrame(
        {
            "user": [3, 99],
            "slot": ["b", "never"],
            "brand": [11, 11],
            "level": [3, 0],
            "price": [50.0, np.nan],
            "age": [40.0, None],
            "tags": [[4, 3, 2, 1], None],
            "cats": [["x", "y", "z"], ["x"]],
        }
    )
    out = enc.transform(new)
    assert out.sparse.dtype == out.multi.dtype == torch.int64
    assert out.dense.dtype == torch.float32
    assert tuple(out.sparse.shape) == (2, 5)
    assert tuple(out.multi.shape) == (2, 2, 3)
    assert tuple(out.dense.shape) == (2, 2)
    user, slot, brand, level, price = out.sparse.T.tolist()
    assert user == [2, OOV_ROW]  # 3 is the most frequent user; 99 unseen
    assert slot[1] == OOV_ROW
    assert brand[0] == brand[1]
    assert level == [3, 0]
    assert price == [2, 3]  # 50 >= 50 -> bucket 2; missing -> len(boundaries) + 1
    assert out.multi[1, 0].tolist() == [-1, -1, -1]  # null list
    assert out.multi[0, 1, 2].item() == -1  # "cats" truncated at its max_length 2
    assert out.dense[1].tolist() == [0.0, 0.0]  # missing numbers -> training mean -> 0


def test_state_round_trip_through_json_transforms_identically():
    cfg = config_from_dict(mixed_config())
    df = mixed_frame()
    enc = FeatureEncoder(cfg).fit(df)
    state = json.loads(json.dumps(enc.state()))
    restored = FeatureEncoder(cfg, state)
    assert restored.fitted
    assert restored.input_spec() == enc.input_spec()
    probe = pd.concat([df, df.assign(user=[7, 8, 9, 1, 2, 3], slot="zzz")], ignore_index=True)
    a, b = enc.transform(probe), restored.transform(probe)
    assert torch.equal(a.sparse, b.sparse)
    assert torch.equal(a.multi, b.multi)
    assert torch.equal(a.dense, b.dense)


def test_state_without_an_entry_for_a_feature_is_rejected():
    cfg = config_from_dict(mixed_config())
    state = FeatureEncoder(cfg).fit(mixed_frame()).state()
    del state["age"]
    with pytest.raises(ValueError, match="'age'"):
        FeatureEncoder(cfg, state)


def test_transform_before_fit_raises():
    with pytest.raises(RuntimeError, match="before fit"):
        FeatureEncoder(config_from_dict(mixed_config())).transform(mixed_frame())


def test_fit_on_no_rows_raises():
    with pytest.raises(ValueError, match="empty"):
        FeatureEncoder(config_from_dict(mixed_config())).fit(mixed_frame().head(0))


def test_missing_column_raises_config_error_naming_feature_and_column():
    cfg = config_from_dict(mixed_config())
    df = mixed_frame()
    with pytest.raises(ConfigError, match=r"features\.(price_bucket|log_price): column 'price'"):
        FeatureEncoder(cfg).fit(df.drop(columns="price"))
    enc = FeatureEncoder(cfg).fit(df)
    with pytest.raises(ConfigError, match=r"features\.tags: column 'tags'"):
        enc.transform(df.drop(columns="tags"))


def test_non_numeric_raw_column_raises_naming_the_feature():
    cfg = config_from_dict(mixed_config())
    enc = FeatureEncoder(cfg).fit(mixed_frame())
    bad = mixed_frame().assign(age=["young", "old", "x", "y", "z", "w"])
    with pytest.raises(ValueError, match="feature 'age'.*not numeric"):
        enc.transform(bad)


def test_scalar_in_a_list_column_raises_naming_the_feature():
    cfg = config_from_dict(mixed_config())
    enc = FeatureEncoder(cfg).fit(mixed_frame())
    bad = mixed_frame().assign(tags=[1, 2, 3, 4, 5, 6])
    with pytest.raises(ValueError, match="feature 'tags'.*list"):
        enc.transform(bad)


def test_a_list_column_with_only_nulls_is_all_padding():
    """E.g. a request where no candidate's user has a profile yet."""
    from model.config import config_from_dict
    from model.features import FeatureEncoder

    cfg = config_from_dict(
        {
            "features": [
                {"name": "u", "type": "id", "num_buckets": 10},
                {"name": "m", "type": "multi_id", "hash_bucket_size": 7, "max_length": 3},
            ],
            "feature_groups": {"wide": ["u"], "deep": ["u", "m"]},
            "model": {"deep": {"hidden_units": [4]}, "metrics": ["auc"]},
        }
    )
    enc = FeatureEncoder(cfg).fit(pd.DataFrame({"u": [1, 2], "m": [[1, 2], [3]]}))
    out = enc.transform(pd.DataFrame({"u": [1, 2], "m": [None, None]}))
    assert out.multi.shape == (2, 1, 3) and bool((out.multi == -1).all())


# ------------------------------------------------- types as users have them, both ways

# Each type as a column of the training table (parquet, read by pandas) and as the Python
# values of the online store that the server puts in records: the same rows must give the
# same tensors, and an encoder fitted on either must be the same encoder.
TYPES = {
    "nullable int": ("Int64", [31, None, 45, 31], {"type": "id", "vocab": {"min_count": 1}}),
    "string id": ("string", ["c00012", None, "c00007", "c00012"], {"type": "id", "vocab": {}}),
    "hashed string id": (
        "string",
        ["c00012", None, "p1", "c00012"],
        {"type": "id", "hash_bucket_size": 50},
    ),
    "bool": ("boolean", [True, None, False, True], {"type": "id", "vocab": {"min_count": 1}}),
    "bool as a number": ("boolean", [True, None, False, True], {"type": "raw"}),
    "float, bucketised": (
        "float64",
        [12.5, None, 60.0, 1.0],
        {"type": "raw", "boundaries": [5.0, 50.0]},
    ),
    "float, dense": ("float64", [12.5, None, 60.0, float("nan")], {"type": "raw"}),
    "int, dense": ("Int64", [3, None, 60, 7], {"type": "raw", "normalizer": "log1p_standard"}),
    "list<int64>": (
        "object",
        [[3, 5], None, [], [5, 3, 9, 11]],
        {"type": "multi_id", "vocab": {"min_count": 1}, "max_length": 3},
    ),
    "list<string>": (
        "object",
        [["a", "b"], None, [], ["b", None, "c"]],
        {"type": "multi_id", "vocab": {"min_count": 1}, "max_length": 3},
    ),
    "list<string>, hashed": (
        "object",
        [["a", "b"], None, [], ["b", "c"]],
        {"type": "multi_id", "hash_bucket_size": 40, "max_length": 3},
    ),
}


def one_feature_config(encoding: dict) -> dict:
    feature = {"name": "x", "embedding_dim": 4, **encoding}
    sparse = feature["type"] != "raw" or "boundaries" in feature
    groups = (
        {"wide": ["x"], "deep": ["x"]}
        if sparse
        else {"wide": ["k"], "fm": ["k"], "deep": ["k", "x"]}
    )
    features = [feature] if sparse else [feature, {"name": "k", "type": "id", "num_buckets": 9}]
    return {
        "data": {"label": "y", "group_key": None, "timestamp": None},
        "features": features,
        "feature_groups": groups,
        "model": {"deep": {"hidden_units": [4]}, "metrics": ["auc"]},
    }


def as_read(values: list, dtype: str, tmp_path: Path) -> dict[str, pd.DataFrame]:
    """The column written to parquet as pandas writes it, read back by each of pandas'
    dtype backends, and the same values as the server's records."""
    column = (
        pd.Series(values, dtype=dtype)
        if dtype != "float64"
        else pd.Series([np.nan if v is None else v for v in values], dtype="float64")
    )
    path = tmp_path / "x.parquet"
    pd.DataFrame({"x": column, "k": 1}).to_parquet(path)
    records = pd.DataFrame.from_records([{"x": v, "k": 1} for v in values])
    return {
        "default": pd.read_parquet(path),
        "numpy_nullable": pd.read_parquet(path, dtype_backend="numpy_nullable"),
        "pyarrow": pd.read_parquet(path, dtype_backend="pyarrow"),
        "records": records,
    }


def same(a, b) -> bool:
    return all(torch.equal(getattr(a, t), getattr(b, t)) for t in ("sparse", "multi", "dense"))


@pytest.mark.parametrize("kind", list(TYPES))
def test_each_type_encodes_the_same_from_the_table_and_from_python_records(kind, tmp_path):
    dtype, values, encoding = TYPES[kind]
    cfg = config_from_dict(one_feature_config(encoding))
    frames = as_read(values, dtype, tmp_path)
    fitted = {name: FeatureEncoder(cfg).fit(df) for name, df in frames.items()}
    state = fitted["default"].state()
    for name, enc in fitted.items():
        assert enc.state() == state, name  # the same vocabulary, kind, mean and std
    expected = fitted["default"].transform(frames["default"])
    for name, df in frames.items():
        assert same(fitted["records"].transform(df), expected), name
    # one row at a time, as a server scores a single candidate
    for i, value in enumerate(values):
        row = fitted["default"].transform(pd.DataFrame.from_records([{"x": value, "k": 1}]))
        assert same(row, expected.slice(i, i + 1)), (i, value)


def test_missing_values_of_each_type_go_to_their_row():
    rows = {}
    for kind in ("nullable int", "string id", "bool", "float, bucketised", "float, dense"):
        dtype, values, encoding = TYPES[kind]
        cfg = config_from_dict(one_feature_config(encoding))
        records = pd.DataFrame.from_records([{"x": v, "k": 1} for v in values])
        out = FeatureEncoder(cfg).fit(records).transform(records)
        rows[kind] = out.sparse[:, 0].tolist() if out.sparse.shape[1] == 1 else None
        if kind == "float, dense":
            assert out.dense[1, 0].item() == 0.0 == out.dense[3, 0].item()  # the mean
    assert rows["nullable int"] == [2, MISSING_ROW, 3, 2]
    assert rows["string id"] == [2, MISSING_ROW, 3, 2]
    assert rows["bool"] == [2, MISSING_ROW, 3, 2]  # True (twice), missing, False
    assert rows["float, bucketised"] == [1, 3, 2, 0]  # missing: a bucket of its own


def test_a_bool_vocab_is_its_ints_and_python_bools_find_them():
    enc = fitted_id(vocab_feature(name="member"), pd.array([False, True, True, None], "boolean"))
    assert (enc.kind, enc.vocab) == ("int", [1, 0])
    assert json.loads(json.dumps(enc.state())) == enc.state()
    assert encode(enc, [True, False, None]).tolist() == [2, 3, MISSING_ROW]


@pytest.mark.parametrize(
    "encoding",
    [
        {"type": "id", "vocab": {"min_count": 1}},
        {"type": "id", "hash_bucket_size": 64},
        {"type": "raw", "boundaries": [10.0, 40.0]},
        {"type": "raw"},
    ],
    ids=["vocab", "hashed", "bucketised", "dense"],
)
def test_a_nullable_int_and_a_float_with_nan_of_the_same_values_encode_identically(encoding):
    cfg = config_from_dict(one_feature_config(encoding))
    nullable = pd.DataFrame({"x": pd.array([31, None, 45, 7, 31], "Int64"), "k": 1})
    floats = pd.DataFrame({"x": [31.0, np.nan, 45.0, 7.0, 31.0], "k": 1})
    a, b = FeatureEncoder(cfg).fit(nullable), FeatureEncoder(cfg).fit(floats)
    assert a.state() == b.state()
    assert same(a.transform(nullable), b.transform(floats))
    assert same(a.transform(floats), a.transform(nullable))


def test_a_list_of_strings_with_missing_elements_and_every_list_missing():
    f = vocab_feature(name="tags", type="multi_id", max_length=3)
    enc = IdEncoder(f).fit(pd.DataFrame({"tags": [["a", "b"], ["b"], None]}))
    assert (enc.kind, enc.vocab) == ("str", ["b", "a"])
    cells = [np.array(["a", None, "zz"], dtype=object), [], None, ("b",)]
    out = enc.transform_multi(pd.DataFrame({"tags": pd.Series(cells, dtype=object)}), 3)
    assert out.tolist() == [[3, MISSING_ROW, OOV_ROW], [-1] * 3, [-1] * 3, [2, -1, -1]]
    empty = enc.transform_multi(pd.DataFrame.from_records([{"tags": None}, {"tags": []}]), 3)
    assert empty.tolist() == [[-1] * 3, [-1] * 3]
