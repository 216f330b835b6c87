"""Tests of the one feature spec (feature_repo/features.yaml, feature_repo/spec.py): what it
says, the model config it yields, its validation errors, and its fit to the sample data."""

import copy
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import yaml

from feature_repo import spec as spec_module
from feature_repo.sample_data import SCHEMAS, generate
from feature_repo.spec import GROUPS, REPO_DIR, SpecError, data_dir, load_spec
from model.config import ConfigError, FeatureConfig, config_from_dict
from training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
MODEL_CONFIG = ROOT / "configs" / "deepfm.yaml"
SPEC = load_spec()
RAW = yaml.safe_load((REPO_DIR / "features.yaml").read_text())
# Tests of what the sample's spec says are named test_the_sample_spec_*; the others take the
# names they need from the spec, by the role a column or object plays.
NAMES = [f["name"] for f in RAW["features"]]
I_KEY = 0  # the first entity's join key
(KEY_ENTITY,) = (n for n, e in SPEC.entities.items() if e.join_key == NAMES[I_KEY])
(I_CONTEXT,) = (i for i, n in enumerate(NAMES) if n in {f.name for f in SPEC.context_features()})
I_RANGED = next(
    i for i, f in enumerate(SPEC.features) if f.view and f.valid and f.valid.max is not None
)
I_SET = next(
    i for i, f in enumerate(SPEC.features) if f.view and f.dtype == "int64" and f.valid.values
)
(I_LIST,) = (i for i, f in enumerate(SPEC.features) if f.dtype.startswith("list"))
(I_TWO,) = (i for i, f in enumerate(SPEC.features) if len(f.model_features) == 2 and i != I_LIST)
RANGED, LIST_COL, TWO = NAMES[I_RANGED], NAMES[I_LIST], NAMES[I_TWO]
VIEW = SPEC.feature(RANGED).view
(OTHER_VIEW,) = (v for v in SPEC.feature_views if v != VIEW)
EVENTS = SPEC.entity_rows
EXAMPLE_SPECS = {"sample": "features.yaml", "retail": "retail_features.yaml"}


def test_default_spec_is_the_file_beside_spec_py():
    assert SPEC.path == REPO_DIR / "features.yaml"
    assert load_spec(REPO_DIR / "features.yaml") == SPEC


def test_the_sample_spec_columns_are_the_generators_flat_table():
    assert SPEC.columns() == SCHEMAS["flat"].names
    assert SPEC.timestamp == "event_timestamp"
    assert SPEC.label.name == "clk"


def test_sources_hold_the_columns_of_the_generators_files():
    for name, source in SPEC.sources.items():
        columns = [source.timestamp_field, *SPEC.source_columns(name)]
        assert sorted(columns) == sorted(SCHEMAS[name].names), name


def test_the_sample_spec_views_entities_and_ttls():
    assert [f.name for f in SPEC.view_features("user_profile")] == [
        "age_level",
        "gender",
        "shopping_level",
        "occupation",
        "city_level",
        "cms_segid",
        "interest_cates",
    ]
    assert [f.name for f in SPEC.view_features("ad_feature")] == [
        "cate_id",
        "campaign_id",
        "customer_id",
        "brand",
        "price",
    ]
    assert {name: e.join_key for name, e in SPEC.entities.items()} == {
        "user": "user_id",
        "adgroup": "adgroup_id",
    }
    entity = {f.name: f.entity for f in SPEC.features}
    assert entity["user_id"] == entity["age_level"] == "user"
    assert entity["adgroup_id"] == entity["price"] == "adgroup"
    assert entity["pid"] is None
    assert SPEC.feature_views["user_profile"].ttl == timedelta(days=90)
    assert SPEC.feature_views["ad_feature"].ttl == timedelta(days=180)
    assert SPEC.feature("interest_cates").dtype == "list<int64>"
    assert SPEC.feature("gender").valid.values == (1, 2)
    assert SPEC.feature("price").valid == spec_module.Valid(min=0)
    with pytest.raises(SpecError, match="unknown feature view 'users'"):
        SPEC.view_features("users")


