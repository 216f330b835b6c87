"""Tests of config loading and validation (model/config.py): the shipped configs load, and
every kind of wrong input fails with a ConfigError that names the dotted key, file or column."""

import copy
import re
from pathlib import Path

import pytest
import yaml

from feature_repo.spec import load_spec
from model.config import (
    Config,
    ConfigError,
    check_columns,
    config_from_dict,
)
from training.config import load_config, read_config_dict

ROOT = Path(__file__).resolve().parents[1]
DEEPFM = ROOT / "configs" / "deepfm.yaml"
CRITEO = ROOT / "configs" / "deepfm_criteo.yaml"

# Names come from the example config (the sample's spec, resolved) and the spec itself.
SPEC = load_spec()
BASE = read_config_dict(DEEPFM)
NAMES = [f["name"] for f in BASE["features"]]


def _index(test) -> int:
    return next(i for i, f in enumerate(BASE["features"]) if test(f))


I_ID = _index(lambda f: f["type"] == "id" and "vocab" in f)
I_ID2 = _index(lambda f: f["type"] == "id" and "vocab" in f and f["name"] != NAMES[I_ID])
I_MULTI = _index(lambda f: f["type"] == "multi_id")
I_BUCKETS = _index(lambda f: f["type"] == "raw" and "boundaries" in f)
I_DENSE = _index(lambda f: f["type"] == "raw" and "boundaries" not in f)
ID, ID2, MULTI, BUCKETS, DENSE = (NAMES[i] for i in (I_ID, I_ID2, I_MULTI, I_BUCKETS, I_DENSE))
LABEL = BASE["data"]["label"]
(MATCH,) = (m for m in SPEC.model_features() if m.type == "match")  # an id in a list
WIDE, FM, DEEP = (BASE["feature_groups"][g] for g in ("wide", "fm", "deep"))


@pytest.fixture(scope="module")
def base() -> dict:
    """The example config as plain data (each test edits a deep copy)."""
    return read_config_dict(DEEPFM)


def write(tmp_path: Path, data: dict, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def edited(base: dict, edit) -> dict:
    data = copy.deepcopy(base)
    edit(data)
    return data


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    return str(info.value)


# ------------------------------------------------------------------ shipped configs


def test_example_config_loads_with_its_values():
    cfg = load_config(DEEPFM)
    assert isinstance(cfg, Config)
    assert len(cfg.features) == 17
    assert (cfg.data.label, cfg.data.timestamp, cfg.data.group_key) == (
        SPEC.label.name,
        SPEC.timestamp,
        SPEC.group_key,
    )
    (float_column,) = (f for f in SPEC.features if f.dtype == "float64")
    bucketed, dense = (m.name for m in float_column.model_features)  # two features of one column
    assert (bucketed, dense) == (BUCKETS, DENSE)
    buckets = cfg.feature(bucketed)
    assert buckets.type == "raw" and buckets.source_column == float_column.name
    assert buckets.is_sparse
    assert buckets.boundaries == [5, 10, 20, 30, 50, 75, 100, 150, 250, 500, 1000]
    normalized = cfg.feature(dense)
    assert normalized.normalizer == "log1p_standard" and not normalized.is_sparse
    cates = cfg.feature(MULTI)
    assert (cates.type, cates.pooling, cates.max_length) == ("multi_id", "mean", 8)
    assert cfg.feature(SPEC.group_key).vocab.min_count == 2
    (context,) = SPEC.context_features()
    assert cfg.feature(context.name).vocab.min_count == 1
    match = cfg.feature(MATCH.name)  # the ad's category among the user's interests
    assert (match.type, match.source_column, match.key) == ("match", MULTI, MATCH.key)
    assert match.source_columns == (MULTI, MATCH.key) and match.is_sparse
    assert len(cfg.feature_groups.wide) == 15 and dense not in cfg.feature_groups.wide
    assert len(cfg.feature_groups.fm) == 16
    assert cfg.feature_groups.deep[-1] == dense and len(cfg.feature_groups.deep) == 17
    assert cfg.model.deep.hidden_units == [256, 128, 64]
    assert cfg.model.final is None
    assert cfg.model.wide_embedding_dim == 4
    assert cfg.model.losses[0].kind == "binary_cross_entropy"
    t = cfg.train
    assert (t.batch_size, t.num_epochs, t.seed) == (1024, 10, 42)  # early stopping picks
    assert (t.sparse_optimizer.type, t.sparse_optimizer.lr) == ("adam", 0.001)
    assert (t.dense_optimizer.type, t.dense_optimizer.lr) == ("adam", 0.001)
    # every column of the sample's flat table except the label and the time
    sample_columns = set(SPEC.columns()) - {SPEC.label.name, SPEC.timestamp}
    assert cfg.input_columns() == sorted(sample_columns)
    assert len(sample_columns) == 15


def test_criteo_config_mirrors_torcheasyrec():
    cfg = load_config(CRITEO)
    raw = [f for f in cfg.features if f.type == "raw"]
    ids = [f for f in cfg.features if f.type == "id"]
    assert [f.name for f in raw] == [f"int_{i}" for i in range(13)]
    assert [f.name for f in ids] == [f"cat_{i}" for i in range(26)]
    assert all(f.normalizer == "log1p_standard" and f.boundaries is None for f in raw)
    assert all(f.hash_bucket_size and f.vocab is None and f.embedding_dim == 16 for f in ids)
    assert cfg.feature("cat_0").hash_bucket_size == 40_000_000
    assert cfg.feature_groups.wide == cfg.feature_groups.fm == [f.name for f in ids]
    assert cfg.feature_groups.deep == [f.name for f in raw + ids]
    assert cfg.model.deep.hidden_units == [512, 256, 128]
    assert cfg.model.final.hidden_units == [64]
    assert cfg.data.label == "label" and cfg.data.timestamp is None
    assert "grouped_auc" not in cfg.model.metrics
    assert (cfg.train.batch_size, cfg.train.num_epochs) == (8192, 1)
    assert cfg.train.sparse_optimizer.lr == cfg.train.dense_optimizer.lr == 0.001
    assert cfg.train.mixed_precision is None


def round_trip(cfg: Config) -> Config:
    """What a model directory's config.yaml gives back (model/export.py writes to_dict)."""
    return config_from_dict(yaml.safe_load(yaml.safe_dump(cfg.to_dict(), sort_keys=False)))


def test_to_dict_round_trips_the_example_config():
    cfg = load_config(DEEPFM)
    assert round_trip(cfg) == cfg


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # the Criteo config sets data.timestamp and data.group_key to null
        {"model.deep.activation": None},
    ],
    ids=["criteo-data-nulls", "activation-null"],
)
def test_to_dict_round_trips_explicit_nulls(overrides):
    cfg = load_config(CRITEO, overrides=overrides)
    assert round_trip(cfg) == cfg