def test_the_sample_spec_key_types_context_features_and_group_key():
    assert {name: e.dtype for name, e in SPEC.entities.items()} == {
        "user": "int64",
        "adgroup": "int64",
    }
    assert SPEC.join_keys() == {"user_id": "int64", "adgroup_id": "int64"}
    assert [f.name for f in SPEC.context_features()] == ["pid"]
    assert SPEC.group_key == "user_id"
    assert all(v.online for v in SPEC.feature_views.values())


def test_new_dtypes_string_keys_and_offline_views(tmp_path):
    raw = copy.deepcopy(RAW)
    del raw["group_key"]
    raw["features"][I_KEY]["dtype"] = "string"
    raw["features"][I_KEY]["valid"] = {"values": ["u1", "u2"]}
    raw["features"][I_RANGED].update(dtype="bool", valid={"values": [True, False]}, nullable=True)
    raw["features"][I_LIST]["dtype"] = "list<string>"
    del raw["features"][I_LIST]["valid"]
    # an int64 key is not looked up in a list of strings (test_a_match_key_...)
    raw["features"][I_LIST]["model_features"] = [
        m for m in raw["features"][I_LIST]["model_features"] if m["type"] != "match"
    ]
    raw["feature_views"][OTHER_VIEW]["online"] = False
    path = tmp_path / "features.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = load_spec(path)
    assert spec.entities[KEY_ENTITY].dtype == "string"
    assert spec.join_keys() == {
        k: "string" if k == NAMES[I_KEY] else "int64" for k in SPEC.join_keys()
    }
    assert len(spec.join_keys()) == 2
    assert spec.feature(RANGED).dtype == "bool"
    assert spec.feature(LIST_COL).dtype == "list<string>"
    assert spec.group_key is None
    assert not spec.feature_views[OTHER_VIEW].online
    assert spec.feature_views[VIEW].online


def test_configs_deepfm_yaml_derives_its_features_from_the_spec():
    raw = yaml.safe_load(MODEL_CONFIG.read_text())
    assert "features" not in raw and "feature_groups" not in raw  # no second list
    cfg = load_config(MODEL_CONFIG)
    section = SPEC.model_section()
    assert [f.name for f in cfg.features] == [f["name"] for f in section["features"]]
    assert cfg.feature_groups.wide == section["feature_groups"]["wide"]
    assert cfg.feature_groups.fm == section["feature_groups"]["fm"]
    assert cfg.feature_groups.deep == section["feature_groups"]["deep"]
    bucketed, dense = SPEC.feature(TWO).model_features  # one column, two model features
    assert cfg.feature(bucketed.name).boundaries == bucketed.encoding["boundaries"]
    assert cfg.feature(bucketed.name).source_column == cfg.feature(dense.name).source_column
    assert cfg.feature(dense.name).source_column == TWO != dense.name
    assert (cfg.data.label, cfg.data.timestamp) == (section["label"], section["timestamp"])


def test_the_spec_group_key_is_the_configs_unless_it_sets_one(tmp_path):
    assert load_config(MODEL_CONFIG).data.group_key == SPEC.group_key  # from the spec
    other = next(k for k in SPEC.join_keys() if k != SPEC.group_key)
    path = tmp_path / "deepfm.yaml"
    raw = yaml.safe_load(MODEL_CONFIG.read_text())
    raw["feature_spec"] = str(REPO_DIR / "features.yaml")
    raw["data"] = {"group_key": other}
    path.write_text(yaml.safe_dump(raw))
    assert load_config(path).data.group_key == other


def test_a_config_cannot_both_derive_and_list_features(tmp_path):
    raw = yaml.safe_load(MODEL_CONFIG.read_text())
    raw["feature_spec"] = str(spec_module.REPO_DIR / "features.yaml")
    raw["features"] = SPEC.model_section()["features"]
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match="features: comes from feature_spec"):
        load_config(path)


@pytest.fixture(params=EXAMPLE_SPECS)
def example_spec(request) -> spec_module.FeatureSpec:
    """The spec of each example dataset."""
    return load_spec(REPO_DIR / EXAMPLE_SPECS[request.param])