# --------------------------------------------------------------------- unknown keys


@pytest.mark.parametrize(
    ("edit", "key"),
    [
        (lambda d: d.update(tranin={"batch_size": 1}), "tranin"),
        (lambda d: d["features"][3].update(embeding_dim=8), "features[3].embeding_dim"),
        (lambda d: d["features"][0]["vocab"].update(min_cnt=1), "features[0].vocab.min_cnt"),
        (lambda d: d["model"]["deep"].update(hiden_units=[8]), "model.deep.hiden_units"),
        (
            lambda d: d["train"]["sparse_optimizer"].update(learning_rate=0.1),
            "train.sparse_optimizer.learning_rate",
        ),
        (lambda d: d["feature_groups"].update(dep=[ID]), "feature_groups.dep"),
        (lambda d: d["data"].update(labels=LABEL), "data.labels"),
        (
            lambda d: d["model"]["losses"][0]["binary_cross_entropy"].update(smoothing=0.1),
            "model.losses[0].binary_cross_entropy.smoothing",
        ),
    ],
)
def test_unknown_key_names_the_dotted_key(base, edit, key, tmp_path):
    message = error_of(edited(base, edit))
    assert message.startswith(f"{key}: unknown key")
    assert "allowed:" in message
    # through a file, the message also names the file
    path = write(tmp_path, edited(base, edit))
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {key}: unknown key")):
        load_config(path)


# ---------------------------------------------------------------------- wrong types