def test_model_section_is_a_valid_model_config(example_spec):
    config = yaml.safe_load(MODEL_CONFIG.read_text())
    config.pop("feature_spec")
    section = example_spec.model_section()
    config.update(features=section["features"], feature_groups=section["feature_groups"])
    # what training/config.py fills in
    config["data"] = {"group_key": example_spec.group_key, "label": section["label"]}
    cfg = config_from_dict(config)
    assert [f.name for f in cfg.features] == [m.name for m in example_spec.model_features()]
    assert cfg.data.label == example_spec.label.name


def test_encoding_keys_are_feature_config_fields():
    fields = set(FeatureConfig.model_fields)
    assert set(spec_module.ENCODING_KEYS) <= fields
    assert fields - set(spec_module.ENCODING_KEYS) == {"name", "column"}


def _hand_written(spec):
    """A model config that lists its features by hand, as the spec would derive them."""
    return copy.deepcopy(spec.model_section())


def test_check_model_config_accepts_the_derived_section(example_spec):
    config = _hand_written(example_spec)
    example_spec.check_model_config(config["features"], config["feature_groups"], "my.yaml")


# Each drift of a hand-written model config from a spec, and the message naming it.


def _add_feature(spec, config):
    config["features"].append({"name": "hour", "type": "id", "num_buckets": 24})
    return f"feature 'hour' is not in {spec.path.name}"


def _drop_dense(spec, config):
    dense = next(m.name for m in spec.model_features() if m.normalizer)
    config["features"] = [f for f in config["features"] if f["name"] != dense]
    config["feature_groups"]["deep"].remove(dense)
    return f"feature '{dense}' of {spec.path.name} is missing"


def _narrow_the_first(spec, config):
    first = config["features"][0]
    was, first["embedding_dim"] = first.get("embedding_dim"), 8
    assert was != 8
    return f"feature '{first['name']}'.embedding_dim is 8, {spec.path.name} says {was}"


def _drop_from_fm(spec, config):
    listed = next(f.name for f in spec.features if f.dtype.startswith("list"))
    config["feature_groups"]["fm"].remove(listed)
    return f"feature '{listed}' is missing from feature_groups.fm"


def _reorder_wide(spec, config):
    wide = config["feature_groups"]["wide"]
    wide[0], wide[1] = wide[1], wide[0]
    return "feature_groups.wide is ordered"


@pytest.mark.parametrize(
    "change", [_add_feature, _drop_dense, _narrow_the_first, _drop_from_fm, _reorder_wide]
)
def test_check_model_config_names_the_drifted_feature(example_spec, change):
    config = _hand_written(example_spec)
    message = change(example_spec, config)
    with pytest.raises(SpecError, match=f"^my.yaml: {message}"):
        example_spec.check_model_config(config["features"], config["feature_groups"], "my.yaml")


def test_spec_module_does_not_import_feast():
    code = (
        "import sys, feature_repo.spec as s; s.load_spec().model_section(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('feast', 'pandas')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == "[]"


def test_data_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("DEEPFM_DATA_DIR", raising=False)
    assert data_dir() == REPO_DIR / "data"
    assert data_dir(tmp_path) == tmp_path.resolve() / "data"
    source = SPEC.feature_views[VIEW].source
    assert SPEC.source_path(source, tmp_path) == tmp_path / "data" / SPEC.sources[source].path
    monkeypatch.setenv("DEEPFM_DATA_DIR", str(tmp_path / "elsewhere"))
    assert data_dir() == tmp_path / "elsewhere"
    monkeypatch.setenv("DEEPFM_DATA_DIR", "../sources")  # relative to the repo, not the cwd
    assert data_dir(tmp_path / "repo") == tmp_path / "sources"


# ----------------------------------------------------------------------- validation


def _set(path: str, value):
    """A change to the raw spec: set the value at a dotted path (``features.3.dtype``)."""

    def change(raw):
        *parents, leaf = path.split(".")
        node = raw
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(leaf)] = value
        else:
            node[leaf] = value

    return change