@pytest.mark.parametrize(
    ("edit", "key", "expected"),
    [
        (lambda d: d["train"].update(batch_size="big"), "train.batch_size", "an integer"),
        (lambda d: d["train"].update(batch_size=True), "train.batch_size", "an integer"),
        (lambda d: d["train"].update(batch_size=512.0), "train.batch_size", "an integer"),
        (lambda d: d["train"]["dense_optimizer"].update(lr="fast"), "train.dense_optimizer.lr", ""),
        (lambda d: d["model"]["deep"].update(hidden_units=64), "model.deep.hidden_units", "list"),
        (
            lambda d: d["model"]["deep"].update(hidden_units=[64, "x"]),
            "model.deep.hidden_units[1]",
            "an integer",
        ),
        (lambda d: d["model"]["deep"].update(use_bn="yes"), "model.deep.use_bn", "true or false"),
        (lambda d: d["features"][2].update(type="categorical"), "features[2].type", "one of"),
        (lambda d: d["features"][2].update(name=3), "features[2].name", "a string"),
        (lambda d: d["features"][14].update(boundaries="5,10"), "features[14].boundaries", "list"),
        (lambda d: d["train"].update(sparse_optimizer="adagrad"), "train.sparse_optimizer", "map"),
        (
            lambda d: d["train"]["sparse_optimizer"].update(type="adamax"),
            "train.sparse_optimizer.type",
            "one of",
        ),
        (lambda d: d["model"].update(metrics=["auc", "acc"]), "model.metrics[1]", "one of"),
        (lambda d: d.pop("model"), "model", "required"),
        (lambda d: d["features"][0].pop("type"), "features[0].type", "required"),
    ],
)
def test_wrong_type_names_the_dotted_key(base, edit, key, expected):
    message = error_of(edited(base, edit))
    assert message.startswith(f"{key}: ")
    assert expected in message


def test_an_int_is_accepted_where_a_float_is_expected(base):
    cfg = config_from_dict(edited(base, lambda d: d["train"]["sparse_optimizer"].update(lr=1)))
    assert cfg.train.sparse_optimizer.lr == 1.0
    assert isinstance(cfg.train.sparse_optimizer.lr, float)


# ----------------------------------------------------------------- impossible values


def _feature(d: dict, name: str) -> dict:
    return next(f for f in d["features"] if f["name"] == name)


@pytest.mark.parametrize(
    ("edit", "pattern"),
    [
        (lambda d: d["train"].update(batch_size=0), r"^train\.batch_size: must be > 0, got 0"),
        (lambda d: d["train"].update(num_epochs=-2), r"^train\.num_epochs: must be > 0"),
        (
            lambda d: d["train"]["dense_optimizer"].update(lr=-1),
            r"^train\.dense_optimizer\.lr: must be > 0, got -1",
        ),
        (lambda d: d["train"]["sparse_optimizer"].update(lr=0), r"^train\.sparse_optimizer\.lr"),
        (
            lambda d: d["train"].update(save_checkpoints_steps=-1),
            r"^train\.save_checkpoints_steps: must be >= 0",
        ),
        (
            lambda d: _feature(d, MATCH.name).pop("key"),
            rf"\({MATCH.name}\)\.key: a match feature needs key",
        ),
        (
            lambda d: _feature(d, MATCH.name).update(key=MULTI),
            rf"\({MATCH.name}\)\.key: '{MULTI}' is the list itself",
        ),
        (
            lambda d: _feature(d, MATCH.name).update(hash_bucket_size=10),
            rf"\({MATCH.name}\)\.hash_bucket_size: a match feature takes no encoding",
        ),
        (
            lambda d: _feature(d, ID).update(key=ID2),
            rf"^features\[{I_ID}\] \({ID}\)\.key: only match features take a key, not id",
        ),
        (
            lambda d: _feature(d, BUCKETS).update(boundaries=[5, 10, 10, 20]),
            rf"^features\[{I_BUCKETS}\] \({BUCKETS}\)\.boundaries: must be strictly increasing",
        ),
        (
            lambda d: _feature(d, BUCKETS).update(boundaries=[50, 10]),
            rf"^features\[{I_BUCKETS}\] \({BUCKETS}\)\.boundaries: must be strictly increasing",
        ),
        (
            lambda d: _feature(d, BUCKETS).update(boundaries=[]),
            rf"^features\[{I_BUCKETS}\] \({BUCKETS}\)\.boundaries: must not be empty",
        ),
        (
            lambda d: _feature(d, ID).update(hash_bucket_size=1000),
            rf"^features\[{I_ID}\] \({ID}\): an id feature needs exactly one of vocab, "
            r"hash_bucket_size, num_buckets \(got vocab, hash_bucket_size\)",
        ),
        (
            lambda d: _feature(d, ID).pop("vocab"),
            rf"^features\[{I_ID}\] \({ID}\): an id feature needs exactly one of .*\(got none\)",
        ),
        (
            lambda d: _feature(d, MULTI).update(num_buckets=10),
            rf"^features\[{I_MULTI}\] \({MULTI}\): an? multi_id feature needs exactly one",
        ),
        (
            lambda d: _feature(d, DENSE).update(hash_bucket_size=10),
            rf"^features\[{I_DENSE}\] \({DENSE}\)\.hash_bucket_size: raw features take",
        ),
        (
            lambda d: _feature(d, ID2).update(boundaries=[1.0]),
            rf"^features\[{I_ID2}\] \({ID2}\)\.boundaries: only raw features",
        ),
        (
            lambda d: _feature(d, ID2).update(embedding_dim=0),
            rf"^features\[{I_ID2}\] \({ID2}\)\.embedding_dim: must be > 0",
        ),
        (
            lambda d: _feature(d, ID)["vocab"].update(min_count=0),
            rf"^features\[{I_ID}\] \({ID}\)\.vocab\.min_count: must be > 0",
        ),
        (
            lambda d: d["features"].append(dict(d["features"][0])),
            rf"^features: duplicate feature name '{NAMES[0]}'",
        ),
        (
            lambda d: d["feature_groups"]["deep"].append("nope"),
            rf"^feature_groups\.deep\[{len(DEEP)}\]: unknown feature 'nope'",
        ),
        (
            lambda d: d["feature_groups"]["wide"].append(DENSE),
            rf"^feature_groups\.wide\[{len(WIDE)}\]: dense feature '{DENSE}' is not allowed",
        ),
        (
            lambda d: d["feature_groups"]["fm"].append(DENSE),
            rf"^feature_groups\.fm: dense feature '{DENSE}' cannot enter the FM",
        ),
        (
            lambda d: d["feature_groups"].pop("fm"),  # deep (with the dense one) becomes fm
            rf"^feature_groups\.deep \(used as the fm group\): dense feature '{DENSE}'",
        ),
        (
            lambda d: _feature(d, FM[-1]).update(embedding_dim=8),
            rf"^feature_groups\.fm: all FM features need the same embedding_dim \(.*{FM[-1]}=8",
        ),
        (lambda d: d["feature_groups"].update(wide=[]), r"^feature_groups\.wide: must list"),
        (
            lambda d: d["feature_groups"]["wide"].append(WIDE[0]),
            r"^feature_groups\.wide: a feature is listed twice",
        ),
        (
            lambda d: d["model"]["deep"].update(hidden_units=[64, -3]),
            r"^model\.deep\.hidden_units\[1\]: must be > 0, got -3",
        ),
        (lambda d: d["model"]["deep"].update(hidden_units=[]), r"^model\.deep\.hidden_units"),
        (
            lambda d: d["model"]["deep"].update(use_bn=True, use_ln=True),
            r"^model\.deep: use_bn and use_ln cannot both be true",
        ),
        (
            lambda d: d["model"]["deep"].update(dropout_ratio=[0.1, 0.2]),
            r"^model\.deep\.dropout_ratio: 2 values for 3 layers",
        ),
        (
            lambda d: d["model"]["deep"].update(dropout_ratio=1.0),
            r"^model\.deep\.dropout_ratio: must be < 1, got 1\.0",
        ),
        (
            lambda d: d["model"]["deep"].update(dropout_ratio=[0.1, -0.2, 0.3]),
            r"^model\.deep\.dropout_ratio\[1\]: must be >= 0, got -0\.2",
        ),
        (
            lambda d: d["model"]["deep"].update(activation="nn.NoSuchThing"),
            r"^model\.deep\.activation: ",
        ),
        (
            lambda d: d["model"].update(wide_init_fn="nn.init.bogus_"),
            r"^model\.wide_init_fn: unknown init function",
        ),
        (
            lambda d: d["model"]["losses"][0]["binary_cross_entropy"].update(label_smoothing=1.5),
            r"^model\.losses\[0\]\.binary_cross_entropy\.label_smoothing: must be < 1, got 1\.5",
        ),
        (
            lambda d: d["model"]["losses"].append({"l2_loss": {}}),
            r"^model\.losses: DeepFM trains one loss",
        ),
        (
            lambda d: d["model"]["losses"][0].update(l2_loss={}),
            r"^model\.losses\[0\]: exactly one loss type",
        ),
        (
            lambda d: d["model"].update(num_class=2),
            r"^model\.losses\[0\]: binary_cross_entropy needs num_class 1",
        ),
        (
            lambda d: d["data"].update(group_key=None),
            r"^model\.metrics: grouped_auc needs data\.group_key",
        ),
    ],
)
def test_impossible_value_names_the_key(base, edit, pattern):
    assert re.search(pattern, error_of(edited(base, edit))), error_of(edited(base, edit))