def _delete(path: str):
    def change(raw):
        *parents, leaf = path.split(".")
        node = raw
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[leaf]

    return change


def _duplicate_feature(raw):
    raw["features"].append(copy.deepcopy(raw["features"][I_RANGED]))


def _view_and_source(raw):
    raw["features"][I_RANGED]["source"] = EVENTS


def _feature_from_a_view_source(raw):
    del raw["features"][I_RANGED]["view"]
    raw["features"][I_RANGED]["source"] = SPEC.feature_views[VIEW].source


def _bool_join_key(raw):
    raw["features"][I_KEY].update(dtype="bool", valid={"values": [True, False]})


def _unused_source(raw):
    raw["sources"]["clicks"] = {"path": "clicks.parquet", "timestamp_field": "ts"}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (_set("owner", "ads-team"), "owner: unknown key"),
        (_delete("label"), "label: required key is missing"),
        (
            _set(f"features.{I_RANGED}.kind", "x"),
            rf"features\[{I_RANGED}\] \({RANGED}\).kind: unknown key",
        ),
        (
            _set(f"features.{I_RANGED}.view", "no_such_view"),
            rf"features\[{I_RANGED}\] \({RANGED}\).view: unknown feature view 'no_such_view' "
            rf"\(known: {', '.join(SPEC.feature_views)}\)",
        ),
        (
            _set(f"feature_views.{VIEW}.entity", "shopper"),
            f"feature_views.{VIEW}.entity: unknown entity 'shopper'",
        ),
        (
            _set(f"feature_views.{VIEW}.source", "users"),
            f"feature_views.{VIEW}.source: unknown source 'users'",
        ),
        (
            _set(f"feature_views.{OTHER_VIEW}.ttl_days", 0),
            f"feature_views.{OTHER_VIEW}.ttl_days: must be > 0, got 0",
        ),
        (
            _set(f"features.{I_RANGED}.dtype", "int"),
            rf"features\[{I_RANGED}\] \({RANGED}\).dtype: expected one of 'int64', .* got 'int'",
        ),
        (_duplicate_feature, rf"features\[{len(NAMES)}\]: duplicate column name '{RANGED}'"),
        (
            _set(
                f"features.{I_TWO}.model_features.1.name",
                SPEC.feature(TWO).model_features[0].name,
            ),
            r"model_features\[1\].name: duplicate model feature name "
            f"'{SPEC.feature(TWO).model_features[0].name}'",
        ),
        (_view_and_source, rf"\({RANGED}\): give exactly one of source"),
        (_feature_from_a_view_source, rf"\({RANGED}\).source: must be the entity rows"),
        (
            _set(f"features.{I_RANGED}.model_features.0.groups", ["wide", "dense"]),
            r"model_features\[0\].groups\[1\]: expected one of 'wide', 'fm' or 'deep', got 'dense'",
        ),
        (
            _set(f"features.{I_RANGED}.model_features.0.vocabulary", {"min_count": 1}),
            r"model_features\[0\].vocabulary: unknown key",
        ),
        (
            _set(f"features.{I_LIST}.model_features.0.type", "id"),
            rf"\({LIST_COL}\).model_features\[0\].type: type id needs dtype int64, "
            r"string or bool, the column is list<int64>",
        ),
        (
            _set(f"features.{I_LIST}.model_features.1.key", "cate"),
            rf"\({LIST_COL}\).model_features\[1\].key: 'cate' is not a feature of this spec",
        ),
        (
            _set(f"features.{I_LIST}.model_features.1.key", NAMES[I_CONTEXT]),
            rf"model_features\[1\].key: '{NAMES[I_CONTEXT]}' has dtype string; looking it up in "
            rf"'{LIST_COL}' \(list<int64>\) needs int64 or list<int64>",
        ),
        (
            _set(f"features.{I_RANGED}.model_features.0.type", "match"),
            rf"\({RANGED}\).model_features\[0\].type: type match needs dtype list<int64> or "
            "list<string>",
        ),
        (_set(f"features.{I_RANGED}.valid", {"min": 6, "max": 0}), "min 6 is greater than max 0"),
        (
            _set(f"features.{I_CONTEXT}.valid", {"values": [430548_1007]}),
            rf"\({NAMES[I_CONTEXT]}\).valid.values\[0\]: 4305481007 is not a string value",
        ),
        (
            _set(f"features.{I_SET}.valid", {"values": [1, 2], "min": 1}),
            rf"\({NAMES[I_SET]}\).valid: give min and/or max, or values",
        ),
        (
            _set(f"entities.{KEY_ENTITY}.join_key", "uid"),
            f"entities.{KEY_ENTITY}.join_key: 'uid' must be a feature with source '{EVENTS}'",
        ),
        (_unused_source, r"sources.clicks: read by 0 feature views"),
        (_set("entity_rows", "clicks"), "entity_rows: unknown source 'clicks'"),
        (
            _set("group_key", RANGED),
            f"group_key: '{RANGED}' is not a column of the entity rows '{EVENTS}'",
        ),
        (
            _bool_join_key,
            f"entities.{KEY_ENTITY}.join_key: '{NAMES[I_KEY]}' has dtype bool; a join key is "
            "int64 or string",
        ),
        (
            _set(f"features.{I_RANGED}.dtype", "bool"),
            rf"\({RANGED}\).valid: a bool column takes values, not min/max",
        ),
        (
            _set(f"feature_views.{VIEW}.online", "yes"),
            f"feature_views.{VIEW}.online: expected true or false, got 'yes'",
        ),
    ],
)
def test_a_wrong_spec_fails_naming_the_key(tmp_path, change, message):
    raw = copy.deepcopy(RAW)
    change(raw)
    path = tmp_path / "features.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    with pytest.raises(SpecError, match=f"^features.yaml: .*{message}"):
        load_spec(path)