def test_a_valid_edit_of_each_kind_is_accepted(base):
    def edit(d: dict) -> None:
        _feature(d, ID).update(vocab=None, hash_bucket_size=1000)
        _feature(d, ID2).update(vocab=None, num_buckets=7)
        d["model"]["deep"].update(dropout_ratio=[0.1], use_bn=True)
        d["model"]["final"] = {"hidden_units": [16]}
        d["model"]["wide_init_fn"] = "nn.init.uniform_,a=-0.01,b=0.01"

    cfg = config_from_dict(edited(base, edit))
    assert cfg.feature(ID).hash_bucket_size == 1000
    assert cfg.feature(ID2).num_buckets == 7
    assert cfg.model.final.hidden_units == [16]
    assert cfg.model.deep.dropout_ratio == [0.1]


# ----------------------------------------------------------------- files, overrides


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(f"config file {path} does not exist")):
        load_config(path)


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("features: [\n  - {name: a, type: id\n")
    with pytest.raises(ConfigError, match=re.escape(f"config file {path} is not valid YAML")):
        load_config(path)


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string\n"])
def test_a_file_without_a_top_level_mapping_names_the_file(tmp_path, text):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_config(path)


def test_overrides_set_dotted_keys():
    cfg = load_config(
        DEEPFM,
        overrides={
            "train.batch_size": 64,
            "train.num_threads": 2,  # not in the file
            "train.sparse_optimizer.lr": 0.05,
            "model.deep.hidden_units": [32, 16],
            "model.final.hidden_units": [8],  # a new mapping
            "data.group_key": None,
            "model.metrics": ["auc"],
        },
    )
    assert cfg.train.batch_size == 64
    assert cfg.train.num_threads == 2
    assert cfg.train.sparse_optimizer.lr == 0.05
    assert cfg.train.dense_optimizer.lr == 0.001  # untouched sibling
    assert cfg.model.deep.hidden_units == [32, 16]
    assert cfg.model.final.hidden_units == [8]
    assert cfg.data.group_key is None
    # the file itself is not changed
    assert load_config(DEEPFM).train.batch_size == 1024


def test_overrides_are_validated_and_named():
    with pytest.raises(ConfigError, match=r"train\.batch_size: must be > 0"):
        load_config(DEEPFM, overrides={"train.batch_size": 0})
    with pytest.raises(ConfigError, match=r"train\.batch_sise: unknown key"):
        load_config(DEEPFM, overrides={"train.batch_sise": 64})
    with pytest.raises(ConfigError, match=r"train\.batch_size\.x: batch_size is not a mapping"):
        load_config(DEEPFM, overrides={"train.batch_size.x": 1})


# ---------------------------------------------------------------------- check_columns


def test_check_columns_names_the_missing_column():
    cfg = load_config(DEEPFM)
    columns = set(cfg.input_columns()) | {LABEL}
    check_columns(cfg, columns, "rows.parquet")  # all there: no error
    with pytest.raises(
        ConfigError, match=rf"^features\.{ID2}: column '{ID2}' is not in rows\.parquet"
    ):
        check_columns(cfg, columns - {ID2}, "rows.parquet")
    shared = cfg.feature(BUCKETS).source_column  # the column of two features
    assert shared != BUCKETS
    with pytest.raises(ConfigError, match=rf"column '{shared}' is not in the data"):
        check_columns(cfg, columns - {shared}, "the data")
    with pytest.raises(ConfigError, match=rf"^data\.label: column '{LABEL}' is not in x"):
        check_columns(cfg, columns - {LABEL}, "x")
    weighted = load_config(DEEPFM, overrides={"data.sample_weight": "w"})
    with pytest.raises(ConfigError, match=r"^data\.sample_weight: column 'w' is not in x"):
        check_columns(weighted, columns, "x")
    check_columns(weighted, columns | {"w"}, "x")
    # a match reads its key column too, which no other feature may read
    keyed = load_config(DEEPFM, overrides={})
    keyed.feature(MATCH.name).key = "ad_cate"
    assert "ad_cate" in keyed.input_columns()
    with pytest.raises(ConfigError, match=rf"^features\.{MATCH.name}: column 'ad_cate' is not"):
        check_columns(keyed, columns, "x")
    check_columns(keyed, columns | {"ad_cate"}, "x")