def test_a_missing_or_broken_file_fails(tmp_path):
    with pytest.raises(SpecError, match="does not exist"):
        load_spec(tmp_path / "features.yaml")
    (tmp_path / "features.yaml").write_text("features: [unclosed\n")
    with pytest.raises(SpecError, match="is not valid YAML"):
        load_spec(tmp_path / "features.yaml")
    (tmp_path / "features.yaml").write_text("- a list\n")
    with pytest.raises(SpecError, match="the top level: expected a mapping"):
        load_spec(tmp_path / "features.yaml")


# ---------------------------------------------------------------------- sample data


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> dict[str, pd.DataFrame]:
    paths = generate(20_000, seed=1, out_dir=tmp_path_factory.mktemp("sample"))
    return {name: pd.read_parquet(path) for name, path in paths.items()}


def test_sample_data_is_valid_under_the_spec(sample):
    for feature in [*SPEC.features, SPEC.label]:
        column = sample[feature.source][feature.name]
        assert feature.nullable or column.notna().all(), feature.name
        if feature.dtype.startswith("list<"):
            column = column.explode().astype("int64")
        valid = feature.valid
        if valid is None:
            continue
        if valid.values is not None:
            assert set(column) <= set(valid.values), feature.name
        if valid.min is not None:
            assert column.min() >= valid.min, feature.name
        if valid.max is not None:
            assert column.max() <= valid.max, feature.name


def test_view_ttls_cover_the_sample_data(sample):
    """Every event's valid version is younger than the view's TTL, so the TTLs turn no
    sample feature into a null."""
    ts = SPEC.timestamp
    events = sample[EVENTS].sort_values(ts)
    for name, view in SPEC.feature_views.items():
        key = SPEC.entities[view.entity].join_key
        version_ts = SPEC.sources[view.source].timestamp_field
        versions = sample[view.source][[key, version_ts]].sort_values(version_ts)
        versions = versions.rename(columns={version_ts: "version_time"})
        joined = pd.merge_asof(events, versions, left_on=ts, right_on="version_time", by=key)
        age = (joined[ts] - joined["version_time"]).max()
        assert age < view.ttl, (name, age)


def test_groups_are_the_deepfm_groups():
    assert GROUPS == ("wide", "fm", "deep")
    assert set(SPEC.model_section()["feature_groups"]) == set(GROUPS)
